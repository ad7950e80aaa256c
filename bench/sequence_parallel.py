"""Sequence-parallel window step (issue 6): seconds per sampler step of one window split over W GPUs.

Every rank builds the full-size LTX-2.3 transformer (random bf16 weights, same seed) and the same window-i
inputs (7 frozen context latents + the image guide, frozen song audio, 1,024 text tokens, NAG on) and samples
the 8 distilled steps inside one `sequence_parallel` scope, as `render --sequence-parallel` does; rank 0
writes `sp_<W>gpu_<W>x<H>x<F>.json`. One process (plain `python`) is the 1-GPU baseline, without the split.

    python bench/sequence_parallel.py --out $OUT [--width 1280 --height 704]
    torchrun --nproc-per-node 2 bench/sequence_parallel.py --out $OUT [--width 1280 --height 704]
    python bench/sequence_parallel.py --table $OUT      # step times and efficiency t(1) / (W·t(W))

`--tiny` runs the tiny model on the CPU (gloo) instead: a smoke check of this script, not a measurement.
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.distributed as dist

import fullsize
from audioloop.models.tiny import tiny_transformer
from audioloop.parallel import init_distributed, is_rank0, torchrun_world
from audioloop.plan import audio_tokens
from audioloop.sampling.layout import next_window
from audioloop.sampling.sampler import DISTILLED_SIGMAS
from audioloop.sampling.sequence_parallel import sequence_parallel
from audioloop.sampling.window import SamplerSettings, sample_window

GiB = 2**30
CONTEXT_LATENTS = 7
FPS = 25.0


def window_inputs(model: torch.nn.Module, args: argparse.Namespace, device: torch.device) -> dict:
    """Seeded random window-i inputs of the model's widths: identical on every rank."""
    config, gen = model.config, torch.Generator(device=device).manual_seed(0)
    h, w, lat = args.height // 32, args.width // 32, (args.frames - 1) // 8 + 1

    def randn(*shape: int, dtype: torch.dtype = model.scale_shift_table.dtype) -> torch.Tensor:
        return torch.randn(*shape, generator=gen, device=device, dtype=dtype)

    context = randn(1, config.in_channels, CONTEXT_LATENTS, h, w, dtype=torch.float32)
    layout = next_window(context, randn(1, config.in_channels, 1, h, w, dtype=torch.float32), lat, FPS)
    video, audio = config.cross_attention_dim, config.audio_cross_attention_dim
    return {
        "layout": layout,
        "audio": randn(1, audio_tokens(args.frames, FPS), config.audio_in_channels),
        "texts": [randn(1, args.text_tokens, dim) for dim in (video, audio, video, audio)],  # +, then -
    }


def sync(device: torch.device) -> None:
    """Wait for the device, then for every rank."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    if dist.is_initialized():
        dist.barrier()


def step_times(model: torch.nn.Module, x: dict, repeats: int, device: torch.device) -> list[float]:
    """Seconds per step of whole windows (8 distilled steps, NAG on), after one warm-up window."""
    settings = SamplerSettings()

    def window() -> None:
        sample_window(model, x["layout"], x["audio"], *x["texts"], seed=0, settings=settings)

    window()
    times = []
    for _ in range(repeats):
        sync(device)
        began = time.perf_counter()
        window()
        sync(device)
        times.append((time.perf_counter() - began) / (len(DISTILLED_SIGMAS) - 1))
    return times


def measure(args: argparse.Namespace) -> None:
    """Time this job's window step; rank 0 writes the result."""
    world = torchrun_world()
    device = torch.device("cpu")
    if world > 1:
        device = init_distributed("gloo" if args.tiny else None)
    elif not args.tiny:
        device = torch.device("cuda")
    model = tiny_transformer() if args.tiny else fullsize.transformer(device=str(device))
    x = window_inputs(model, args, device)
    with torch.inference_mode(), sequence_parallel(model) if world > 1 else nullcontext():
        times = step_times(model, x, args.repeats, device)
    if is_rank0():
        result = {
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "torch": torch.__version__,
            "world": world,
            "shape": f"{args.width}x{args.height}x{args.frames}",
            "video_tokens": x["layout"].clean.shape[1],
            "step_s": {"median": statistics.median(times), "min": min(times), "max": max(times)},
            "peak_gib": torch.cuda.max_memory_allocated(device) / GiB if device.type == "cuda" else None,
        }
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"sp_{world}gpu_{result['shape']}.json").write_text(json.dumps(result, indent=2))
        print(json.dumps(result, indent=2))
    if dist.is_initialized():
        dist.destroy_process_group()


def table(folder: Path) -> None:
    """Markdown rows of every result in `folder`: step time and efficiency against the 1-GPU run."""
    results = [json.loads(p.read_text()) for p in sorted(folder.glob("sp_*gpu_*.json"))]
    base = {r["shape"]: r["step_s"]["median"] for r in results if r["world"] == 1}
    print("| shape | GPUs | s / step | speed-up | efficiency | peak GiB |\n|---|---|---|---|---|---|")
    for r in sorted(results, key=lambda r: (r["shape"], r["world"])):
        step, one = r["step_s"]["median"], base.get(r["shape"])
        speedup = f"{one / step:.2f}×" if one else "—"
        efficiency = f"{100 * one / (r['world'] * step):.0f}%" if one else "—"
        peak = f"{r['peak_gib']:.1f}" if r["peak_gib"] is not None else "—"
        print(f"| {r['shape']} | {r['world']} | {step:.3f} | {speedup} | {efficiency} | {peak} |")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path)
    parser.add_argument("--table", type=Path, help="print the results in this folder as a table")
    parser.add_argument("--width", type=int, default=832)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--frames", type=int, default=497)
    parser.add_argument("--text-tokens", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tiny", action="store_true", help="tiny model on the CPU: a smoke check")
    args = parser.parse_args()
    if args.table is not None:
        table(args.table)
        return
    torch.backends.cuda.matmul.allow_tf32 = True
    measure(args)


if __name__ == "__main__":
    main()
