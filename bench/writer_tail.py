"""How fast the writer drains a render's last span: the seconds from its first queued frame to the file.

The render's tail is the last span's frames (337 at 3:30) going through VideoWriter once sampling is over,
so the writer's own rate is the critical path there. For each x264 threading variant (same CRF and preset;
x264's threading options change speed, not the rate control's target) this writes one span of footage-like
frames with the song's audio as the render does and times it, median of `--repeats`; then yuv420p
conversion alone in the writer's pool, and x264 alone on pre-converted frames. CPU only.

    python bench/writer_tail.py --out $OUT
    python bench/writer_tail.py --out /tmp/w --frames 48 --repeats 1   # smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import av
import numpy as np

from audioloop.media.audio import SourceAudio
from audioloop.media.writer import CONVERT_THREADS, VideoWriter, converted, to_yuv420p
from decode import smooth_frames

VARIANTS = {  # x264 options added to the writer's own (crf, preset)
    "writer as is": {},
    "threads 16": {"threads": "16"},
    "threads 32": {"threads": "32"},
    "lookahead-threads 4": {"x264-params": "lookahead-threads=4"},
    "threads 32, lookahead-threads 6": {"threads": "32", "x264-params": "lookahead-threads=6"},
}


@contextmanager
def x264_options(extra: dict[str, str]) -> Iterator[None]:
    """VideoWriter's video stream with `extra` x264 options inside the block."""
    add = VideoWriter._add_video_stream

    def with_extra(self: VideoWriter, crf: int, preset: str) -> av.VideoStream:
        stream = add(self, crf, preset)
        stream.codec_context.options = {**stream.codec_context.options, **extra}
        return stream

    VideoWriter._add_video_stream = with_extra
    try:
        yield
    finally:
        VideoWriter._add_video_stream = add


def write_span(frames: np.ndarray, folder: Path, fps: float = 25.0) -> float:
    """Seconds to write `frames` (and their audio, 48 kHz stereo int16) into a fresh .mkv and close it."""
    samples = round(len(frames) * 48_000 / fps)
    tone = (3000 * np.sin(np.arange(samples) * 2 * np.pi * 440 / 48_000)).astype(np.int16)
    audio = SourceAudio(np.stack([tone, tone]), 48_000, "stereo")
    began = time.perf_counter()
    with VideoWriter(
        folder / "tail.mkv",
        width=frames.shape[2],
        height=frames.shape[1],
        fps=fps,
        audio=audio,
        total_frames=len(frames),
    ) as video:
        video.write(frames)
    return time.perf_counter() - began


def conversion_only(frames: np.ndarray) -> float:
    """Seconds to convert every frame to yuv420p in the writer's pool, in order."""
    began = time.perf_counter()
    with ThreadPoolExecutor(CONVERT_THREADS) as pool:
        for _ in converted(frames, pool):
            pass
    return time.perf_counter() - began


def x264_only(frames: np.ndarray, folder: Path) -> float:
    """Seconds for x264 (the writer's settings) on frames already in yuv420p, flush included."""
    yuv = [to_yuv420p(rgb) for rgb in frames]
    with av.open(str(folder / "x264.mkv"), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.codec_context.options = {"crf": "18", "preset": "medium"}
        stream.codec_context.thread_type = "FRAME"
        began = time.perf_counter()
        for pts, frame in enumerate(yuv):
            frame.pts = pts
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
        return time.perf_counter() - began


def report(name: str, seconds: float, frames: int) -> None:
    """One line: the variant, its seconds and frames per second."""
    print(f"{name:34s} {seconds:6.2f} s  {frames / seconds:6.0f} fps", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--frames", type=int, default=337)
    parser.add_argument("--width", type=int, default=832)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    frames = smooth_frames(args.frames, args.height, args.width).numpy()
    results: dict = {"frames": args.frames, "cpus": os.cpu_count(), "convert_threads": CONVERT_THREADS}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for name, extra in VARIANTS.items():
            with x264_options(extra):
                times = [write_span(frames, folder) for _ in range(args.repeats)]
            results[name] = {"median_s": statistics.median(times), "all_s": times}
            report(name, statistics.median(times), args.frames)
        parts = {"conversion alone": conversion_only, "x264 alone": lambda f: x264_only(f, folder)}
        for name, part in parts.items():
            seconds = statistics.median(part(frames) for _ in range(args.repeats))
            results[name] = seconds
            report(name, seconds, args.frames)
    (args.out / "writer_tail.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
