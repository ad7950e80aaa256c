"""Per-window decode and encode costs: the full-size 2.3 VAE decoder on one render decode span, and x264.

Decode variants: diffusers spatial tiling (what the render does) vs untiled, each with and without
`torch.backends.cudnn.benchmark`; seconds (CUDA events, median of 3 after a warm-up) and peak GPU memory.
Encode: frames per second of audioloop's VideoWriter on random-noise frames (what a random-weight model
decodes to, x264's worst case) and on smooth moving frames (closer to real footage), at CRF 18.

    python bench/decode.py --out $OUT
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

import fullsize
from audioloop.media.writer import VideoWriter
from audioloop.models.latents import _to_uint8, decode_video

GiB = 2**30


def timed(fn, repeats: int = 3) -> dict[str, float]:
    """Median/min/max seconds of fn after one warm-up call, and its peak GPU memory in GiB."""
    fn()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() / GiB
    return {"median": statistics.median(times), "min": min(times), "max": max(times), "peak_gib": peak}


def encode_fps(frames: torch.Tensor, preset: str) -> float:
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


def smooth_frames(count: int, height: int, width: int) -> torch.Tensor:
    """A moving gradient with a drifting disc: compressible, like footage."""
    t = torch.arange(count).view(-1, 1, 1)
    y = torch.arange(height).view(1, -1, 1)
    x = torch.arange(width).view(1, 1, -1)
    disc = ((x - width / 2 - 100 * torch.sin(t / 20)) ** 2 + (y - height / 2) ** 2 < 80**2).float()
    r = (x + 2 * t) % 256 + 0 * y
    g = (y + t) % 256 + 0 * x
    b = 128 + 100 * disc
    return torch.stack([r, g, b.expand_as(r)], dim=-1).clamp(0, 255).to(torch.uint8)


def untiled_decode(vae: torch.nn.Module, z: torch.Tensor) -> torch.Tensor:
    """The render's decode without spatial tiles (the VAE's default is untiled)."""
    with torch.inference_mode():
        return _to_uint8(vae.decode(z.to(torch.bfloat16)).sample[0])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--latents", type=int, default=72, help="a render decode span: 56 new + 2×8 margin")
    args = parser.parse_args()
    vae = fullsize.build(fullsize.AutoencoderKLLTX2Video, fullsize.VIDEO_VAE_2_3, "cuda", torch.bfloat16, 1)
    z = torch.randn(1, 128, args.latents, 15, 26, device="cuda")
    results: dict = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "latents": args.latents}
    for benchmark in (False, True):
        torch.backends.cudnn.benchmark = benchmark
        results[f"decode_tiled_benchmark_{benchmark}"] = timed(lambda: decode_video(vae, z))
        results[f"decode_untiled_benchmark_{benchmark}"] = timed(lambda: untiled_decode(vae, z))
    frames = decode_video(vae, z)[:250]
    for preset in ("medium", "fast", "veryfast"):
        results[f"x264_{preset}_noise_fps"] = encode_fps(frames, preset)
        results[f"x264_{preset}_smooth_fps"] = encode_fps(smooth_frames(250, 480, 832), preset)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "decode.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
