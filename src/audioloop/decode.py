"""Streaming decode: which latents to decode after each window, and the stream that does it (DESIGN §5).

The song's latents form one timeline: window i's latent k is timeline latent i·new_lat + k, and output frame f
belongs to timeline latent (f + 7)//8 (latent 0 is the causal single frame). The 2.3 decoder is not causal, so
a frame decodes exactly as in a whole-song decode only with enough latents on both sides of it. After window i
the stream decodes the span [first unemitted latent − margin, window i's last latent] and emits frames up to
`margin` latents before the span's end; the last window emits everything up to the song's last frame. A span
decoded from timeline latent a maps decoded frame d to output frame 8a + d (its first latent decodes as a
single frame, which lands on the last frame of that latent's eight).

Margin: the 2.3 decoder (conv_in, a 2-resnet mid block, up blocks of 2/4/6/4 resnets with ×2, ×2, ×2 time
upsampling, conv_out; every conv has 3 taps in time) reaches ±14 latents, but its influence decays fast.
Measured on the full-size architecture (random weights, 32×32 px), the largest error of a frame decoded from
a span against the whole-sequence decode, in uint8 levels: margin 4 → 15.3, 6 → 2.2, 8 → 0.17, 10 → 0. At 8
latents the cut is below half a uint8 level, i.e. invisible after rounding; the span grows by 16 latents
(72 instead of 63 at the default geometry, ~14% more decode time). The margin shrinks only where a short
window could not otherwise keep a decode span plus the writer's queue within two windows of frames.
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

DECODE_MARGIN = 8


@dataclass(frozen=True)
class DecodeSpan:
    """After window `window`: decode timeline latents [start, end), emit frames [emit_start, emit_end)."""

    window: int
    start: int
    end: int
    emit_start: int
    emit_end: int

    @property
    def frames(self) -> int:
        """Pixel frames the decoder returns for this span."""
        return decoded_frames(self.end - self.start)

    @property
    def offset(self) -> int:
        """Index of output frame emit_start within the decoded frames."""
        return self.emit_start - TEMPORAL * self.start

    @property
    def kept(self) -> tuple[int, int]:
        """The decoded frames [start, stop) that the span emits."""
        return self.offset, self.offset + self.emit_end - self.emit_start


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


def decode_spans(plan: Plan, margin: int, min_new: int = 1) -> tuple[DecodeSpan, ...]:
    """The decode after each window that has at least `min_new` new frames ready (the last window: any):
    every output frame emitted exactly once, in order, each with `margin` latents of context on both sides
    except at the start and end of the video. A larger `min_new` decodes less often, in longer spans, so
    the margins cost less (the upscale's short tiles)."""
    if margin < 1:
        raise ValueError(f"the decode margin must be at least 1 latent, got {margin}")
    ends = window_ends(plan)
    spans: list[DecodeSpan] = []
    emitted = 0
    for index, end in enumerate(ends):
        last = index == len(ends) - 1
        ready = plan.total_frames if last else min(plan.total_frames, first_frame(max(0, end - margin)))
        if ready <= emitted or (not last and ready - emitted < min_new):
            continue
        start = max(0, latent_of(emitted) - margin)
        spans.append(DecodeSpan(index, start, end, emitted, ready))
        emitted = ready
    return tuple(spans)


def frame_budget(plan: Plan) -> int:
    """Two windows' worth of decoded frames: the most a render may hold (decode span plus writer queue)."""
    return 2 * max(w.px_frames for w in plan.windows)


def decode_margin(plan: Plan) -> int:
    """DECODE_MARGIN, or the largest smaller margin whose biggest decode span stays under frame_budget."""
    for margin in range(DECODE_MARGIN, 1, -1):
        if max(s.frames for s in decode_spans(plan, margin)) < frame_budget(plan):
            return margin
    return 1


def queue_limit(plan: Plan, spans: tuple[DecodeSpan, ...]) -> int:
    """The writer's max_queued_frames: whatever the largest decode span leaves of frame_budget."""
    return frame_budget(plan) - max(s.frames for s in spans)


class LatentStream:
    """Collects each final window's latents on the timeline, decodes its span and hands the frames on.

    Only the latents a later span still needs are kept, so memory does not grow with the song's length.
    `decode(latents, frames=(start, stop))` maps latents [1, C, L, h, w] to those of their 8(L−1)+1 decoded
    frames that the span emits (so a decoder may skip the rest), in the layout `emit` takes; `emit`
    receives them.
    With `background`, each span decodes and emits on a worker thread (on CUDA, on a side stream) while the
    caller samples the next window; one span at a time, so at most one span's frames exist beside the
    writer's queue. `busy` is the seconds spent decoding, wherever it ran.
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
        self._decode = decode
        self._emit = emit
        self._latents: Tensor | None = None
        self._base = 0
        self._end = 0
        self._worker = ThreadPoolExecutor(1, thread_name_prefix="decode") if background else None
        self._pending: Future[None] | None = None
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
        later = [s.start for s in self._spans.values() if s.window > index]
        if later:
            keep = min(later)
            self._latents = self._latents[:, :, keep - self._base :].clone()
            self._base = keep

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
        """Decode one span and emit its frames; `ready` (CUDA) marks the caller's stream producing latents."""
        began = time.perf_counter()
        with _side_stream(latents, ready):
            frames = self._decode(latents, frames=span.kept)
        self.busy += time.perf_counter() - began
        self._emit(frames)


@contextmanager
def _side_stream(latents: Tensor, ready: torch.cuda.Event | None) -> Iterator[None]:
    """Run the block on a fresh CUDA stream that first waits for `ready` (and keeps `latents`' memory from
    reuse until its work is done), or as it is (CPU, or decoding inline)."""
    if ready is None:
        yield
        return
    stream = torch.cuda.Stream(latents.device)
    stream.wait_event(ready)
    latents.record_stream(stream)
    with torch.cuda.stream(stream):
        yield
