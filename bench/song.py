"""A whole song through `audioloop render` with the full-size LTX-2.3 architecture and random weights.

The real render path (prepare → render: text once, audio/image encode, window chain, streaming decode,
H.264 encode and mux), with `load_components` swapped for `fullsize.components()`. Reports total wall time,
its split by stage, seconds per window (and each window's stages and steps), peak GPU memory and peak host
RAM. "load" is building random weights here (not reading 60 GB from disk), so it is reported but left out
of the overhead figure.

    python bench/song.py --out $OUT                       # 3:30 at 832x480, 8 steps
    python bench/song.py --out $OUT --footage --fp8       # x264 fed footage-like frames, FP8 transformer
    python bench/song.py --out $OUT --cache /tmp/c ...    # compile cache kept: run twice for a warm start
    python bench/song.py --out /tmp/x --tiny --seconds 6  # CPU smoke test of this script
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import resource
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

import fullsize
import threads
from audioloop import demo, job, render
from audioloop.config import load_settings
from audioloop.job import prepare
from audioloop.media.yuv import yuv420p
from audioloop.models import flash4
from audioloop.models.latents import VideoStream
from audioloop.progress import RenderProgress
from audioloop.request import request_for
from decode import smooth_frames

ROOT = Path(__file__).resolve().parents[1]
GiB = 2**30


def inputs(folder: Path, seconds: float) -> tuple[Path, Path, Path]:
    """A synthetic song of `seconds`, the demo hero image and the 3:30 example schedule."""
    song = demo.write_wav(folder / "song.wav", demo.song(seconds))
    image = folder / "hero.png"
    demo.hero_image(1280, 720).save(image)
    return song, image, ROOT / "prompts" / "indie_ballad.yaml"


def footage(stream: type[VideoStream]) -> type[VideoStream]:
    """`stream`, whose frames are then swapped for a smooth moving clip of the same shape: the GPU decodes
    as in the render, but x264 sees footage instead of the random model's noise, its worst case. One clip
    (the longest span's) is kept and sliced (the writer copies what it queues), as yuv420p planes when the
    decode returns those."""
    clip = torch.empty(0, 0, 0, dtype=torch.uint8)

    class Footage(stream):
        def __call__(self, *args: object, **options: object) -> torch.Tensor:
            nonlocal clip
            frames = super().__call__(*args, **options)
            if clip.shape[0] < frames.shape[0] or clip.shape[1:] != frames.shape[1:]:
                count, height, width = frames.shape[:3]
                if self._yuv:  # converted where the render converts, not by the CPU beside the decode
                    rgb = smooth_frames(count, height * 2 // 3, width)
                    clip = yuv420p(rgb.cuda() if torch.cuda.is_available() else rgb).cpu()
                else:
                    clip = smooth_frames(count, height, width)
            return clip[: frames.shape[0]]

    return Footage


class Timeline(RenderProgress):
    """Each window's share of every render stage, from the render's own Clock (which `watch` records as
    render() builds it), and the host wall time between its progress reports: the first "step" also holds
    the window's encode stage (audio slice, context), which runs before the sampler starts."""

    def __init__(self) -> None:
        self.origin = time.perf_counter()  # reset as the render starts
        self.clocks: list[render.Clock] = []
        self.windows: list[dict] = []
        self._stages: dict[str, float] = {}
        self._last = 0.0

    def watch(self) -> None:
        """Make render.Clock record each instance here."""
        timeline, base = self, render.Clock

        class Watched(base):
            def __init__(self, *args: object) -> None:
                super().__init__(*args)
                timeline.clocks.append(self)

        render.Clock = Watched

    def start_window(self, index: int, total: int, sampled: bool) -> None:
        self._last = time.perf_counter()
        self.windows.append({"window": index, "start_s": self._last - self.origin, "steps_s": []})

    def step(self, done: int, total: int) -> None:
        now = time.perf_counter()
        self.windows[-1]["steps_s"].append(now - self._last)
        self._last = now

    def end_window(self) -> None:
        """Charge the stages' growth since the last window to this one (the clock charges on stage exits)."""
        seconds = dict(self.clocks[-1].seconds)
        self.windows[-1]["stages_s"] = {k: v - self._stages.get(k, 0.0) for k, v in seconds.items()}
        self._stages = seconds


def watch_fa4_import(timeline: Timeline) -> dict[str, float]:
    """Record when `--attention fa4`'s import thread (`flash4.preload`) ends, in seconds from the render's
    start: whether window 0's first step waited for it."""
    events: dict[str, float] = {}
    preload = flash4.preload

    def timed_preload(cache: Path) -> threading.Thread:
        thread = preload(cache)

        def wait() -> None:
            thread.join()
            events["fa4_import_done_s"] = time.perf_counter() - timeline.origin

        threading.Thread(target=wait, daemon=True).start()
        return thread

    flash4.preload = timed_preload
    return events


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seconds", type=float, default=210.0)
    parser.add_argument("--width", type=int, default=832)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--tiny", action="store_true", help="the tiny model on the CPU (tests this script)")
    parser.add_argument("--fp8", action="store_true", help="FP8 transformer (models/accel.py)")
    parser.add_argument("--compile", default="auto", choices=("auto", "true", "false"))
    parser.add_argument("--attention", help="attention kernel (models/accel.py's names; default: sdpa)")
    parser.add_argument(
        "--footage",
        action="store_true",
        help="encode footage-like frames in place of the random model's noise (the decode still runs)",
    )
    parser.add_argument(
        "--cache",
        type=Path,
        help="audioloop cache dir kept across runs (compile artefacts); its text cache is emptied first",
    )
    parser.add_argument(
        "--trace",
        action="store_true",
        help="time each decode span and sample the threads' stacks (threads.py)",
    )
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="audioloop-song-"))
    cache = args.cache or work / "cache"
    shutil.rmtree(cache / "text", ignore_errors=True)  # a cold text cache: the text stage really runs
    os.environ["AUDIOLOOP_CACHE_DIR"] = str(cache)

    if args.tiny:
        tiny = {"preset": "medium", "compile": args.compile}
        settings = load_settings(ROOT / "configs" / "tiny.yaml", tiny)
    else:
        model = "fullsize-random"
        job.model_revision = lambda _: "fullsize-random-2.3"
        render.load_components = lambda *_, **__: fullsize.components("cuda", torch.bfloat16)
        flags = {"model": model, "device": "cuda", "dtype": "bfloat16", "width": args.width}
        flags.update(height=args.height, fp8=args.fp8, compile=args.compile, attention=args.attention)
        settings = load_settings(None, flags)

    if args.footage:
        render.VideoStream = footage(render.VideoStream)
    song, image, schedule = inputs(work, args.seconds)
    request, _ = request_for(song, image, schedule, settings, output=work / "song.mp4", resume=False)
    began = time.perf_counter()
    prepared = prepare(request)
    prepare_s = time.perf_counter() - began
    marks: list[float] = []
    timeline = Timeline()
    timeline.watch()
    events = watch_fa4_import(timeline)
    began = timeline.origin = time.perf_counter()
    trace = threads.SpanTrace(began) if args.trace else None
    document = render.render(prepared, timeline, on_window=lambda _: marks.append(time.perf_counter()))
    wall = time.perf_counter() - began
    traced = trace.stop() if trace else {}

    timings = document["timings"]
    per_window = [b - a for a, b in zip([began, *marks], marks, strict=False)]
    overhead = wall - timings["load"] - timings["sampling"]
    results = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "torch": torch.__version__,
        "song_seconds": args.seconds,
        "shape": f"{args.width}x{args.height}",
        "windows": len(prepared.request.plan.windows),
        "frames": prepared.request.plan.total_frames,
        "steps": len(settings.sigmas) - 1,
        "accel": document["model"]["accel"],
        "frames_encoded": "footage-like clip" if args.footage else "decoded (noise)",
        "prepare_s": prepare_s,
        "render_wall_s": wall,
        "timings": timings,
        "wall_without_load_s": wall - timings["load"],
        "overhead_s": overhead,
        "overhead_pct_of_wall_without_load": 100 * overhead / (wall - timings["load"]),
        "per_window_s": per_window,
        "windows_detail": timeline.windows,
        "events_s": events,
        "peak_gpu_gib": torch.cuda.max_memory_allocated() / GiB if torch.cuda.is_available() else 0.0,
        "peak_host_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "output_bytes": Path(document["output"]).stat().st_size,
        **traced,
    }
    (args.out / "song.json").write_text(json.dumps(results, indent=2))
    json.dump(results, sys.stdout, indent=2)
    share = results["overhead_pct_of_wall_without_load"]
    load = timings["load"]
    print(f"\n{results['gpu']}: {args.seconds:.0f} s song, {results['windows']} windows")
    print(f"render wall {wall:.1f} s, load {load:.1f} s, without load {wall - load:.1f} s")
    for stage in ("text", "encode", "sampling", "decode", "mux", "decode_busy"):
        print(f"  {stage:9s} {timings[stage]:8.2f} s")
    for row in timeline.windows:
        stages = " ".join(f"{k} {v:.2f}" for k, v in row["stages_s"].items() if v >= 0.005)
        steps = " ".join(f"{t:.2f}" for t in row["steps_s"])
        print(f"  window {row['window']:2d}: {stages} | steps {steps}")
    for name, at in events.items():
        print(f"{name} {at:.2f} s; window 0 started at {timeline.windows[0]['start_s']:.2f} s")
    for row in traced.get("spans", []):
        times = {k: round(v - row["pushed_s"], 2) for k, v in row.items() if k.endswith("_s")}
        print(f"  span after window {row['window']:2d} ({row.get('frames')} frames): {times}")
    if traced.get("spans"):
        print(f"  Triton's environment at the first span: {traced['spans'][0].get('triton_env')}")
        for row in traced["writer_pieces"][-3:]:
            seconds = row["ended_s"] - row["began_s"]
            print(f"  writer: {row['frames']} frames from {row['began_s']:.2f} s in {seconds:.2f} s")
        print(f"  the writer took its last frames at {traced['writer_drained_s']:.2f} s of {wall:.2f} s")
    print(f"everything but load and sampling: {overhead:.1f} s = {share:.2f}% of the wall without load")
    print(f"peak GPU {results['peak_gpu_gib']:.1f} GiB, peak host RSS {results['peak_host_rss_gib']:.1f} GiB")


if __name__ == "__main__":
    main()
