"""An upscale job: the finished render it starts from, read and checked, and every tile's geometry, prompt,
fingerprint and the resume point decided, before any model is touched (like `job.prepare` for a render).

The render is found through its sidecar `<output>.json` (or its work dir `<output>.work/`, next to which the
sidecar lies): the sidecar gives its settings, plan, per-window prompts and fingerprints, and every window
it lists must still be in the work dir with that fingerprint — the upscale reads those latents, never the
render's video.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from audioloop.config import Settings
from audioloop.decode import DecodeSpan, decode_spans
from audioloop.errors import InputError, SettingsError
from audioloop.job import (
    DTYPES,
    accel_settings,
    audio_slice,
    background_decode,
    check_disk,
    disk_needed,
    fp8_print,
    latent_shapes,
    model_revision,
    output_path,
    resolve_device,
    sampler_settings,
)
from audioloop.media.audio import SourceAudio, load_waveform, read_source_audio
from audioloop.models.accel import AccelSettings
from audioloop.models.latents import DECODE_TILE_AREA
from audioloop.models.load import upsampler_revision
from audioloop.plan import SPATIAL, TOKEN_WARN, Plan, Window
from audioloop.sampling.sampler import check_sigmas
from audioloop.sampling.window import SamplerSettings
from audioloop.schedule import WindowPrompt
from audioloop.tiles import (
    SCALE,
    default_tile_latents,
    overlap_latents,
    tile_latents,
    tile_plan,
    tile_prompts,
    tile_tokens,
    timeline_latents,
    upsample_range,
    window_of,
)
from audioloop.workdir import MANIFEST, WorkDir, chain, file_hash, resume_start, tensor_hash

# Stage-2 sigma lists: the field report's refinement, and diffusers' / Lightricks' distilled stage 2
# (STAGE_2_DISTILLED_SIGMA_VALUES, the list the distilled model's two-stage pipelines use).
REFINE_SIGMAS = {
    "seed": (0.85, 0.725, 0.4219, 0.0),
    "distilled": (0.909375, 0.725, 0.421875, 0.0),
}
DEFAULT_SIGMAS = "distilled"
DEFAULT_OVERLAP_S = 1.0
SOURCE_HINT = "pass a finished render's work dir or its <output>.json sidecar"


@dataclass(frozen=True)
class Render:
    """A finished render as its sidecar and work dir describe it: what an upscale starts from."""

    sidecar: Path
    output: Path
    work: WorkDir
    song: Path
    settings: Settings
    plan: Plan
    prompts: tuple[WindowPrompt, ...]
    negative: str | None
    fingerprints: tuple[str, ...]


@dataclass(frozen=True)
class UpscaleRequest:
    """What the user asked for; None means "as the render had it" (seed, model, device, dtype, compile,
    attention) or the default (tile: the longest within ~32k tokens). FP8, offload and background decode
    are the upscale's own, off unless asked for: at twice the render's size a decode beside the
    refinement hides little of itself and takes the peak past 60 GiB (bench/RESULTS.md)."""

    source: Path
    output: Path | None = None
    tile: float | None = None
    tile_overlap: float = DEFAULT_OVERLAP_S
    sigmas: str = DEFAULT_SIGMAS
    seed: int | None = None
    model: str | None = None
    device: str | None = None
    dtype: str | None = None
    work_dir: Path | None = None
    resume: bool = True
    compile: bool | None = None
    attention: str | None = None
    fp8: bool = False
    offload: bool = False
    background_decode: bool = False


@dataclass(frozen=True)
class UpscaleJob:
    """A checked upscale: the render read, tiles planned, fingerprints chained, resume point decided."""

    request: UpscaleRequest
    render: Render
    output: Path
    sidecar: Path
    work: WorkDir
    waveform: Tensor
    audio: SourceAudio
    tiles: Plan
    prompts: tuple[WindowPrompt, ...]
    negative: str | None
    sampler: SamplerSettings
    model: str
    revision: str
    upsampler_revision: str
    device: torch.device
    dtype: torch.dtype
    accel: AccelSettings
    background: bool
    fingerprints: tuple[str, ...]
    start: int
    spans: tuple[DecodeSpan, ...]
    warnings: tuple[str, ...]


def weights_leave_room(accel: AccelSettings) -> bool:
    """Whether the transformer's weights leave the decode room on the GPU: FP8 (half the bytes) or offload
    (streamed), not bf16 resident (35 GiB at full size)."""
    return bool(accel.fp8 or accel.offload)


def decode_tile_area(accel: AccelSettings) -> int:
    """Latents² per spatial decode tile: the render's where the weights leave room; 20 × 32 beside resident
    bf16 weights, so 1664×960 decodes in three 640-px columns (7% more decoding than two 896-px ones), whose
    decoder activations took the bf16 peak to 62.1 GiB."""
    return DECODE_TILE_AREA if weights_leave_room(accel) else 20 * 32


def refine_sigmas(text: str) -> tuple[float, ...]:
    """`seed`, `distilled` or a comma-separated list → the refinement sigmas, else a SettingsError."""
    if text in REFINE_SIGMAS:
        return REFINE_SIGMAS[text]
    hint = f"use {', '.join(REFINE_SIGMAS)} or a list like 0.85,0.725,0.4219,0"
    try:
        sigmas = tuple(float(x) for x in text.replace(" ", "").split(",") if x)
        check_sigmas(sigmas)
    except ValueError as exc:
        reason = str(exc) if "sigma" in str(exc) else "not a name or a list of numbers"
        raise SettingsError(f"--sigmas {text}: {reason}; {hint}") from None
    return sigmas


def find_sidecar(path: Path) -> Path:
    """The render sidecar: `path` itself, or `<output>.json` next to a work dir `<output>.work/`."""
    if path.is_file():
        return path
    if not path.is_dir():
        raise InputError(f"{path}: not found; {SOURCE_HINT}")
    if not (path / MANIFEST).is_file():
        raise InputError(f"{path}: not a render work dir (it has no {MANIFEST}); {SOURCE_HINT}")
    if path.suffix != ".work":
        raise InputError(
            f"{path}: this work dir's name does not end in .work, so its render's sidecar cannot be found; "
            "pass the render's <output>.json sidecar"
        )
    sidecar = path.with_name(f"{path.stem}.json")
    if not sidecar.is_file():
        raise InputError(
            f"{path}: the render has not finished ({sidecar.name} is missing next to its work dir); run its "
            "`audioloop render` command again to finish it (it resumes), then upscale"
        )
    return sidecar


def _plan(data: dict[str, Any]) -> Plan:
    """A Plan from its sidecar form (`Plan.to_dict`)."""
    names = {f.name for f in fields(Plan)} - {"windows", "warnings"}
    windows = tuple(Window(**{f.name: w[f.name] for f in fields(Window)}) for w in data["windows"])
    return Plan(**{n: data[n] for n in names}, windows=windows, warnings=tuple(data["warnings"]))


def _settings(data: dict[str, Any]) -> Settings:
    """Settings from their sidecar form; keys this version does not know are ignored."""
    known = {f.name for f in fields(Settings)}
    return Settings(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k in known})


def read_render(path: Path) -> Render:
    """The finished render at `path` (its sidecar or work dir), with every window it lists present in the
    work dir under the sidecar's fingerprint; anything else is an InputError saying what to pass or do."""
    sidecar = find_sidecar(path)
    try:
        data = json.loads(sidecar.read_text())
        song, windows = data["inputs"]["song"], data["windows"]
        plan, settings = _plan(data["plan"]), _settings(data["settings"])
        prompts = tuple(WindowPrompt(w["index"], w["schedule_entry"], w["prompt"]) for w in windows)
        prints = tuple(w["fingerprint"] for w in windows)
        work_path = path if path.is_dir() else Path(data["work_dir"])
        output, negative = Path(data["output"]), data["negative"]
        song_path, song_hash = Path(song["path"]), song["sha256"]
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError):
        raise InputError(f"{sidecar}: not an audioloop render sidecar; {SOURCE_HINT}") from None
    if not work_path.is_dir():
        raise InputError(
            f"{work_path}: the render's work dir is gone, and the upscale starts from its window latents; "
            "render again (same command) to rebuild it"
        )
    work = WorkDir(work_path)
    for window, expected, shape in zip(plan.windows, prints, latent_shapes(plan), strict=True):
        if not work.valid(window.index, expected, shape):
            raise InputError(
                f"{work_path}: window {window.index} is missing or differs from {sidecar.name} (the render "
                "was interrupted or re-run since); finish the render with its `audioloop render` command, "
                "then upscale"
            )
    if not song_path.is_file() or file_hash(song_path) != song_hash:
        raise InputError(
            f"{song_path}: the render's song is missing or changed since the render; the upscale refines "
            "against and muxes the song the render used: put it back"
        )
    return Render(sidecar, output, work, song_path, settings, plan, prompts, negative, prints)


