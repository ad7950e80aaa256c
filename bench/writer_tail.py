"""How fast the writer drains a render's last span: the seconds from its first queued frame to the file.

The render's tail is the last span's frames (337 at 3:30) going through VideoWriter once sampling is over,
so the writer's own rate is the critical path there. This writes one span of footage-like frames with the
demo song's audio into an .mp4 (AAC) as the render does, fed the yuv420p planes the decoder converts on
the GPU, median of `--repeats`: once as they arrive at a fresh writer, once after the writer has encoded the
audio ahead (as it does while the render samples the last window); then x264 alone on the same frames, and
(on CUDA) the conversion of the span's frames on the GPU with their copy to page-locked host memory. (The
nineteenth session's x264 threading variants and the CPU conversion pool it replaced are in
bench/RESULTS.md.)

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
from pathlib import Path

import av
import numpy as np
import torch

from audioloop import demo
from audioloop.media.audio import SourceAudio
from audioloop.media.writer import VideoWriter
from audioloop.media.yuv import yuv420p
from decode import smooth_frames


def write_span(planes: np.ndarray, folder: Path, audio_ahead: bool, fps: float = 25.0) -> float:
    """Seconds from queuing yuv420p `planes` (with the demo song's audio, 44.1 kHz stereo) to a closed .mp4;
    with `audio_ahead`, the frames are queued after a wait long enough for the writer to encode all of the
    audio first (AAC runs at ~15× real time on one core)."""
    song = (demo.song(len(planes) / fps) * 32767).astype(np.int16)
    video = VideoWriter(
        folder / "tail.mp4",
        width=planes.shape[2],
        height=planes.shape[1] * 2 // 3,
        fps=fps,
        audio=SourceAudio(song, demo.RATE, "stereo"),
        total_frames=len(planes),
    )
    if audio_ahead:
        time.sleep(len(planes) / fps / 5 + 0.5)
    began = time.perf_counter()
    with video:
        video.write_yuv420p(planes)
    return time.perf_counter() - began


def x264_only(planes: np.ndarray, folder: Path) -> float:
    """Seconds for x264 (the writer's settings) on frames already wrapped for it, flush included."""
    frames = [av.VideoFrame.from_ndarray(p, format="yuv420p") for p in planes]
    with av.open(str(folder / "x264.mkv"), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = frames[0].width, frames[0].height, "yuv420p"
        stream.codec_context.options = {"crf": "18", "preset": "medium"}
        stream.codec_context.thread_type = "FRAME"
        began = time.perf_counter()
        for pts, frame in enumerate(frames):
            frame.pts = pts
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
        return time.perf_counter() - began


def gpu_conversion(rgb: torch.Tensor) -> float:
    """Seconds to convert frames already on the GPU to yuv420p and copy them to page-locked host memory."""
    frames = rgb.cuda()
    host = torch.empty((frames.shape[0], frames.shape[1] * 3 // 2, frames.shape[2]), dtype=torch.uint8)
    host = host.pin_memory()
    torch.cuda.synchronize()
    began = time.perf_counter()
    for start in range(0, len(frames), 32):
        host[start : start + 32].copy_(yuv420p(frames[start : start + 32]), non_blocking=True)
    torch.cuda.synchronize()
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
    rgb = smooth_frames(args.frames, args.height, args.width)
    planes = yuv420p(rgb).numpy()
    results: dict = {"frames": args.frames, "cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        parts = {
            "writer, audio as frames arrive": lambda: write_span(planes, folder, audio_ahead=False),
            "writer, audio encoded ahead": lambda: write_span(planes, folder, audio_ahead=True),
        }
        parts["x264 alone"] = lambda: x264_only(planes, folder)
        if torch.cuda.is_available():
            parts["conversion on the GPU + copy"] = lambda: gpu_conversion(rgb)
        for name, part in parts.items():
            times = [part() for _ in range(args.repeats)]
            results[name] = {"median_s": statistics.median(times), "all_s": times}
            report(name, statistics.median(times), args.frames)
    (args.out / "writer_tail.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
