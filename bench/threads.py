"""Where a render's threads spend a decode span: each span's timeline, and sampled Python stacks.

`SpanTrace(origin)` patches the render's LatentStream so every span records when its window handed it over,
when its decode started and ended and when its frames were queued on the writer (seconds from `origin`),
times each chunk the writer encodes, notes when it took its last frames (the encoder's flush follows),
and starts a thread that samples every thread's innermost Python frames every `period` s. Each sample is
counted under (thread, the span decoding at that moment, the innermost frame, the innermost audioloop or
bench frame), so a slow span shows whether its thread sat in a conv, a Triton launch, the writer's queue,
or waited for the GIL behind another thread (`bench/song.py --trace`).
"""

from __future__ import annotations

import collections
import os
import sys
import threading
import time
from types import FrameType

from audioloop import decode
from audioloop.media import writer

OWN = (f"{os.sep}audioloop{os.sep}", f"{os.sep}bench{os.sep}")


class SpanTrace:
    """The patched stream's records: `spans` (one dict per span) and `stacks` (sample counts)."""

    def __init__(self, origin: float, period: float = 0.005) -> None:
        self.origin = origin
        self.period = period
        self.spans: list[dict] = []
        self.stacks: collections.Counter[tuple[str, int, str, str]] = collections.Counter()
        self._current = -1
        self.drained_s: float | None = None
        self.pieces: list[dict] = []
        self._stop = threading.Event()
        self._patch()
        self._sampler = threading.Thread(target=self._sample, name="stack-sampler", daemon=True)
        self._sampler.start()

    def _now(self) -> float:
        """Seconds since `origin`."""
        return time.perf_counter() - self.origin

    def _patch(self) -> None:
        """Wrap LatentStream's push (a span handed over) and _run (decoded, then queued on the writer)."""
        trace, push, run = self, decode.LatentStream.push, decode.LatentStream._run

        def timed_push(stream: decode.LatentStream, index: int, latents: object) -> None:
            if index in stream._spans:
                trace.spans.append({"window": index, "pushed_s": trace._now()})
            push(stream, index, latents)

        def timed_run(stream: decode.LatentStream, span: decode.DecodeSpan, *args: object) -> None:
            row = next(r for r in trace.spans if r["window"] == span.window)
            row.update(started_s=trace._now(), frames=span.frames)
            row["triton_env"] = {k: v for k, v in os.environ.items() if k.startswith("TRITON_")}
            trace._current = span.window
            emit = stream._emit

            def timed_emit(frames: object) -> None:
                row["decoded_s"] = trace._now()
                emit(frames)

            stream._emit = timed_emit
            try:
                run(stream, span, *args)
            finally:
                stream._emit = emit
                row["emitted_s"] = trace._now()
                trace._current = -1

        take = writer.VideoWriter._take

        def timed_take(video: writer.VideoWriter) -> object:
            piece = take(video)
            if piece is None:
                trace.drained_s = trace._now()
            return piece

        encode = writer.VideoWriter._encode_frames

        def timed_encode(video: writer.VideoWriter, piece: object) -> None:
            row = {"frames": len(piece), "began_s": trace._now()}
            encode(video, piece)
            trace.pieces.append({**row, "ended_s": trace._now()})

        decode.LatentStream.push = timed_push
        decode.LatentStream._run = timed_run
        writer.VideoWriter._take = timed_take
        writer.VideoWriter._encode_frames = timed_encode

    def _sample(self) -> None:
        """Count every thread's current frames each `period` until stopped."""
        while not self._stop.wait(self.period):
            names = {t.ident: t.name for t in threading.enumerate()}
            span = self._current
            for ident, frame in sys._current_frames().items():
                name = names.get(ident, "?")
                if name == "stack-sampler":
                    continue
                kind = name.split("_")[0].split("(")[0]
                self.stacks[(kind, span, where(frame), own(frame))] += 1

    def stop(self) -> dict:
        """Stop sampling; the spans, the writer's chunks and when it drained, and per (thread, span) the
        12 most sampled frame pairs in ms."""
        self._stop.set()
        self._sampler.join()
        groups: dict[str, list] = collections.defaultdict(list)
        for (kind, span, inner, mine), n in self.stacks.most_common():
            key = f"{kind} span {span}"
            if len(groups[key]) < 12:
                groups[key].append([round(n * self.period * 1000), inner, mine])
        return {
            "spans": self.spans,
            "writer_pieces": self.pieces,
            "writer_drained_s": self.drained_s,
            "stacks_ms": dict(groups),
        }


def where(frame: FrameType) -> str:
    """`file:line function` of a frame."""
    code = frame.f_code
    return f"{os.path.basename(code.co_filename)}:{frame.f_lineno} {code.co_name}"


def own(frame: FrameType | None) -> str:
    """The innermost frame in audioloop or bench code, or '-'."""
    while frame is not None:
        if any(part in frame.f_code.co_filename for part in OWN):
            return where(frame)
        frame = frame.f_back
    return "-"
