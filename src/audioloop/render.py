"""The song loop: load the model and render a prepared job's window chain, decoding and muxing as each window
becomes final (DESIGN §1, §4, §5).

Prompts are encoded before the transformer loads (Gemma is freed first). Window 0 starts from the image;
window i ≥ 1 from window i−1's last ov_lat latents plus the image guide, each with its own song slice, prompt
and seed i, then AdaIN toward window 0. Finished windows go to the work dir; windows already there are reused.
Every window's latents enter a LatentStream that decodes with margin and queues frames on the VideoWriter,
whose thread encodes while the next window samples. The loop touches files only through the work dir and the
writer.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
from diffusers import LTX2VideoTransformer3DModel
from torch import Tensor

from audioloop.decode import LatentStream, queue_limit
from audioloop.errors import Interrupted, RenderError
from audioloop.job import Job, audio_slice
from audioloop.media.audio import log_mel
from audioloop.media.writer import VideoWriter
from audioloop.models.latents import decode_video, encode_audio, encode_frames, encode_image
from audioloop.models.load import Components, load_components
from audioloop.models.text import TextEmbedding, encode_prompts
from audioloop.plan import TEMPORAL, Window, audio_tokens
from audioloop.progress import RenderProgress
from audioloop.sampling.adain import adain_frames
from audioloop.sampling.layout import first_window, next_window
from audioloop.sampling.window import sample_window
from audioloop.sidecar import sidecar
from audioloop.workdir import cache_dir, finite_latents, write_json

# load: building or loading models; text: prompt encoding (cached on disk); encode: audio, image and
# pixel-context VAE encodes; mux: time the loop waits on the writer (whose thread encodes in parallel) and its
# final flush.
STAGES = ("load", "text", "encode", "sampling", "decode", "mux")


class Clock:
    """Wall time per render stage; `current` names the stage in progress (for error messages)."""

    def __init__(self) -> None:
        self.seconds = dict.fromkeys(STAGES, 0.0)
        self.current = "starting"

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        """Add the block's wall time to `stage`."""
        self.current = stage
        began = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] += time.perf_counter() - began

    def timed(self, stage: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        """fn, with its wall time added to `stage`."""

        def call(*args: Any) -> Any:
            with self(stage):
                return fn(*args)

        return call


@dataclass
class _Chain:
    """What the window loop carries from one window to the next."""

    components: Components
    transformer: LTX2VideoTransformer3DModel | None = None
    image_latent: Tensor | None = None
    texts: dict[str, TextEmbedding] = field(default_factory=dict)
    reference: Tensor | None = None
    previous: Tensor | None = None


def render(
    job: Job, progress: RenderProgress | None = None, on_window: Callable[[int], None] | None = None
) -> dict[str, Any]:
    """Render a prepared job to its output and sidecar; return the sidecar. `on_window(i)` runs after each
    window is stored and queued. Ctrl-C becomes Interrupted and running out of memory a RenderError, both with
    the finished windows kept in the work dir and no output written."""
    progress = progress or RenderProgress()
    clock = Clock()
    began = time.perf_counter()
    try:
        with progress:
            peak = _render(job, progress, clock, on_window)
    except KeyboardInterrupt:
        raise Interrupted(_interrupted_message(job)) from None
    except torch.OutOfMemoryError:
        plan = job.request.plan
        raise RenderError(
            f"out of GPU memory during {clock.current} at {plan.width}×{plan.height} with "
            f"{plan.win_px}-frame windows; lower --width/--height or --window "
            f"(finished windows are kept in {job.work.path})"
        ) from None
    document = sidecar(job, {**clock.seconds, "total": time.perf_counter() - began}, peak)
    write_json(job.sidecar, document)
    return document


def _render(job: Job, progress: RenderProgress, clock: Clock, on_window: Callable[[int], None] | None) -> int:
    """Load, encode, walk the window chain and close the video; returns the writer's peak queued frames."""
    request, plan = job.request, job.request.plan
    progress.status("loading the model")
    with clock("load"):
        components = load_components(request.settings.model, device=job.device, dtype=job.dtype)
    state = _Chain(components)
    if job.start < len(plan.windows):
        progress.status("encoding prompts")
        with clock("text"):
            prompts = {p.prompt for p in request.prompts[job.start :]}
            prompts |= {job.negative} if job.negative is not None else set()
            state.texts = encode_prompts(components, sorted(prompts), cache_dir() / "text")
        with clock("encode"):
            state.image_latent = encode_image(components.video_vae, job.image)
        progress.status("loading the transformer")
        with clock("load"):
            state.transformer = components.transformer
    job.work.forget_from(job.start)
    writer = VideoWriter(
        job.output,
        width=plan.width,
        height=plan.height,
        fps=plan.fps,
        audio=job.audio,
        total_frames=plan.total_frames,
        crf=request.settings.crf,
        preset=request.settings.preset,
        max_queued_frames=queue_limit(plan, job.spans),
    )
    try:
        stream = LatentStream(
            plan,
            job.spans,
            decode=clock.timed("decode", partial(decode_video, components.video_vae)),
            emit=clock.timed("mux", writer.write),
        )
        for window in plan.windows:
            progress.start_window(window.index, len(plan.windows), sampled=window.index >= job.start)
            latents = _window_latents(job, window, state, progress, clock)
            stream.push(window.index, latents)
            if window.index == 0:
                state.reference = latents
            state.previous = latents
            progress.end_window()
            if on_window is not None:
                on_window(window.index)
        with clock("mux"):
            writer.close()
    except BaseException:
        writer.abort()
        raise
    return writer.peak_queued_frames


def _window_latents(
    job: Job, window: Window, state: _Chain, progress: RenderProgress, clock: Clock
) -> Tensor:
    """Window `window`'s final latents: from the work dir when reused, else sampled and stored."""
    device = state.components.device
    if window.index < job.start:
        latents = job.work.load(window.index)
        if latents is None:
            raise RenderError(f"window {window.index} vanished from {job.work.path} during the render; rerun")
        return latents.to(device)
    latents = _sample(job, window, state, progress, clock)
    prompt = job.request.prompts[window.index]
    info = {"seed": window.seed, "schedule_entry": prompt.entry, "prompt": prompt.prompt}
    job.work.save(window.index, latents, job.fingerprints[window.index], info)
    return latents


def _sample(job: Job, window: Window, state: _Chain, progress: RenderProgress, clock: Clock) -> Tensor:
    """Sample a window against its song slice and prompt, AdaIN it toward window 0, refuse NaN/inf."""
    request, plan, settings = job.request, job.request.plan, job.request.settings
    components = state.components
    with clock("encode"):
        mel = log_mel(audio_slice(job.waveform, plan, window))
        audio = encode_audio(components.audio_vae, mel, audio_tokens(window.px_frames, plan.fps))
        if window.index == 0:
            layout = first_window(state.image_latent, window.lat_frames, plan.fps)
        else:
            context = _context(components, state.previous, plan.ov_lat, settings.context)
            layout = next_window(context, state.image_latent, window.lat_frames, plan.fps)
    text = state.texts[request.prompts[window.index].prompt]
    negative = state.texts[job.negative] if job.negative is not None else None
    with clock("sampling"):
        latents = sample_window(
            state.transformer,
            layout,
            audio,
            text.video[None],
            text.audio[None],
            None if negative is None else negative.video[None],
            None if negative is None else negative.audio[None],
            seed=window.seed,
            settings=job.sampler,
            reference=state.reference,
            on_step=progress.step,
        )
        if window.index:
            latents = adain_frames(
                latents, state.reference, settings.adain, layout.context_frames, settings.adain_per_frame
            )
        if not finite_latents(latents):
            kept = f"{finished(window.index)} kept in {job.work.path}" if window.index else "nothing kept"
            raise RenderError(
                f"window {window.index}: the sampled latents contain NaN or inf ({kept}); "
                "try --dtype float32, a lower --nag-scale or another --seed"
            )
    return latents


def _context(components: Components, previous: Tensor, ov_lat: int, mode: str) -> Tensor:
    """Window i's frozen context: window i−1's last ov_lat latents, or (pixel) those frames re-encoded."""
    if mode == "latent":
        return previous[:, :, -ov_lat:]
    frames = decode_video(components.video_vae, previous)
    return encode_frames(components.video_vae, frames[-(TEMPORAL * (ov_lat - 1) + 1) :]).to(previous)


def finished(count: int) -> str:
    """'window 0 is' or 'windows 0–N are': the first `count` windows, for messages."""
    return "window 0 is" if count == 1 else f"windows 0–{count - 1} are"


def _interrupted_message(job: Job) -> str:
    """Which windows an interrupted render kept, and how to resume."""
    kept = job.work.stored()
    saved = f"{finished(kept)} saved in {job.work.path}" if kept else "no window was finished"
    return f"interrupted: {saved}; no video was written. Run the same command again to resume."
