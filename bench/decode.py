"""Making the per-window VAE decode cheaper: decoder variants, overlap with sampling, and x264.

Full-size LTX-2.3 with random bf16 weights (`--tiny`: the tiny model on the CPU, to test this script). Parts,
in the order given by `--parts`; everything lands in `$OUT/decode.json` after each measurement, and later
measurements are skipped once `--deadline` seconds are near, so a run cut short still reports what it did.

- variants: `decode_video` on one render decode span (default 72 latents = 56 new + 2×8 margin, 832×480 →
  z [1, 128, 72, 15, 26], 569 frames), spatially tiled as the render does: as is (eager), with the VAE in
  `channels_last_3d` (weights; weights and z), and with `vae.decoder` under `torch.compile(fullgraph=False,
  dynamic=False)`. Each: first-call seconds (for the compiled one: its compile, one graph per tile width,
  16 and 12 latents at 832 px), median/min/max of 3 after it (host wall, CUDA-synchronised), peak GPU
  memory, and the frames' max and mean abs difference in uint8 levels against the eager ones. The VAE is
  restored after each variant; compiles start from an empty cache.
- overlap: the transformer compiled as the render does (`accel.accelerate`), one whole window ≥ 1 at
  832×480×497 through `sample_window` (8 steps, NAG on) on the main thread while another thread decodes one
  span on a side CUDA stream (which waits on an event recorded on the main stream). Per repeat, interleaved:
  T_s (sampling alone), T_d (the side-stream decode alone), T_both (both at once, with the sampling's own
  wall inside it); hidden = (T_s + T_d − T_both) / T_d is the fraction of the decode that the overlap hides.
- x264: frames per second of audioloop's VideoWriter (CRF 18) on 250 decoded random-model frames (x264's
  worst case) and on 250 smooth moving frames (closer to footage), presets medium, fast and veryfast.

`--tiny` runs every part at 576×64 on the CPU: compiles with Dynamo's "eager" backend, the overlap's decode on
a plain thread (no streams); its timings mean nothing, it only checks the script.

    python bench/decode.py --out $OUT
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKLLTX2Video
from torch import Tensor, nn

import fullsize
from audioloop.media.writer import VideoWriter
from audioloop.models import accel
from audioloop.models.latents import decode_video
from audioloop.models.tiny import tiny_transformer, tiny_video_vae
from step_variants import sampler, window
from timing import Run, summary, sync, wall

GiB = 2**30
# --tiny: a geometry the tiny model runs through on two CPU cores; wider than one 512 px tile, so the
# decode still goes through diffusers' spatial tiles (two tile widths, as at 832 px).
TINY = {"width": 576, "height": 64, "frames": 65, "latents": 5, "text_tokens": 16}


@dataclass(frozen=True)
class Variant:
    """One way of running the same decode: VAE weights and/or z in channels_last_3d, decoder compiled; about
    the seconds it takes on the device (skipped when fewer are left)."""

    name: str
    channels_last: bool = False
    z_channels_last: bool = False
    compiled: bool = False
    need_s: float = 30.0


VARIANTS = (
    Variant("eager"),
    Variant("channels_last", channels_last=True),
    Variant("channels_last+z", channels_last=True, z_channels_last=True),
    Variant("compiled", compiled=True, need_s=240.0),
)
OVERLAP_NEED_S = 200.0  # build, compile and warm the transformer, one repeat
X264_NEED_S = 60.0


class Bench(Run):
    """Shared state of one run: settings, the VAE and its input, the results written after each step."""

    def __init__(self, args: argparse.Namespace) -> None:
        """Start the clock and the results record; build the VAE and the decode span's latents."""
        super().__init__(args, "decode")
        self.vae = build_vae(self.device, args.tiny)
        self.z = span_latents(self.vae, args, self.device)
        self.frames: Tensor | None = None  # the eager decode of z, once done
        self.results.update(z_shape=list(self.z.shape), frames=list(decoded_shape(self.z)), variants={})


