"""Do CUDA graphs pay? A window sampled with the render's compiled blocks, its steps launched kernel by
kernel, against the same window with its steps replayed as one CUDA graph (`sampling/graphs.py`).

Builds the transformer as the render does (`accel.accelerate`), then samples whole windows (8 steps, NAG
on) both ways: seconds per step, the host seconds to queue a window (while the GPU works, the host is free
only once everything is queued), the peak GPU memory, and how far the latents differ. Then a window of the
other layout and the first one again.

    python bench/cudagraphs.py --out $OUT --fp8
    python bench/cudagraphs.py --out /tmp/c --tiny --width 64 --height 64 --frames 97   # CPU smoke test
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from pathlib import Path

import torch

from audioloop.models.accel import AccelSettings, accelerate
from audioloop.sampling.sampler import DISTILLED_SIGMAS
from audioloop.sampling.window import SamplerSettings, sample_window
from step_variants import build, timed, window
from timing import Run, summary, sync, wall

GiB = 2**30
STEPS = len(DISTILLED_SIGMAS) - 1


def sampler(model: torch.nn.Module, x: dict, graphs: bool) -> Callable[[], torch.Tensor]:
    """One whole window through audioloop's sampler (NAG on), its steps replayed as a graph or not."""
    settings = SamplerSettings(cuda_graphs=graphs)
    inputs = tuple(x[k] for k in ("audio", "text_video", "text_audio", "negative_video", "negative_audio"))
    return lambda: sample_window(model, x["layout"], *inputs, seed=0, settings=settings)


def queue_time(fn: Callable[[], object], device: torch.device) -> dict:
    """Host seconds until `fn` returns (work queued) and until the device has finished it."""
    sync(device)
    began = time.perf_counter()
    fn()
    queued = time.perf_counter() - began
    sync(device)
    return {"queued_s": queued, "done_s": time.perf_counter() - began}


def variant(run: Run, model: torch.nn.Module, windows: dict, graphs: bool) -> dict:
    """First window (compile, record), timed windows, queueing time, peak, latents; then the other layout
    and the first again."""
    dev, out = run.device, {}
    first = sampler(model, windows["next"], graphs)
    out["first_window_s"] = wall(first, dev)
    out["step"] = summary(timed(first, run.args.repeats, dev), STEPS)
    out["queue"] = queue_time(first, dev)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    out["latents"] = first()
    if dev.type == "cuda":
        out["peak_gib"] = torch.cuda.max_memory_allocated() / GiB
    other = sampler(model, windows["first"], graphs)
    out["other_layout_first_s"] = wall(other, dev)
    out["other_layout_window_s"] = wall(other, dev)
    out["back_first_s"] = wall(first, dev)
    out["back_window_s"] = wall(first, dev)
    if dev.type == "cuda":
        out["peak_after_both_gib"] = torch.cuda.max_memory_allocated() / GiB
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--fp8", action="store_true", help="the render's --fp8 (recipe 'all')")
    parser.add_argument("--width", type=int, default=832)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--frames", type=int, default=497)
    parser.add_argument("--fps", type=float, default=25.0)
    parser.add_argument("--text-tokens", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--deadline", type=float, default=500.0)
    parser.add_argument("--tiny", action="store_true", help="tiny model on the CPU (tests this script)")
    args = parser.parse_args()
    os.environ.setdefault("AUDIOLOOP_CACHE_DIR", "/tmp/audioloop-cudagraphs-cache")
    run = Run(args, "cudagraphs")
    dev, res = run.device, run.results
    model = build(args, dev)
    accelerate(model, AccelSettings(fp8="all" if args.fp8 else None, compile=not args.tiny), dev)
    windows = {kind: window(model, kind, args, dev) for kind in ("next", "first")}
    latents = {}
    for name, graphs in (("compiled", False), ("compiled + CUDA graphs", True)):
        record = run.attempt(name, lambda g=graphs: variant(run, model, windows, g))
        if record:
            latents[name] = record.pop("latents")
            res[name] = record
            print(name, record, flush=True)
    if len(latents) == 2:
        a, b = latents.values()
        res["latents_max_abs_diff"] = float((a.float() - b.float()).abs().max())
        res["latents_rel_diff"] = float((a.float() - b.float()).norm() / a.float().norm())
    run.save()


if __name__ == "__main__":
    main()