def tile_inputs(
    render: Render,
    tiles: Plan,
    tile: Window,
    prompt: str,
    waveform: Tensor,
    sigmas: tuple[float, ...],
    model: tuple[str, ...],
) -> dict[str, Any]:
    """Everything that shapes one tile's refined latents, for its fingerprint (the previous tile is chained
    on): its place; the render latents it upsamples, named by the fingerprint of the render window that made
    the last of them (which chains every earlier window); its audio slice, prompt, sampling; the model
    revision, the upsampler's, the dtype and FP8's recipe when on (`fp8_print`)."""
    lo, hi = upsample_range(tiles, tile, timeline_latents(render.plan))
    settings = render.settings
    return {
        "tile": [tile.index, tile.start_px, tile.lat_frames, tiles.ov_lat if tile.index else 0, tile.seed],
        "frame": [tiles.width, tiles.height, tiles.fps],
        "upsample": [lo, hi, render.fingerprints[window_of(render.plan, hi - 1)]],
        "audio": tensor_hash(audio_slice(waveform, tiles, tile)),
        "prompt": prompt,
        "negative": render.negative,
        "sigmas": list(sigmas),
        "nag": [settings.nag_scale, settings.nag_alpha, settings.nag_tau] if settings.nag else None,
        "model": list(model),
    }


