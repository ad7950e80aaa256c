"""Stage 2: a finished render, 2× in width and height, refined in latent space tile by tile (issue 5).

The render's window latents are assembled into its latent timeline (window 0's latents, then each later
window's new ones). Each tile upsamples its stretch of that timeline ×2 with LTX-2.3's latent upsampler
(denormalise → upsampler → renormalise, as diffusers' LTX2LatentUpsamplePipeline does), noises it to σ0 —
σ0·noise + (1−σ0)·clean — and denoises it with the refinement sigmas against its frozen song slice, the
prompt the render used there, and NAG as in the render. Tile t ≥ 1 freezes its first ov_lat latents to tile
t−1's refined last latents, so the tiles continue each other as the render's windows do. There is no image
guide and no AdaIN: stage 2 refines what the render made, it does not steer it.

The upsampler runs per tile, on the tile's latents plus a margin, not on the whole song at once: its
GroupNorm takes statistics over its whole input, so a per-tile input stays near the clip lengths it was
trained on, memory stays bounded whatever the song's length, and a resumed run upsamples exactly what the
uninterrupted one did.

Decoding and muxing are the render's: each finished tile enters a LatentStream (one decode span per tile)
whose frames stream into a VideoWriter with the song's own samples. Tiles go to a work dir with chained
fingerprints, so an interrupted upscale resumes at the first missing tile.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from diffusers import AutoencoderKLLTX2Video, LTX2VideoTransformer3DModel
from diffusers.pipelines.ltx2.latent_upsampler import LTX2LatentUpsamplerModel
from torch import Tensor

from audioloop.decode import queue_limit
from audioloop.errors import RenderError
from audioloop.models.accel import start_early
from audioloop.models.latents import denormalize_video, normalize_video
from audioloop.models.load import Components, load_components, load_latent_upsampler
from audioloop.models.text import TextEmbedding, encode_prompts
from audioloop.plan import Window
from audioloop.progress import RenderProgress
from audioloop.render import (
    Clock,
    abandon,
    accelerated,
    beside,
    decoder,
    finish,
    home,
    interrupted,
    open_writer,
    refuse_non_finite,
    sample_with_text,
    sampled_prompts,
    timed_loads,
    window_audio,
)
from audioloop.sampling.layout import refine_window
from audioloop.sidecar import accel_table, decode_table, versions, window_table
from audioloop.tiles import refined_range, timeline_latents, upsample_range
from audioloop.upscale_job import REFINE_SIGMAS, Render, UpscaleJob, decode_tile_area
from audioloop.workdir import cache_dir, write_json

# load: models and the render's latents; text: prompt encoding (cached); upsample: the latent upsampler;
# encode: the tiles' audio; refine: sampling; decode and mux as in the render.
STAGES = ("load", "text", "upsample", "encode", "refine", "decode", "mux")


@dataclass
class _Tiles:
    """What the tile loop carries from one tile to the next."""

    components: Components
    transformer: LTX2VideoTransformer3DModel | None = None
    upsampler: LTX2LatentUpsamplerModel | None = None
    timeline: Tensor | None = None
    texts: dict[str, TextEmbedding] = field(default_factory=dict)
    previous: Tensor | None = None


def render_timeline(render: Render) -> Tensor:
    """The render's latent timeline [1, C, T, h, w] on the CPU: window 0's latents, then each later window's
    new ones (its first ov_lat equal the previous window's last, bit for bit)."""
    windows = [render.work.load(w.index) for w in render.plan.windows]
    if any(w is None for w in windows):
        raise RenderError(f"{render.work.path}: a render window vanished during the upscale; rerun")
    ov = render.plan.ov_lat
    return torch.cat([windows[0], *(w[:, :, ov:] for w in windows[1:])], dim=2)


def queue_frames(job: UpscaleJob) -> int:
    """The writer's queue: two tiles' new frames (two decode spans'), so encoding overlaps the next
    tiles' refinement (the render's rule, two windows of frames for span and queue together, leaves less
    than one tile's output at twice the size); at most one decode span plus this many are ever held."""
    return max(queue_limit(job.tiles, job.spans), 2 * job.tiles.stride_px)


def upsample(upsampler: LTX2LatentUpsamplerModel, vae: AutoencoderKLLTX2Video, latents: Tensor) -> Tensor:
    """Normalised latents [1, C, F, h, w] → normalised [1, C, F, 2h, 2w] in float32: denormalised with the
    VAE's statistics for the upsampler, which works on raw VAE latents, and normalised again after."""
    weight = next(upsampler.parameters())
    raw = denormalize_video(latents.to(weight.device, torch.float32), vae).to(weight.dtype)
    with torch.inference_mode():
        larger = upsampler(raw)
    return normalize_video(larger.float(), vae)


def upscale(
    job: UpscaleJob, progress: RenderProgress | None = None, on_tile: Callable[[int], None] | None = None
) -> dict[str, Any]:
    """Upscale a prepared job to its output and sidecar; return the sidecar. `on_tile(t)` runs after each
    tile is stored and queued. Ctrl-C becomes Interrupted and running out of memory a RenderError, both with
    the finished tiles kept in the work dir and no output written."""
    progress = progress or RenderProgress()
    clock = Clock(STAGES)
    began = time.perf_counter()
    try:
        with progress:
            peak, busy = _upscale(job, progress, clock, on_tile)
    except KeyboardInterrupt:
        raise interrupted(job.work, "tile") from None
    except torch.OutOfMemoryError:
        raise RenderError(
            f"out of GPU memory during {clock.current} at {job.tiles.width}×{job.tiles.height} with "
            f"{job.tiles.win_lat}-latent tiles; {beside(job.background)}lower --tile "
            f"(finished tiles are kept in {job.work.path})"
        ) from None
    timings = {**clock.seconds, "decode_busy": busy, "total": time.perf_counter() - began}
    document = upscale_sidecar(job, timings, peak)
    write_json(job.sidecar, document)
    return document


def _upscale(
    job: UpscaleJob, progress: RenderProgress, clock: Clock, on_tile: Callable[[int], None] | None
) -> tuple[int, float]:
    """Load, walk the tiles (each decoded as it is final) and close the video; returns the writer's peak
    queued frames and the seconds spent decoding."""
    tiles = job.tiles
    start_early(job.accel, job.device, job.dtype)
    progress.status("loading the model")
    with clock("load"):
        components = load_components(
            job.model, device=job.device, dtype=job.dtype, transformer_device=home(job.accel)
        )
    state = _Tiles(components)
    if job.start < len(tiles.windows):
        progress.status("encoding prompts")
        with clock("text"):
            prompts = sampled_prompts(job.prompts, job.start, job.negative)
            state.texts = encode_prompts(timed_loads(components, clock), prompts, cache_dir() / "text")
        progress.status("loading the transformer")
        with clock("load"):
            state.timeline = render_timeline(job.render)
            state.upsampler = load_latent_upsampler(job.model, device=job.device, dtype=job.dtype)
            state.transformer = accelerated(components.transformer, job.accel, job.device)
    job.work.forget_from(job.start)
    writer = open_writer(job.output, tiles, job.audio, job.render.settings, queue_frames(job))
    stream = None
    try:
        with clock("decode"):
            area = decode_tile_area(job.accel)
            stream = decoder(components, tiles, job.spans, writer, job.background, area)
        for tile in tiles.windows:
            progress.start_window(tile.index, len(tiles.windows), sampled=tile.index >= job.start)
            latents = _tile_latents(job, tile, state, progress, clock)
            with clock("decode"):
                stream.push(tile.index, latents)
            state.previous = latents
            progress.end_window()
            if on_tile is not None:
                on_tile(tile.index)
        finish(stream, writer, clock)
    except BaseException:
        abandon(stream, writer)
        raise
    return writer.peak_queued_frames, stream.busy


def _tile_latents(
    job: UpscaleJob, tile: Window, state: _Tiles, progress: RenderProgress, clock: Clock
) -> Tensor:
    """Tile `tile`'s refined latents: from the work dir when reused, else refined and stored."""
    if tile.index < job.start:
        latents = job.work.load(tile.index)
        if latents is None:
            raise RenderError(f"tile {tile.index} vanished from {job.work.path} during the upscale; rerun")
        return latents.to(state.components.device)
    latents = _refine(job, tile, state, progress, clock)
    prompt = job.prompts[tile.index]
    lo, hi = upsample_range(job.tiles, tile, timeline_latents(job.render.plan))
    info = {"seed": tile.seed, "schedule_entry": prompt.entry, "prompt": prompt.prompt, "upsampled": [lo, hi]}
    job.work.save(tile.index, latents, job.fingerprints[tile.index], info)
    return latents


def _refine(job: UpscaleJob, tile: Window, state: _Tiles, progress: RenderProgress, clock: Clock) -> Tensor:
    """Upsample a tile's render latents, freeze its context, refine it against its song slice and prompt."""
    tiles, components = job.tiles, state.components
    first, end = refined_range(tiles, tile)
    lo, hi = upsample_range(tiles, tile, state.timeline.shape[2])
    with clock("upsample"):
        fresh = upsample(state.upsampler, components.video_vae, state.timeline[:, :, lo:hi])
        fresh = fresh[:, :, first - lo : end - lo].to(components.device)
    with clock("encode"):
        audio = window_audio(components, job.waveform, tiles, tile)
        context = tile.lat_frames - fresh.shape[2]
        clean = torch.cat([state.previous[:, :, -context:], fresh], dim=2) if context else fresh
        layout = refine_window(clean, context, tiles.fps)
    text = state.texts[job.prompts[tile.index].prompt]
    negative = state.texts[job.negative] if job.negative is not None else None
    with clock("refine"):
        latents = sample_with_text(
            state.transformer, layout, audio, text, negative, tile.seed, job.sampler, progress.step
        )
    refuse_non_finite(latents, tile.index, "tile", job.work.path)
    return latents


def upscale_sidecar(job: UpscaleJob, timings: dict[str, float], peak: int) -> dict[str, Any]:
    """The upscale's sidecar: the render it started from, its settings, model, tiles, decode, timings."""
    request, render, tiles = job.request, job.render, job.tiles
    return {
        "output": str(job.output),
        "work_dir": str(job.work.path),
        "source": {
            "sidecar": str(render.sidecar),
            "output": str(render.output),
            "work_dir": str(render.work.path),
            "fingerprint": render.fingerprints[-1],
            "song": str(render.song),
            "size": [render.plan.width, render.plan.height],
        },
        "settings": {
            "tile": tiles.win_px / tiles.fps,
            "tile_latents": tiles.win_lat,
            "tile_overlap": request.tile_overlap,
            "overlap_latents": tiles.ov_lat,
            "sigmas_name": request.sigmas if request.sigmas in REFINE_SIGMAS else None,
            "sigmas": list(job.sampler.sigmas),
            "seed": tiles.windows[0].seed,
            "nag": [job.sampler.nag.scale, job.sampler.nag.alpha, job.sampler.nag.tau]
            if job.sampler.nag
            else None,
            "crf": render.settings.crf,
            "preset": render.settings.preset,
            "fp8": request.fp8,
            "offload": request.offload,
        },
        "negative": job.negative,
        "model": {
            "id": job.model,
            "revision": job.revision,
            "upsampler_revision": job.upsampler_revision,
            "dtype": str(job.dtype).removeprefix("torch."),
            "device": str(job.device),
            "accel": accel_table(job.accel),
        },
        "plan": tiles.to_dict(),
        "tiles": window_table(tiles, job.prompts, job.fingerprints, job.start),
        "resumed_from": job.start,
        "decode": decode_table(job.spans, queue_frames(job), peak, job.background),
        "timings": timings,
        "versions": versions(),
    }