def timed(fn: Callable[[], Tensor], device: torch.device, repeats: int) -> tuple[dict, Tensor]:
    """First-call seconds, then median/min/max of `repeats` CUDA-synchronised walls and their peak GPU memory
    (GiB); and the last call's result."""
    first = wall(fn, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times, out = [], None
    for _ in range(repeats):
        sync(device)
        begin = time.perf_counter()
        out = fn()
        sync(device)
        times.append(time.perf_counter() - begin)
    record = {"first_call_s": first, **summary(times)}
    if device.type == "cuda":
        record["peak_gib"] = torch.cuda.max_memory_allocated(device) / GiB
    return record, out


def release(device: torch.device) -> None:
    """Free what dropped models held (compiled wrappers form reference cycles): collect, return memory."""
    torch._dynamo.reset()
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def build_vae(device: torch.device, tiny: bool) -> AutoencoderKLLTX2Video:
    """The 2.3 video VAE with seeded random bf16 weights: full size on the GPU, tiny on the CPU."""
    if tiny:
        return tiny_video_vae().to(device=device, dtype=torch.bfloat16).requires_grad_(False)
    return fullsize.build(AutoencoderKLLTX2Video, fullsize.VIDEO_VAE_2_3, str(device), torch.bfloat16, 1)


def decoded_shape(z: Tensor) -> tuple[int, int, int]:
    """Frames, height and width that latents z [1, C, F, h, w] decode to."""
    _, _, latents, h, w = z.shape
    return 8 * (latents - 1) + 1, 32 * h, 32 * w


def span_latents(vae: AutoencoderKLLTX2Video, args: argparse.Namespace, device: torch.device) -> Tensor:
    """Seeded normalised latents of one decode span, [1, C, latents, H/32, W/32] in float32."""
    gen = torch.Generator(device=device).manual_seed(0)
    shape = (1, vae.config.latent_channels, args.latents, args.height // 32, args.width // 32)
    return torch.randn(shape, generator=gen, device=device)


@contextmanager
def applied(vae: AutoencoderKLLTX2Video, variant: Variant, backend: str) -> Iterator[None]:
    """The VAE set up as `variant` inside the block, as it was (contiguous weights, eager decoder) after."""
    decoder = vae.decoder
    if variant.channels_last:
        vae.to(memory_format=torch.channels_last_3d)
    if variant.compiled:
        vae.decoder = torch.compile(decoder, fullgraph=False, dynamic=False, backend=backend)
    try:
        yield
    finally:
        vae.decoder = decoder
        vae.to(memory_format=torch.contiguous_format)


def frame_difference(frames: Tensor, reference: Tensor) -> dict[str, float]:
    """Max and mean abs difference of two uint8 frame stacks, in uint8 levels."""
    diff = (frames.to(torch.int16) - reference.to(torch.int16)).abs_()
    return {"max_abs": int(diff.max()), "mean_abs": float(diff.sum(dtype=torch.float64)) / diff.numel()}


def measure_variant(bench: Bench, variant: Variant) -> None:
    """Time one decoder variant on the span; compare its frames with the eager decode's."""
    z = bench.z.to(memory_format=torch.channels_last_3d) if variant.z_channels_last else bench.z
    backend = "eager" if bench.args.tiny else "inductor"  # Dynamo's tracing alone on the CPU
    with applied(bench.vae, variant, backend):
        record, frames = timed(lambda: decode_video(bench.vae, z), bench.device, bench.args.repeats)
    if variant.compiled:
        record["compile_s"] = max(0.0, record["first_call_s"] - record["median"])
    if variant.name == "eager":
        bench.frames = frames
        saturated = (frames == 0).count_nonzero() + (frames == 255).count_nonzero()
        bench.results["eager_saturated_fraction"] = int(saturated) / frames.numel()
    elif bench.frames is not None:
        record["vs_eager"] = frame_difference(frames, bench.frames)
    bench.results["variants"][variant.name] = record


def part_variants(bench: Bench) -> None:
    """Every decoder variant, eager first (the reference for the frame differences)."""
    for variant in VARIANTS:
        bench.attempt(f"decode {variant.name}", lambda v=variant: measure_variant(bench, v), variant.need_s)
    release(bench.device)


def accelerated(args: argparse.Namespace, device: torch.device) -> nn.Module:
    """The transformer as the render runs it: blocks compiled (`accel.accelerate`, bf16, SDPA); tiny on the
    CPU with Dynamo's tracing alone."""
    if args.tiny:
        model = tiny_transformer().to(device=device, dtype=torch.bfloat16).requires_grad_(False)
        accel.compile_blocks(model, backend="eager")
        return model
    model = fullsize.transformer(str(device))
    accel.accelerate(model, accel.AccelSettings(compile=True), device)
    return model


def concurrently(
    sample: Callable[[], object] | None,
    decode: Callable[[], object],
    side: torch.cuda.Stream | None,
    device: torch.device,
) -> dict[str, float]:
    """Walls of `decode` on a background thread on stream `side`, and of `sample` run meanwhile on this thread
    and stream (None: the decode alone): each alone, both together (until all work is done), peak memory."""
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    ready = torch.cuda.Event() if side is not None else None
    if ready is not None:
        ready.record()  # in a render: the window's latents are done on the main stream
    box: dict = {}

    def background() -> None:
        """The decode on the side stream once the main stream's latents are ready."""
        begin = time.perf_counter()
        try:
            with torch.cuda.stream(side):
                if ready is not None:
                    side.wait_event(ready)
                decode()  # ends in a blocking copy of the frames to the host, as the render's does
                if side is not None:
                    side.synchronize()
            box["decode_s"] = time.perf_counter() - begin
        except Exception as exc:
            box["error"] = exc

    begin = time.perf_counter()
    thread = threading.Thread(target=background, name="decode")
    thread.start()
    if sample is not None:
        sample()
        if device.type == "cuda":
            torch.cuda.current_stream(device).synchronize()
        box["sample_s"] = time.perf_counter() - begin
    thread.join()
    sync(device)
    box["both_s"] = time.perf_counter() - begin
    if "error" in box:
        raise box["error"]
    if device.type == "cuda":
        box["peak_gib"] = torch.cuda.max_memory_allocated(device) / GiB
    return box


def part_overlap(bench: Bench) -> None:
    """Sampling one window alone, the side-stream decode alone, and both at once: interleaved repeats."""
    args, device = bench.args, bench.device
    rec = bench.results["overlap"] = {"shape": f"{args.width}x{args.height}x{args.frames}", "runs": []}
    begin = time.perf_counter()
    model = accelerated(args, device)
    x = window(model, "next", args, device)
    rec["video_tokens"] = x["layout"].clean.shape[1]
    sample = sampler(model, x)  # 8 distilled steps, NAG on: what the render runs
    side = torch.cuda.Stream(device) if device.type == "cuda" else None

    def decode() -> None:
        """The render's decode of one span, its frames dropped."""
        decode_video(bench.vae, bench.z)

    rec["setup_s"] = time.perf_counter() - begin
    rec["first_sample_s"] = wall(sample, device)  # compiles the blocks for this layout
    rec["first_side_decode_s"] = concurrently(None, decode, side, device)["both_s"]
    bench.save()
    for index in range(args.repeats):
        began = time.perf_counter()
        run = {"sample_s": wall(sample, device)}
        run["decode_s"] = concurrently(None, decode, side, device)["both_s"]
        both = concurrently(sample, decode, side, device)
        run["both_s"] = both.pop("both_s")
        run.update({f"{key}_in_both": value for key, value in both.items()})
        run["hidden"] = (run["sample_s"] + run["decode_s"] - run["both_s"]) / run["decode_s"]
        run["sample_slowdown"] = run["sample_s_in_both"] / run["sample_s"]
        rec["runs"].append(run)
        bench.save()
        if index + 1 < args.repeats and bench.left() < 1.5 * (time.perf_counter() - began):
            rec["stopped"] = f"after {index + 1} repeats: {bench.left():.0f} s left"
            break
    for key in rec["runs"][0]:
        rec[key] = summary([run[key] for run in rec["runs"]])
    del model, x, sample
    release(device)


def encode_fps(frames: Tensor, preset: str) -> float:
    """Frames per second through VideoWriter (H.264 CRF 18, no audio), wall clock."""
    with tempfile.TemporaryDirectory() as folder:
        count = frames.shape[0]
        start = time.perf_counter()
        with VideoWriter(
            Path(folder) / "x.mp4",
            width=frames.shape[2],
            height=frames.shape[1],
            fps=25.0,
            audio=None,
            total_frames=count,
            preset=preset,
        ) as writer:
            writer.write(frames)
        return count / (time.perf_counter() - start)


def smooth_frames(count: int, height: int, width: int) -> Tensor:
    """A moving gradient with a drifting disc: compressible, like footage. Built a frame at a time into
    uint8, so a song-length clip costs its own size in host memory and no more."""
    y = torch.arange(height).view(-1, 1)
    x = torch.arange(width).view(1, -1)
    frames = torch.empty(count, height, width, 3, dtype=torch.uint8)
    for t in range(count):
        disc = (x - width / 2 - 100 * math.sin(t / 20)) ** 2 + (y - height / 2) ** 2 < 80**2
        frames[t, ..., 0] = (x + 2 * t) % 256
        frames[t, ..., 1] = (y + t) % 256
        frames[t, ..., 2] = 128 + 100 * disc
    return frames


def part_x264(bench: Bench) -> None:
    """x264 speed on up to 250 decoded random-model frames and on as many smooth frames of the same size."""
    frames = bench.frames if bench.frames is not None else decode_video(bench.vae, bench.z)
    noise = frames[:250]
    smooth = smooth_frames(*noise.shape[:3])
    rec = bench.results["x264"] = {"frames": noise.shape[0]}
    for preset in ("medium", "fast", "veryfast"):
        rec[f"{preset}_noise_fps"] = encode_fps(noise, preset)
        rec[f"{preset}_smooth_fps"] = encode_fps(smooth, preset)
        bench.save()


def print_table(res: dict) -> None:
    """The short table the device reply carries."""
    frames, height, width = res["frames"]
    print(f"\n{res['gpu']}  torch {res['torch']}  z {res['z_shape']} → {frames} frames {width}x{height}")
    if res["variants"]:
        print(f"{'decode':16s} {'median s':>9s} {'(min-max)':>15s} {'peak GiB':>8s}  first s  |Δ| max mean")
    for name, rec in res["variants"].items():
        diff = rec.get("vs_eager", {"max_abs": "-", "mean_abs": float("nan")})
        spread = f"({rec['min']:6.3f}-{rec['max']:6.3f})"
        peak = rec.get("peak_gib", 0.0)
        print(
            f"{name:16s} {rec['median']:9.3f} {spread} {peak:8.1f} {rec['first_call_s']:8.1f}  "
            f"{diff['max_abs']:>7} {diff['mean_abs']:.4f}"
        )
    if "eager_saturated_fraction" in res:
        print(f"eager frames at 0 or 255: {100 * res['eager_saturated_fraction']:.1f}% of values")
    over = res.get("overlap", {})
    if "hidden" in over:
        med = {key: value["median"] for key, value in over.items() if isinstance(value, dict)}
        repeats = len(over["runs"])
        print(f"\noverlap, window {over['shape']}, {over['video_tokens']} tok, medians of {repeats}:")
        rows = (
            ("T_s   sampling alone", f"{med['sample_s']:.3f} s (first call {over['first_sample_s']:.1f} s)"),
            ("T_d   side decode alone", f"{med['decode_s']:.3f} s"),
            ("T_both", f"{med['both_s']:.3f} s, peak {med.get('peak_gib_in_both', 0.0):.1f} GiB"),
            (
                "sampling, decode beside",
                f"{med['sample_s_in_both']:.3f} s ({med['sample_slowdown']:.3f}x alone)",
            ),
            ("decode, sampling beside", f"{med['decode_s_in_both']:.3f} s"),
            ("hidden (T_s+T_d-T_both)/T_d", f"{100 * med['hidden']:.0f}%"),
        )
        for label, value in rows:
            print(f"  {label:28s} {value}")
    for name, value in res.get("x264", {}).items():
        print(f"x264 {name:20s} {value:7.1f}")
    for name, why in res["failures"].items():
        print(f"FAILED {name}: {why[:300]}")


def main() -> None:
    """Parse arguments and run the parts asked for."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--parts", default="variants,overlap", help="any of variants,overlap,x264, in order")
    parser.add_argument("--latents", type=int, default=72, help="a render decode span: 56 new + 2×8 margin")
    parser.add_argument("--width", type=int, default=832)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--frames", type=int, default=497, help="the sampled window's frames (overlap)")
    parser.add_argument("--fps", type=float, default=25.0)
    parser.add_argument("--text-tokens", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--deadline", type=float, default=480.0, help="seconds; later measurements are skipped"
    )
    parser.add_argument(
        "--tiny", action="store_true", help="tiny model on the CPU at a toy size (tests this script)"
    )
    args = parser.parse_args()
    if args.tiny:
        vars(args).update(TINY)
        torch.set_num_threads(1)  # two busy thread pools on two cores (the overlap's) would stall each other
    # A fresh compile cache: compile times are cold ones, whatever an earlier run on the machine left behind.
    os.environ["AUDIOLOOP_CACHE_DIR"] = tempfile.mkdtemp(prefix="audioloop-decode-")
    accel.use_compile_cache(accel.compile_cache_dir())
    bench = Bench(args)
    parts = {"variants": part_variants, "overlap": part_overlap, "x264": part_x264}
    needs = {"variants": 0.0, "overlap": OVERLAP_NEED_S, "x264": X264_NEED_S}
    for name in args.parts.split(","):
        bench.attempt(f"part {name}", lambda n=name: parts[n](bench), needs[name])
    bench.save()
    print_table(bench.results)


if __name__ == "__main__":
    main()
