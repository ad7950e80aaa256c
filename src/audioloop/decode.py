"""Streaming decode: which latents to decode after each window, and the stream that does it (DESIGN §5).

The song's latents form one timeline: window i's latent k is timeline latent i·new_lat + k, and output frame f
belongs to timeline latent (f + 7)//8 (latent 0 is the causal single frame). The 2.3 decoder is not causal:
a frame depends on the latents up to 13.5 after its own (conv_in, a 2-resnet mid block and the first
upsampler's conv at the latent rate: 6; 2, 4 and 6 + 4 resnets after each ×2 time upsampling: 2.5, 2.25 and
2.75; every conv has 3 taps in time). The decode is one stream over the timeline (`models.decoder.Stream`:
each conv keeps the last frames of its input), so every frame is the whole timeline's decode and no latent
is decoded twice. After window i, its latents not yet decoded go in and the frames they complete come out:
those of latents more than STREAM_REACH before the window's end (0.56 s at 25 fps). The last span ends
STREAM_REACH latents past the video's last frame (later latents change none of its frames) and completes
the video.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor

from audioloop.plan import TEMPORAL, Plan

STREAM_REACH = 14  # latents after a frame's own that the 2.3 decoder reads (13.5), rounded up
# Latents per push of the last span, so that x264 encodes each push's frames while the next one decodes.
TAIL_PIECE = 8


@dataclass(frozen=True)
class DecodeSpan:
    """After window `window`: push timeline latents [start, end) into the decode, emit frames
    [emit_start, emit_end)."""

    window: int
    start: int
    end: int
    emit_start: int
    emit_end: int

    @property
    def frames(self) -> int:
        """Frames the span emits."""
        return self.emit_end - self.emit_start


def decoded_frames(latents: int) -> int:
    """Pixel frames of a decoded run of latents (the first latent is one frame, the others eight)."""
    return TEMPORAL * (latents - 1) + 1


def first_frame(latent: int) -> int:
    """The first output frame of timeline latent `latent` (0 for the causal first latent)."""
    return max(0, TEMPORAL * latent - (TEMPORAL - 1))


def latent_of(frame: int) -> int:
    """The timeline latent that output frame `frame` belongs to."""
    return (frame + TEMPORAL - 1) // TEMPORAL


def window_ends(plan: Plan) -> tuple[int, ...]:
    """One past each window's last timeline latent: i·new_lat + the window's latent frames."""
    return tuple(w.index * plan.new_lat + w.lat_frames for w in plan.windows)


def decode_spans(plan: Plan) -> tuple[DecodeSpan, ...]:
    """The decode after each window that completes new frames (the last window: the rest): every latent up
    to STREAM_REACH past the video's last frame pushed once and every output frame emitted once, in order,
    each once the STREAM_REACH latents after its own are in."""
    ends = window_ends(plan)
    needed = min(ends[-1], latent_of(plan.total_frames - 1) + 1 + STREAM_REACH)
    spans: list[DecodeSpan] = []
    emitted = pushed = 0
    for index, end in enumerate(ends):
        last = index == len(ends) - 1
        end = min(end, needed)
        ready = plan.total_frames if last else completed(end, plan.total_frames)
        if ready > emitted:
            spans.append(DecodeSpan(index, pushed, end, emitted, ready))
            emitted, pushed = ready, end
    return tuple(spans)


def completed(end: int, total: int) -> int:
    """The output frames (of `total`) that timeline latents [0, end) complete: those of latents at least
    STREAM_REACH before `end`."""
    return min(total, first_frame(max(0, end - STREAM_REACH)))


def tail_pieces(span: DecodeSpan) -> tuple[DecodeSpan, ...]:
    """The last span as equal pushes of at most TAIL_PIECE latents, each emitting the frames it completes
    (at least one; the last push: the rest). Nothing else is left to hide the last span's decode and the
    encoding of its frames behind, so they overlap each other."""
    count = -(-(span.end - span.start) // TAIL_PIECE)
    pieces: list[DecodeSpan] = []
    start, emitted = span.start, span.emit_start
    for k in range(1, count + 1):
        end = span.start + k * (span.end - span.start) // count
        ready = span.emit_end if k == count else completed(end, span.emit_end)
        if ready > emitted:
            pieces.append(DecodeSpan(span.window, start, end, emitted, ready))
            start, emitted = end, ready
    return tuple(pieces)


def frame_budget(plan: Plan) -> int:
    """Two windows' worth of decoded frames: the most a render holds, decode span plus writer queue. Only
    windows much shorter than the decoder's reach (8·STREAM_REACH frames) let the last span, which also
    completes every frame still waiting for its reach, hold more."""
    return 2 * max(w.px_frames for w in plan.windows)


def queue_limit(plan: Plan, spans: tuple[DecodeSpan, ...]) -> int:
    """The writer's max_queued_frames: whatever the largest decode span leaves of frame_budget (at least
    one frame)."""
    return max(1, frame_budget(plan) - max(s.frames for s in spans))


class LatentStream:
    """Collects each final window's latents on the timeline, pushes each span's into the decode and hands
    the frames on.

    Only latents no span has pushed yet are kept, so memory does not grow with the song's length.
    `decode(latents, frames=(emit_start, emit_end), last=...)` is a stream over the timeline (a
    `models.latents.VideoStream`): it takes each span's latents, which follow the last span's, and returns
    the frames the span emits, in the layout `emit` takes; `last` marks the final span. `emit` receives
    them. With `background`, each span decodes and emits on a worker thread (on CUDA, on a side stream)
    while the caller samples the next window; one span at a time, so at most one span's frames exist beside
    the writer's queue. `busy` is the seconds spent decoding, wherever it ran.
    """

    def __init__(
        self,
        plan: Plan,
        spans: tuple[DecodeSpan, ...],
        decode: Callable[..., Tensor],
        emit: Callable[[Tensor], None],
        background: bool = False,
    ) -> None:
        self._new_lat = plan.new_lat
        self._spans = {span.window: span for span in spans}
        self._final = spans[-1].window if spans else None
        self._decode = decode
        self._emit = emit
        self._latents: Tensor | None = None
        self._base = 0
        self._end = 0
        self._worker = ThreadPoolExecutor(1, thread_name_prefix="decode") if background else None
        self._pending: Future[None] | None = None
        self._side: torch.cuda.Stream | None = None
        self.busy = 0.0

    def push(self, index: int, latents: Tensor) -> None:
        """Add window `index`'s final latents (windows in order), then decode and emit what is ready; in the
        background, first wait for the previous span (its error is raised here)."""
        offset = index * self._new_lat
        if offset > self._end:
            raise ValueError(
                f"window {index} leaves a gap in the latent timeline (windows must come in order)"
            )
        fresh = latents[:, :, self._end - offset :]
        self._latents = fresh if self._latents is None else torch.cat([self._latents, fresh], dim=2)
        self._end = offset + latents.shape[2]
        span = self._spans.get(index)
        if span is None:
            return
        chosen = self._latents[:, :, span.start - self._base : span.end - self._base]
        if self._worker is None:
            self._run(span, chosen, None)
        else:
            self.wait()
            chosen = chosen.clone()
            ready = torch.cuda.current_stream(chosen.device).record_event() if chosen.is_cuda else None
            self._pending = self._worker.submit(self._run, span, chosen, ready)
        self._latents = self._latents[:, :, span.end - self._base :].clone()
        self._base = span.end

    def wait(self) -> None:
        """Wait for the span decoding in the background, if any; raise its error."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def close(self) -> None:
        """Wait for the last span and stop the worker; on error too, so no thread outlives the stream."""
        try:
            self.wait()
        finally:
            if self._worker is not None:
                self._worker.shutdown()

    def _run(self, span: DecodeSpan, latents: Tensor, ready: torch.cuda.Event | None) -> None:
        """Decode one span and emit its frames, the last span in `tail_pieces`; `ready` (CUDA) marks the
        caller's stream producing latents, and the decode runs on the stream's one side stream (the frames
        the decoder keeps between spans live there)."""
        if ready is not None and self._side is None:
            self._side = torch.cuda.Stream(latents.device)
        final = span.window == self._final
        for piece in tail_pieces(span) if final else (span,):
            began = time.perf_counter()
            with _on_stream(self._side if ready is not None else None, latents, ready):
                frames = self._decode(
                    latents[:, :, piece.start - span.start : piece.end - span.start],
                    frames=(piece.emit_start, piece.emit_end),
                    last=final and piece.end == span.end,
                )
            self.busy += time.perf_counter() - began
            self._emit(frames)


@contextmanager
def _on_stream(
    stream: torch.cuda.Stream | None, latents: Tensor, ready: torch.cuda.Event | None
) -> Iterator[None]:
    """Run the block on `stream` once it has waited for `ready` (keeping `latents`' memory from reuse until
    its work is done), or as it is (None: CPU, or decoding inline)."""
    if stream is None:
        yield
        return
    stream.wait_event(ready)
    latents.record_stream(stream)
    with torch.cuda.stream(stream):
        yield