def prepare_upscale(request: UpscaleRequest) -> UpscaleJob:
    """Read and check the render, plan the tiles, chain their fingerprints and decide where to resume;
    never touches a model."""
    sigmas = refine_sigmas(request.sigmas)
    render = read_render(request.source)
    settings = render.settings
    dtype_name = request.dtype or settings.dtype
    if dtype_name not in DTYPES:
        raise SettingsError(f"--dtype {dtype_name}: use one of {', '.join(DTYPES)}")
    device = resolve_device(request.device or settings.device)
    accel = accel_settings(
        settings.compile if request.compile is None else request.compile,
        request.attention or settings.attention,
        request.fp8,
        request.offload,
        device,
    )
    model = request.model or settings.model
    seed = settings.seed if request.seed is None else request.seed
    plan = render.plan
    cells = (SCALE * plan.width // SPATIAL) * (SCALE * plan.height // SPATIAL)
    if request.tile is None:
        tile_lat = default_tile_latents(cells, plan.fps, plan.win_lat)
    else:
        tile_lat = tile_latents(request.tile, plan.fps)
    tiles = tile_plan(plan, tile_lat, overlap_latents(request.tile_overlap, plan.fps, tile_lat), seed)
    default = render.output.with_name(f"{render.output.stem}.2x{render.output.suffix}")
    output = output_path(default, request.output or default, (render.song, render.output, render.sidecar))
    sampler = sampler_settings(replace(settings, sigmas=sigmas, per_step_adain=()))
    waveform = load_waveform(render.song, plan.start, plan.duration)
    audio = read_source_audio(render.song, plan.start, plan.duration)
    prompts = tile_prompts(plan, render.prompts, tiles)
    revisions = (model_revision(model), upsampler_revision(model), dtype_name)
    model_print = (*revisions, *fp8_print(request.fp8))
    inputs = [
        tile_inputs(render, tiles, tile, prompt.prompt, waveform, sigmas, model_print)
        for tile, prompt in zip(tiles.windows, prompts, strict=True)
    ]
    prints = chain(inputs)
    work = WorkDir(request.work_dir or output.with_name(f"{output.name}.work"))
    shapes = latent_shapes(tiles)
    start = resume_start(
        [work.valid(t.index, prints[t.index], shapes[t.index]) for t in tiles.windows], request.resume
    )
    check_disk(output, work.path, *disk_needed(tiles, audio))
    warnings = []
    tokens = tile_tokens(cells, tile_lat, plan.fps)
    if tokens > TOKEN_WARN:
        warnings.append(
            f"{tile_lat}-latent tiles at {tiles.width}×{tiles.height} are {tokens:,} tokens each, over "
            f"~{TOKEN_WARN:,}: it costs GPU memory and time; shorten --tile"
        )
    return UpscaleJob(
        request=request,
        render=render,
        output=output,
        sidecar=output.with_name(f"{output.name}.json"),
        work=work,
        waveform=waveform,
        audio=audio,
        tiles=tiles,
        prompts=prompts,
        negative=render.negative,
        sampler=sampler,
        model=model,
        revision=revisions[0],
        upsampler_revision=revisions[1],
        device=device,
        dtype=DTYPES[dtype_name],
        accel=accel,
        background=background_decode(request.background_decode, device, request.offload),
        fingerprints=tuple(prints),
        start=start,
        spans=decode_spans(tiles),
        warnings=tuple(warnings),
    )
