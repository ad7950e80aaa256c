"""The song loop: load the model and render a prepared job's window chain, decoding and muxing as each window
becomes final (DESIGN §1, §4, §5).

Prompts are encoded before the transformer loads (Gemma is freed first). Window 0 starts from the image;
window i ≥ 1 from window i−1's last ov_lat latents plus the image guide, each with its own song slice, prompt
and seed i, then AdaIN toward window 0. Finished windows go to the work dir; windows already there are reused.
Every window's latents enter a LatentStream, one decode over the song's timeline, that queues frames on the
VideoWriter, whose thread encodes while the next window samples; with background decode (the default on
large CUDA cards) the decode itself runs on a worker thread and a side stream, beside the next window's
sampling. The loop touches files only through the work dir and the writer.

Split over a torchrun job (sequence parallel), every rank walks the same chain inside one `sequence_parallel`
scope and samples the same latents; rank 0 alone encodes the prompts into the cache (the others read it after
a barrier), re-encodes a pixel context (broadcast to the others) and writes the work dir, video and sidecar.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from diffusers import LTX2VideoTransformer3DModel
from torch import Tensor

from audioloop.config import Settings
from audioloop.decode import DecodeSpan, LatentStream, decoded_frames, queue_limit
from audioloop.errors import Interrupted, RenderError, SettingsError
from audioloop.job import Job, audio_slice
from audioloop.media.audio import SourceAudio, log_mel
from audioloop.media.writer import VideoWriter
from audioloop.models import decoder as vae_decoder
from audioloop.models.accel import AccelSettings, accelerate, start_early
from audioloop.models.latents import (
    DECODE_TILE_AREA,
    VideoStream,
    decode_video,
    encode_audio,
    encode_frames,
    encode_image,
)
from audioloop.models.load import Components, load_components
from audioloop.models.text import TextEmbedding, encode_prompts, wait_for_writes
from audioloop.parallel import from_rank0, is_rank0, same_on_every_rank
from audioloop.plan import Plan, Window, audio_tokens
from audioloop.progress import RenderProgress
from audioloop.sampling.adain import adain_frames
from audioloop.sampling.layout import WindowLayout, first_window, next_window
from audioloop.sampling.sequence_parallel import sequence_parallel
from audioloop.sampling.window import SamplerSettings, sample_window
from audioloop.schedule import WindowPrompt
from audioloop.sidecar import sidecar
from audioloop.workdir import WorkDir, cache_dir, finite_latents, write_json

# load: building or loading models (Gemma's load too, though it happens inside text); text: prompt
# encoding (cached on disk); encode: audio, image and pixel-context VAE encodes; decode: the loop waiting on
# the decoder and the writer's queue (in the background, only what sampling did not hide; the sidecar's
# decode_busy is the decoder's own time); mux: the encoder's final flush.
STAGES = ("load", "text", "encode", "sampling", "decode", "mux")
ACCELERATED = "_audioloop_accel"  # set on a transformer once `accelerate` has run on it: (settings, streamer)


class Clock:
    """Wall time per render stage; `current` names the stage in progress (for error messages). A stage
    entered inside another pauses it, so the stages add up to the wall time (loading Gemma counts as load
    even though it happens while encoding text)."""

    def __init__(self, stages: tuple[str, ...] = STAGES) -> None:
        self.seconds = dict.fromkeys(stages, 0.0)
        self.current = "starting"
        self._open: list[str] = []
        self._since = 0.0

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        """Add the block's wall time to `stage` (and not to the stage around it)."""
        outer = self._open[-1] if self._open else stage
        self._charge()
        self._open.append(stage)
        self.current = stage
        try:
            yield
            self.current = outer
        finally:
            self._charge()
            self._open.pop()

    def timed(self, stage: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        """fn, with its wall time added to `stage`."""

        def call(*args: Any) -> Any:
            with self(stage):
                return fn(*args)

        return call

    def _charge(self) -> None:
        """Add the time since the last charge to the innermost open stage."""
        now = time.perf_counter()
        if self._open:
            self.seconds[self._open[-1]] += now - self._since
        self._since = now


@dataclass
class _Chain:
    """What the window loop carries from one window to the next."""

    components: Components
    transformer: LTX2VideoTransformer3DModel | None = None
    image_latent: Tensor | None = None
    texts: dict[str, TextEmbedding] = field(default_factory=dict)
    reference: Tensor | None = None
    previous: Tensor | None = None
    parallel: bool = False
    writes: bool = True


def render(
    job: Job,
    progress: RenderProgress | None = None,
    on_window: Callable[[int], None] | None = None,
    components: Components | None = None,
    parallel: bool = False,
) -> dict[str, Any]:
    """Render a prepared job to its output and sidecar; return the sidecar. `on_window(i)` runs after each
    window is stored and queued. Ctrl-C becomes Interrupted and running out of memory a RenderError, both with
    the finished windows kept in the work dir and no output written.

    `components` already loaded for the job's model, device and dtype are used as they are (a batch loads
    once per process). `parallel` splits every window over the joined torchrun job: only rank 0 writes."""
    progress = progress or RenderProgress()
    clock = Clock()
    began = time.perf_counter()
    try:
        with progress:
            peak, busy = _render(job, progress, clock, on_window, components, parallel)
    except KeyboardInterrupt:
        raise interrupted(job.work, "window") from None
    except torch.OutOfMemoryError:
        plan = job.request.plan
        raise RenderError(
            f"out of GPU memory during {clock.current} at {plan.width}×{plan.height} with "
            f"{plan.win_px}-frame windows; {beside(job.background)}lower --width/--height or --window "
            f"(finished windows are kept in {job.work.path})"
        ) from None
    timings = {**clock.seconds, "decode_busy": busy, "total": time.perf_counter() - began}
    document = sidecar(job, timings, peak)
    if not parallel or is_rank0():
        write_json(job.sidecar, document)
    return document


def _render(
    job: Job,
    progress: RenderProgress,
    clock: Clock,
    on_window: Callable[[int], None] | None,
    components: Components | None,
    parallel: bool,
) -> tuple[int, float]:
    """Load, encode, walk the window chain and close the video; returns the writer's peak queued frames and
    the seconds spent decoding (0 on the ranks that do not write)."""
    request, plan = job.request, job.request.plan
    if parallel and not same_on_every_rank((job.start, job.fingerprints)):
        raise RenderError(
            "the ranks prepared different renders (an input or the work dir changed as they started); rerun"
        )
    start_early(job.accel, job.device, job.dtype)
    progress.status("loading the model")
    with clock("load"):
        components = components or load_components(
            request.settings.model, device=job.device, dtype=job.dtype, transformer_device=home(job.accel)
        )
    state = _Chain(components, parallel=parallel, writes=not parallel or is_rank0())
    if job.start < len(plan.windows):
        progress.status("encoding prompts")
        with clock("text"):
            state.texts = _encode(timed_loads(components, clock), job_prompts(job), parallel)
        with clock("encode"):
            state.image_latent = encode_image(components.video_vae, job.image)
        progress.status("loading the transformer")
        with clock("load"):
            state.transformer = accelerated(components.transformer, job.accel, job.device)
    if state.writes:
        job.work.forget_from(job.start)
    writer = None
    if state.writes:
        writer = open_writer(job.output, plan, job.audio, request.settings, queue_limit(plan, job.spans))
    stream = None
    split = ExitStack()
    try:
        if parallel and state.transformer is not None:
            _enter_split(split, state.transformer)
        if writer is not None:
            with clock("decode"):
                stream = decoder(components, plan, job.spans, writer, job.background)
        for window in plan.windows:
            progress.start_window(window.index, len(plan.windows), sampled=window.index >= job.start)
            latents = _window_latents(job, window, state, progress, clock)
            if stream is not None:
                with clock("decode"):
                    stream.push(window.index, latents)
            if window.index == 0:
                state.reference = latents
            state.previous = latents
            progress.end_window()
            if on_window is not None:
                on_window(window.index)
        if writer is not None:
            finish(stream, writer, clock)
    except BaseException:
        if writer is not None:
            abandon(stream, writer)
        raise
    finally:
        split.close()
    return (0, 0.0) if writer is None else (writer.peak_queued_frames, stream.busy)


def beside(background: bool) -> str:
    """The first fix an out-of-memory message names when the decoder ran beside sampling."""
    return "use --no-background-decode or " if background else ""


def home(settings: AccelSettings | Settings) -> torch.device | None:
    """Where the transformer loads: the CPU to offload or quantise it (`accelerate` moves it a block at a
    time, so a 24 GB card never holds the bf16 model), else None (the components' device)."""
    return torch.device("cpu") if settings.offload or settings.fp8 else None


def accelerated(
    transformer: LTX2VideoTransformer3DModel, settings: AccelSettings, device: torch.device
) -> LTX2VideoTransformer3DModel:
    """The transformer with `settings` applied in place (`accel.accelerate`), once per loaded model: a batch
    reuses its components from row to row, and a later call finds it marked and leaves it as it is."""
    if getattr(transformer, ACCELERATED, None) is None:
        streamer = accelerate(transformer, settings, device)
        setattr(transformer, ACCELERATED, (settings, streamer))
    return transformer


def job_prompts(job: Job) -> list[str]:
    """The prompts a job samples with, sorted: those of its windows from job.start on, and the negative."""
    return sampled_prompts(job.request.prompts, job.start, job.negative)


def sampled_prompts(prompts: Sequence[WindowPrompt], start: int, negative: str | None) -> list[str]:
    """The distinct prompts of the windows (or tiles) from `start` on, and the negative, sorted."""
    texts = {p.prompt for p in prompts[start:]}
    if negative is not None:
        texts.add(negative)
    return sorted(texts)


def timed_loads(components: Components, clock: Clock) -> Components:
    """The components with loading Gemma charged to the load stage (it happens while encoding text)."""
    return replace(components, load_text_encoder=clock.timed("load", components.load_text_encoder))


def _encode(components: Components, prompts: list[str], parallel: bool) -> dict[str, TextEmbedding]:
    """The prompts' embeddings through the disk cache; split over ranks, rank 0 encodes into the cache and
    the others read it after a barrier (Gemma is built once per host, and only rank 0 writes)."""
    if parallel and not is_rank0():
        dist.barrier()
    texts = encode_prompts(components, prompts, cache_dir() / "text")
    if parallel and is_rank0():
        wait_for_writes()
        dist.barrier()
    return texts


def _enter_split(stack: ExitStack, transformer: LTX2VideoTransformer3DModel) -> None:
    """Split every transformer call in the stack's scope over the job's ranks; uneven heads: SettingsError."""
    try:
        stack.enter_context(sequence_parallel(transformer))
    except ValueError as exc:
        raise SettingsError(
            f"--sequence-parallel: {exc}; start a number of processes that divides the attention heads"
        ) from None


def open_writer(
    output: Path, plan: Plan, audio: SourceAudio, settings: Settings, max_queued: int
) -> VideoWriter:
    """The video writer for a plan's frames (render or upscale), at the settings' CRF and preset, its
    encoder thread started."""
    return VideoWriter(
        output,
        width=plan.width,
        height=plan.height,
        fps=plan.fps,
        audio=audio,
        total_frames=plan.total_frames,
        crf=settings.crf,
        preset=settings.preset,
        max_queued_frames=max_queued,
    )


def decoder(
    components: Components,
    plan: Plan,
    spans: tuple[DecodeSpan, ...],
    writer: VideoWriter,
    background: bool,
    tile_area: int = DECODE_TILE_AREA,
) -> LatentStream:
    """The stream that decodes each window's (or tile's) final latents, as the spans say, in spatial tiles of
    at most `tile_area` latents², onto the writer: one stream over the timeline through the fused decoder
    (installed, so the pixel context's decodes are fused too), whose Triton kernels load on the first
    decode, wherever it runs. Frames reach the writer as yuv420p, converted where the decoder runs."""
    vae = components.video_vae
    if not vae_decoder.install(vae.decoder):
        raise SettingsError(
            "the model's video VAE has a decoder audioloop cannot stream (timestep conditioning, noise "
            "injection or residual upsamplers: not LTX-2.3's); give --model an LTX-2.3 model"
        )
    decode = VideoStream(vae, tile_area=tile_area, yuv=True)
    return LatentStream(plan, spans, decode, writer.write_yuv420p, background=background)


def finish(stream: LatentStream, writer: VideoWriter, clock: Clock) -> None:
    """Wait for the last decode (charged to decode) and the encoder's flush (mux); the file appears."""
    with clock("decode"):
        stream.close()
    with clock("mux"):
        writer.close()


def abandon(stream: LatentStream | None, writer: VideoWriter) -> None:
    """After a failure: delete the partial video, then stop the decoder (whose error, if any, is an echo of
    the failure or of the writer's abort, and is dropped)."""
    writer.abort()
    if stream is not None:
        with suppress(Exception):
            stream.close()


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
    if state.writes:
        job.work.save(window.index, latents, job.fingerprints[window.index], info)
    return latents


def _sample(job: Job, window: Window, state: _Chain, progress: RenderProgress, clock: Clock) -> Tensor:
    """Sample a window against its song slice and prompt, AdaIN it toward window 0, refuse NaN/inf."""
    request, plan, settings = job.request, job.request.plan, job.request.settings
    components = state.components
    with clock("encode"):
        audio = window_audio(components, job.waveform, plan, window)
        if window.index == 0:
            layout = first_window(state.image_latent, window.lat_frames, plan.fps)
        else:
            context = _context(components, state.previous, plan.ov_lat, settings.context, state.parallel)
            layout = next_window(context, state.image_latent, window.lat_frames, plan.fps)
    text = state.texts[request.prompts[window.index].prompt]
    negative = state.texts[job.negative] if job.negative is not None else None
    with clock("sampling"):
        latents = sample_with_text(
            state.transformer,
            layout,
            audio,
            text,
            negative,
            window.seed,
            job.sampler,
            progress.step,
            reference=state.reference,
        )
        if window.index:
            latents = adain_frames(
                latents, state.reference, settings.adain, layout.context_frames, settings.adain_per_frame
            )
        refuse_non_finite(latents, window.index, "window", job.work.path)
    return latents


def window_audio(components: Components, waveform: Tensor, plan: Plan, window: Window) -> Tensor:
    """The frozen song tokens of a window (or tile): its exact audio slice → log-mel → audio VAE."""
    mel = log_mel(audio_slice(waveform, plan, window))
    return encode_audio(components.audio_vae, mel, audio_tokens(window.px_frames, plan.fps))


def sample_with_text(
    transformer: LTX2VideoTransformer3DModel,
    layout: WindowLayout,
    audio: Tensor,
    text: TextEmbedding,
    negative: TextEmbedding | None,
    seed: int,
    sampler: SamplerSettings,
    on_step: Callable[[int, int], None],
    reference: Tensor | None = None,
) -> Tensor:
    """sample_window with a prompt's and the negative's embeddings (no negative: no NAG)."""
    return sample_window(
        transformer,
        layout,
        audio,
        text.video[None],
        text.audio[None],
        None if negative is None else negative.video[None],
        None if negative is None else negative.audio[None],
        seed=seed,
        settings=sampler,
        reference=reference,
        on_step=on_step,
    )


def refuse_non_finite(latents: Tensor, index: int, unit: str, work: Path) -> None:
    """Stop with the window (or tile) named when sampling produced NaN or inf; earlier ones stay stored."""
    if not finite_latents(latents):
        kept = f"{finished(index, unit)} kept in {work}" if index else "nothing kept"
        raise RenderError(
            f"{unit} {index}: the sampled latents contain NaN or inf ({kept}); "
            "try --dtype float32, a lower --nag-scale or another --seed"
        )


def _context(
    components: Components, previous: Tensor, ov_lat: int, mode: str, parallel: bool = False
) -> Tensor:
    """Window i's frozen context: window i−1's last ov_lat latents, or (pixel) those frames re-encoded; split
    over ranks, rank 0 re-encodes and sends them, so every rank holds the same context."""
    if mode == "latent":
        return previous[:, :, -ov_lat:]

    def reencode() -> Tensor:
        decoded = decoded_frames(previous.shape[2])
        frames = decode_video(
            components.video_vae, previous, frames=(decoded - decoded_frames(ov_lat), decoded)
        )
        return encode_frames(components.video_vae, frames).to(previous)

    return from_rank0(reencode, like=previous[:, :, -ov_lat:]) if parallel else reencode()


def finished(count: int, unit: str = "window") -> str:
    """'window 0 is' or 'windows 0–N are': the first `count` windows (or tiles), for messages."""
    return f"{unit} 0 is" if count == 1 else f"{unit}s 0–{count - 1} are"


def interrupted(work: WorkDir, unit: str) -> Interrupted:
    """The error for Ctrl-C: which windows (or tiles) the work dir kept, and how to resume."""
    kept = work.stored()
    saved = f"{finished(kept, unit)} saved in {work.path}" if kept else f"no {unit} was finished"
    return Interrupted(f"interrupted: {saved}; no video was written. Run the same command again to resume.")
