"""Upscaling a whole song 2× through `audioloop upscale` (issue 5): wall time, its split, peak GPU memory.

Writes a finished 832×480 render of a 3:30 synthetic song straight to disk, without rendering: random
normalised window latents with the render's window structure (window i's first ov_lat latents are window
i−1's last, bit for bit) in a work dir, and the sidecar the render would have written. Then runs the real
upscale path on it (prepare_upscale → upscale: per-tile upsample, refinement with frozen song audio and NAG,
streaming decode, H.264 encode and mux) to 1664×960 with the full-size LTX-2.3 architecture and random
bf16 weights: `fullsize.components()` and the 2.3 latent upsampler's config below, swapped in for loading;
the prompts' embeddings are written into the text cache first (random, Gemma's output shape), so Gemma is
never built. Compare the wall time with `bench/song.py`'s 832×480 render (target: ≤ 2×; peak ≤ 60 GiB).
After every tile, `upscale_song.partial.json` in --out is rewritten with the pace so far, so a run cut off
by a time limit still tells the per-tile time and peak memory. Random weights decode to noise, which x264
encodes ~3.6× slower than footage (bench/RESULTS.md): at 1664×960 the writer can set the pace, so "mux"
(time waiting on the encoder) is reported apart and `--preset` shows how much of it is x264's.

    python3 bench/upscale_song.py --out $OUT                       # 3:30, 832×480 → 1664×960, bf16, CUDA
    python3 bench/upscale_song.py --out $OUT --fp8                 # the refinement in FP8
    python3 bench/upscale_song.py --out /tmp/x --tiny --seconds 6  # the tiny model on the CPU (tests this)
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch
from diffusers.pipelines.ltx2.latent_upsampler import LTX2LatentUpsamplerModel
from safetensors.torch import save_file

import fullsize
from audioloop import demo, render, upscale, upscale_job
from audioloop.config import DEFAULT_NEGATIVE, Settings
from audioloop.models.text import cache_path
from audioloop.models.tiny import VIDEO_LATENT_CHANNELS
from audioloop.plan import SPATIAL, make_plan
from audioloop.progress import RenderProgress
from audioloop.schedule import WindowPrompt
from audioloop.sidecar import window_table
from audioloop.tiles import tile_tokens
from audioloop.upscale_job import UpscaleRequest, prepare_upscale
from audioloop.workdir import WorkDir, cache_dir, chain, file_hash, write_json
from song import footage

GiB = 2**30
# diffusers' scripts/convert_ltx2_to_diffusers.py, get_ltx2_spatial_latent_upsampler_config("2.3")
UPSAMPLER_2_3 = dict(
    in_channels=128,
    mid_channels=1024,
    num_blocks_per_stage=4,
    dims=3,
    spatial_upsample=True,
    temporal_upsample=False,
    rational_spatial_scale=2.0,
    use_rational_resampler=False,
)
FULLSIZE = "fullsize-random"
REVISION = "fullsize-random-2.3"
TEXT = {"tokens": 1024, "video": 4096, "audio": 2048}  # connector outputs per prompt at full size
PROMPTS = (
    "A woman with short red hair and a green jacket is singing into a silver microphone",
    "A woman with short red hair and a green jacket is singing louder, one hand raised",
    "A woman with short red hair and a green jacket is swaying, eyes half closed",
)


def fake_render(folder: Path, settings: Settings, seconds: float, channels: int) -> Path:
    """A finished render's work dir and sidecar with random latents (no model runs); returns the sidecar."""
    song = demo.write_wav(folder / "song.wav", demo.song(seconds))
    plan = make_plan(
        seconds,
        fps=settings.fps,
        width=settings.width,
        height=settings.height,
        window_s=settings.window,
        overlap_s=settings.overlap,
        seed=settings.seed,
    )
    prompts = tuple(WindowPrompt(w.index, w.index % 3, PROMPTS[w.index % 3]) for w in plan.windows)
    prints = chain([{"bench": "random latents", "window": w.index} for w in plan.windows])
    output = folder / "song.mp4"
    work = WorkDir(folder / "song.mp4.work")
    gen = torch.Generator().manual_seed(0)
    cells = (plan.height // SPATIAL, plan.width // SPATIAL)
    previous = None
    for window, prompt, print_ in zip(plan.windows, prompts, prints, strict=True):
        latents = torch.randn(1, channels, window.lat_frames, *cells, generator=gen)
        if previous is not None:
            latents[:, :, : plan.ov_lat] = previous[:, :, -plan.ov_lat :]
        work.save(window.index, latents, print_, {"seed": window.seed, "prompt": prompt.prompt})
        previous = latents
    sidecar = folder / "song.mp4.json"
    document = {
        "output": str(output),
        "work_dir": str(work.path),
        "inputs": {"song": {"path": str(song), "sha256": file_hash(song)}},
        "settings": settings.to_dict(),
        "negative": DEFAULT_NEGATIVE,
        "model": {
            "id": settings.model,
            "revision": REVISION,
            "dtype": settings.dtype,
            "device": settings.device,
        },
        "plan": plan.to_dict(),
        "windows": window_table(plan, prompts, prints, 0),
    }
    write_json(sidecar, document)
    return sidecar


def cache_texts(prompts: list[str]) -> None:
    """Random full-size embeddings for `prompts` in the text cache, where encode_prompts looks first."""
    key = SimpleNamespace(revision=REVISION, max_sequence_length=TEXT["tokens"], dtype=torch.bfloat16)
    folder = cache_dir() / "text"
    folder.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(1)
    for prompt in prompts:
        tensors = {
            name: torch.randn(TEXT["tokens"], TEXT[name], generator=gen).to(torch.bfloat16)
            for name in ("video", "audio")
        }
        save_file(tensors, cache_path(key, prompt, folder), metadata={"revision": REVISION, "text": prompt})


def use_fullsize() -> None:
    """Swap the full-size random-weight architecture in for model loading and revision lookups."""
    upscale_job.model_revision = lambda _: REVISION
    upscale_job.upsampler_revision = lambda _: REVISION
    upscale.load_components = lambda *_, **__: fullsize.components("cuda", torch.bfloat16)
    upscale.load_latent_upsampler = lambda *_, **__: fullsize.build(
        LTX2LatentUpsamplerModel, UPSAMPLER_2_3, "cuda", torch.bfloat16, seed=4
    )


def peak_gpu() -> float:
    """Peak GPU memory allocated so far, GiB (0 without CUDA)."""
    return torch.cuda.max_memory_allocated() / GiB if torch.cuda.is_available() else 0.0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seconds", type=float, default=210.0)
    parser.add_argument("--width", type=int, default=832, help="the render's width (the upscale doubles it)")
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--tile", type=float, default=None, help="seconds (default: the longest within ~32k)")
    parser.add_argument("--tile-overlap", type=float, default=1.0)
    parser.add_argument("--sigmas", default="distilled")
    parser.add_argument(
        "--preset", default="medium", help="x264 preset of the render, which the upscale keeps"
    )
    parser.add_argument("--fp8", action="store_true", help="FP8 transformer for the refinement")
    parser.add_argument("--compile", default="auto", choices=("auto", "true", "false"))
    parser.add_argument("--background-decode", action="store_true", help="decode beside the refinement")
    parser.add_argument("--footage", action="store_true", help="x264 gets footage-like frames (song.py)")
    parser.add_argument("--tiny", action="store_true", help="the tiny model on the CPU (tests this script)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="audioloop-upscale-"))
    os.environ["AUDIOLOOP_CACHE_DIR"] = str(scratch / "cache")

    if args.tiny:
        settings = Settings(
            model="tiny", device="cpu", dtype="float32", width=64, height=64, window=3.56, preset=args.preset
        )
        channels = VIDEO_LATENT_CHANNELS
    else:
        settings = Settings(
            model=FULLSIZE,
            device="cuda",
            dtype="bfloat16",
            width=args.width,
            height=args.height,
            preset=args.preset,
        )
        channels = 128
        cache_texts([*PROMPTS, DEFAULT_NEGATIVE])
        use_fullsize()
    if args.footage:
        render.decode_video = footage(render.decode_video)
    sidecar = fake_render(scratch, settings, args.seconds, channels)

    compile = None if args.compile == "auto" else args.compile == "true"
    request = UpscaleRequest(
        sidecar,
        tile=args.tile,
        tile_overlap=args.tile_overlap,
        sigmas=args.sigmas,
        compile=compile,
        fp8=args.fp8,
        background_decode=args.background_decode,
    )
    began = time.perf_counter()
    job = prepare_upscale(request)
    prepare_s = time.perf_counter() - began
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    marks: list[float] = []
    began = time.perf_counter()

    def tile_done(index: int) -> None:
        """Record the tile's end and rewrite the partial results (a run cut off still reports its pace)."""
        marks.append(time.perf_counter())
        per_tile = [b - a for a, b in itertools.pairwise([began, *marks])]
        partial = {
            "tiles_done": index + 1,
            "tiles": len(job.tiles.windows),
            "elapsed_s": marks[-1] - began,
            "per_tile_s": per_tile,
            "peak_gpu_gib": peak_gpu(),
        }
        (args.out / "upscale_song.partial.json").write_text(json.dumps(partial, indent=2))

    document = upscale.upscale(job, RenderProgress(), on_tile=tile_done)
    wall = time.perf_counter() - began

    tiles, timings = job.tiles, document["timings"]
    cells = (tiles.width // SPATIAL) * (tiles.height // SPATIAL)
    results = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "torch": torch.__version__,
        "song_seconds": args.seconds,
        "from": f"{settings.width}x{settings.height}",
        "to": f"{tiles.width}x{tiles.height}",
        "frames": tiles.total_frames,
        "render_windows": len(job.render.plan.windows),
        "tiles": len(tiles.windows),
        "tile_latents": tiles.win_lat,
        "overlap_latents": tiles.ov_lat,
        "tokens_per_tile": tile_tokens(cells, tiles.win_lat, tiles.fps),
        "sigmas": list(job.sampler.sigmas),
        "preset": settings.preset,
        "accel": document["model"].get("accel"),
        "background_decode": job.background,
        "frames_encoded": "footage-like clip" if args.footage else "decoded (noise)",
        "decode_spans": len(job.spans),
        "prepare_s": prepare_s,
        "upscale_wall_s": wall,
        "wall_without_load_s": wall - timings["load"],
        "split_s": {
            stage: timings[stage] for stage in ("upsample", "refine", "decode", "mux", "decode_busy")
        },
        "timings": timings,
        "per_tile_s": [b - a for a, b in itertools.pairwise([began, *marks])],
        "peak_gpu_gib": peak_gpu(),
        "peak_gpu_reserved_gib": torch.cuda.max_memory_reserved() / GiB if torch.cuda.is_available() else 0.0,
        "peak_host_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "output_bytes": Path(document["output"]).stat().st_size,
    }
    (args.out / "upscale_song.json").write_text(json.dumps(results, indent=2))
    json.dump(results, sys.stdout, indent=2)
    shapes = f"{results['from']} → {results['to']}"
    print(f"\n{results['gpu']}: {args.seconds:.0f} s song, {shapes}, {results['tiles']} tiles")
    load = timings["load"]
    print(f"upscale wall {wall:.1f} s, load {load:.1f} s, without load {wall - load:.1f} s")
    for stage in ("text", "upsample", "encode", "refine", "decode", "mux", "decode_busy"):
        print(f"  {stage:9s} {timings[stage]:8.2f} s")
    print(f"peak GPU {results['peak_gpu_gib']:.1f} GiB, peak host RSS {results['peak_host_rss_gib']:.1f} GiB")


if __name__ == "__main__":
    main()
