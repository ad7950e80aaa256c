"""A render job: every input and setting checked and loaded, the resume point and decode plan decided, before
any model is touched (DESIGN §1: every input problem surfaces before the model loads).

`prepare` turns a RenderRequest (parsed schedule, plan, resolved settings) into a Job: the preprocessed image,
the song's 16 kHz waveform and original samples, each window's fingerprint, where to resume, the decode spans,
and a check that the disk can hold the result.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from audioloop.config import Settings
from audioloop.decode import DecodeSpan, decode_spans
from audioloop.errors import InputError, SettingsError
from audioloop.media.audio import SourceAudio, load_waveform, read_source_audio, slice_window
from audioloop.media.image import load_image
from audioloop.media.writer import CONTAINER_FORMATS
from audioloop.models.accel import DEFAULT_FP8, AccelSettings, check_attention, check_modes
from audioloop.models.load import check_layout, fingerprint, resolve_model_dir
from audioloop.models.tiny import REVISION as TINY_REVISION
from audioloop.plan import SPATIAL, Plan, Window
from audioloop.request import RenderRequest
from audioloop.sampling.nag import NagSettings
from audioloop.sampling.window import SamplerSettings
from audioloop.workdir import (
    WorkDir,
    chain,
    file_hash,
    only_windows_start,
    parse_windows,
    resume_start,
    tensor_hash,
)

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
VIDEO_BITS_PER_PIXEL = 1.0  # H.264 at CRF 18 spends ~0.1–0.3 bits per pixel on video; 1 leaves room for grain
LATENT_CHANNELS = 128  # LTX-2.3's latent channels: the disk estimate never needs the model loaded
# A decode beside sampling holds ~15 GiB of VAE work (bench/RESULTS.md) on top of the transformer's 23-40 GiB:
# auto turns it on only for cards with room for both.
BACKGROUND_DECODE_MIN_GIB = 64


@dataclass(frozen=True)
class Job:
    """A checked render: every input loaded and valid, the resume point and decode plan decided."""

    request: RenderRequest
    output: Path
    sidecar: Path
    work: WorkDir
    image: Tensor
    waveform: Tensor
    audio: SourceAudio
    negative: str | None
    sampler: SamplerSettings
    device: torch.device
    dtype: torch.dtype
    revision: str
    accel: AccelSettings
    background: bool
    fingerprints: tuple[str, ...]
    start: int
    spans: tuple[DecodeSpan, ...]
    hashes: dict[str, str]
    warnings: tuple[str, ...]


def step_sigmas(sigmas: Sequence[float], steps: int) -> tuple[float, ...]:
    """`steps` steps from a sigma list: its first sigma, then its last `steps` sigmas (ending at 0).

    The distilled list spends its first four steps between σ 1 and 0.975; dropping those costs the least,
    while the large late steps, where the picture forms, stay on the σ values the model was distilled for.
    """
    available = len(sigmas) - 1
    if not 1 <= steps <= available:
        raise SettingsError(
            f"--steps {steps}: this sigma list has {available} steps; use 1 to {available}, "
            "or give more sigmas with --sigmas"
        )
    return (sigmas[0], *sigmas[len(sigmas) - steps :])


def sampler_settings(settings: Settings) -> SamplerSettings:
    """The sampler's settings; an impossible value is a SettingsError naming its flag."""
    for flag, factors in (("--adain", (settings.adain,)), ("--per-step-adain", settings.per_step_adain)):
        if not all(0.0 <= f <= 1.0 for f in factors):
            raise SettingsError(
                f"{flag} {', '.join(f'{f:g}' for f in factors)}: factors lie in [0, 1], e.g. 0.2"
            )
    try:
        nag = NagSettings(settings.nag_scale, settings.nag_alpha, settings.nag_tau) if settings.nag else None
    except ValueError as exc:
        raise SettingsError(
            f"--nag-scale/--nag-alpha/--nag-tau: {exc} (or turn NAG off with --no-nag)"
        ) from None
    try:
        return SamplerSettings(
            sigmas=settings.sigmas,
            nag=nag,
            per_step_adain=settings.per_step_adain,
            per_step_adain_per_frame=settings.adain_per_frame,
        )
    except ValueError as exc:
        raise SettingsError(f"--sigmas: {exc}; e.g. 1,0.909375,0.725,0.421875,0") from None


def resolve_device(name: str) -> torch.device:
    """`auto` → cuda when available, else cpu; an explicit device must parse and be available."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise SettingsError(f"--device {name!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    available = {"cpu": True, "cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
    if not available.get(device.type, False):
        raise SettingsError(f"--device {name}: no such device is available here; use auto or cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise SettingsError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s); use cuda:0")
    return device


def accel_settings(
    compile: str | bool, attention: str, fp8: bool, offload: bool, device: torch.device
) -> AccelSettings:
    """The transformer's speed and memory settings on `device` (compile auto: on for CUDA only), refused
    with one line naming the flag and its fix where the device cannot run them; never touches a model."""
    try:
        settings = AccelSettings(
            compile=device.type == "cuda" if compile == "auto" else bool(compile),
            attention=attention,
            fp8=DEFAULT_FP8 if fp8 else None,
            offload=offload,
        )
    except ValueError as exc:
        raise SettingsError(str(exc)) from None
    try:
        check_attention(settings, device)
    except ValueError as exc:
        raise SettingsError(str(exc)) from None
    flags = [flag for flag, on in (("--fp8", fp8), ("--offload", offload)) if on]
    try:
        check_modes(settings, device)
    except ValueError as exc:
        if device.type != "cuda":
            named = " and ".join(flags)
            needs = "needs" if len(flags) == 1 else "need"
            gpu = "an NVIDIA GPU with FP8 (Ada/Hopper)" if fp8 else "an NVIDIA GPU"
            raise SettingsError(f"{named} {needs} {gpu}, not {device}; drop {named}") from None
        raise SettingsError(f"{exc}; drop --fp8") from None
    if attention != "sdpa" and device.type != "cuda":
        raise SettingsError(
            f"--attention {attention} is a CUDA kernel, not for {device}; use --attention sdpa"
        )
    return settings


def latent_shapes(plan: Plan) -> list[tuple[int, ...]]:
    """The stored latents' shape of each window (or tile) of a plan: what a work dir entry must match."""
    cells = (plan.height // SPATIAL, plan.width // SPATIAL)
    return [(1, LATENT_CHANNELS, w.lat_frames, *cells) for w in plan.windows]


def background_decode(choice: str | bool, device: torch.device, offload: bool) -> bool:
    """Whether each window decodes on a side stream while the next one samples (auto: on CUDA cards of
    BACKGROUND_DECODE_MIN_GIB or more, unless offloading, whose point is a small card)."""
    if choice != "auto":
        return bool(choice)
    if device.type != "cuda" or offload:
        return False
    return torch.cuda.get_device_properties(device).total_memory >= BACKGROUND_DECODE_MIN_GIB * 2**30


def fp8_print(fp8: bool) -> list[str]:
    """What FP8 adds to a fingerprint's model entry: its recipe when on (it changes the numbers), nothing
    when off, so fingerprints from before FP8 existed still match. Compile, attention and offload change
    speed and memory only, and stay out so that a render resumes across them."""
    return [f"fp8-{DEFAULT_FP8}"] if fp8 else []


def output_path(song: Path, output: Path | None, inputs: Sequence[Path]) -> Path:
    """The output video: -o as given, else `<song stem>.mp4` next to the song; never one of the inputs."""
    path = Path(output) if output is not None else song.with_suffix(".mp4")
    if path.suffix.lower() not in CONTAINER_FORMATS:
        raise InputError(f"{path}: unsupported output type {path.suffix!r}; use .mp4, .mkv or .mov")
    if path.is_dir():
        raise InputError(f"{path} is a directory; give a file name ending in .mp4, .mkv or .mov")
    folder = _existing(path.parent)
    if not folder.is_dir() or not os.access(folder, os.W_OK):
        raise InputError(f"{path}: cannot write into {folder}; choose a writable output path with -o")
    if any(path.resolve() == Path(p).resolve() for p in inputs):
        raise InputError(f"{path}: the output would overwrite an input; pass another path with -o")
    return path


def model_revision(model: str) -> str:
    """The model's revision without loading it: tiny's constant, else the directory's content fingerprint."""
    if model == "tiny":
        return TINY_REVISION
    path = resolve_model_dir(model)
    check_layout(model, path)
    return fingerprint(path)


def window_inputs(
    settings: Settings,
    plan: Plan,
    window: Window,
    prompt: str,
    negative: str | None,
    audio: str,
    image: str,
    revision: str,
) -> dict[str, Any]:
    """Everything that shapes one window's latents, for its fingerprint (the previous window is chained on);
    of the speed settings only FP8, which changes the numbers (`fp8_print`).

    AdaIN, per-step AdaIN and the context mode act on windows i ≥ 1 only, so window 0 leaves them out.
    """
    inputs: dict[str, Any] = {
        "window": [window.index, window.px_frames, window.lat_frames, window.seed],
        "frame": [plan.width, plan.height, plan.fps],
        "audio": audio,
        "image": image,
        "prompt": prompt,
        "negative": negative,
        "sigmas": list(settings.sigmas),
        "nag": [settings.nag_scale, settings.nag_alpha, settings.nag_tau] if settings.nag else None,
        "model": [revision, settings.dtype, *fp8_print(settings.fp8)],
    }
    if window.index:
        inputs["context"] = [plan.ov_lat, settings.context]
        inputs["adain"] = [settings.adain, settings.adain_per_frame, list(settings.per_step_adain)]
    return inputs


def audio_slice(waveform: Tensor, plan: Plan, window: Window) -> Tensor:
    """The 16 kHz samples a window hears (the waveform starts at the plan's start; silence past the end)."""
    return slice_window(waveform, window.start_px / plan.fps, window.px_frames / plan.fps)


def disk_needed(plan: Plan, audio: SourceAudio) -> tuple[int, int]:
    """Bytes the output video (a generous estimate, audio included) and the stored window latents take."""
    video = (
        int(plan.width * plan.height * plan.total_frames * VIDEO_BITS_PER_PIXEL / 8) + audio.samples.nbytes
    )
    cells = (plan.width // SPATIAL) * (plan.height // SPATIAL)
    latents = sum(LATENT_CHANNELS * w.lat_frames * cells * 4 for w in plan.windows)
    return video, latents


def _existing(path: Path) -> Path:
    """The nearest existing ancestor of path (what disk_usage can measure before it is created)."""
    path = path.absolute()
    while not path.exists():
        path = path.parent
    return path


def check_disk(output: Path, work: Path, video_bytes: int, latent_bytes: int) -> None:
    """Refuse to start when the output's or the work dir's file system lacks room for the render."""
    places = {}
    for path, needed in ((_existing(output.parent), video_bytes), (_existing(work), latent_bytes)):
        device = path.stat().st_dev
        where, total = places.get(device, (path, 0))
        places[device] = (where, total + needed)
    for where, needed in places.values():
        free = shutil.disk_usage(where).free
        if free < needed:
            raise InputError(
                f"{where}: {free / 1e6:,.0f} MB free, the render needs about {needed / 1e6:,.0f} MB "
                "(video and window latents); free some space or choose another -o/--work-dir"
            )


def prepare(request: RenderRequest) -> Job:
    """Check and load every input, decide where to resume and how to decode; never touches a model."""
    settings, plan = request.settings, request.plan
    sampler = sampler_settings(settings)
    device, dtype = resolve_device(settings.device), DTYPES[settings.dtype]
    accel = accel_settings(settings.compile, settings.attention, settings.fp8, settings.offload, device)
    count = len(plan.windows)
    only = parse_windows(request.only_windows, count) if request.only_windows is not None else ()
    if only and not request.resume:
        raise SettingsError("--only-windows reuses the windows before the first one listed; drop --no-resume")
    output = output_path(request.song, request.output, (request.song, request.image, request.schedule.path))
    image = load_image(request.image, settings.width, settings.height, settings.image_crf)
    waveform = load_waveform(request.song, plan.start, plan.duration)
    audio = read_source_audio(request.song, plan.start, plan.duration)
    revision = model_revision(settings.model)
    negative = (request.schedule.negative or settings.negative) if settings.nag else None
    image_hash = tensor_hash(image)
    inputs = [
        window_inputs(
            settings,
            plan,
            window,
            prompt.prompt,
            negative,
            tensor_hash(audio_slice(waveform, plan, window)),
            image_hash,
            revision,
        )
        for window, prompt in zip(plan.windows, request.prompts, strict=True)
    ]
    work = WorkDir(request.work_dir or output.with_name(f"{output.name}.work"))
    shapes = latent_shapes(plan)
    if only:
        present = [work.load(i, shapes[i]) is not None for i in range(min(only))]
        start = only_windows_start(only, present, work.path)
        reused = [work.stored_fingerprint(i) or "" for i in range(start)]
        prints = reused + chain(inputs[start:], reused[-1] if reused else "")
    else:
        prints = chain(inputs)
        start = resume_start([work.valid(i, prints[i], shapes[i]) for i in range(count)], request.resume)
    check_disk(output, work.path, *disk_needed(plan, audio))
    warnings = []
    if len(settings.per_step_adain) > len(settings.sigmas) - 1:
        warnings.append(
            f"--per-step-adain has {len(settings.per_step_adain)} factors for {len(settings.sigmas) - 1} "
            "steps; the extra ones are never used"
        )
    return Job(
        request=request,
        output=output,
        sidecar=output.with_name(f"{output.name}.json"),
        work=work,
        image=image,
        waveform=waveform,
        audio=audio,
        negative=negative,
        sampler=sampler,
        device=device,
        dtype=dtype,
        revision=revision,
        accel=accel,
        background=background_decode(settings.background_decode, device, settings.offload),
        fingerprints=tuple(prints),
        start=start,
        spans=decode_spans(plan),
        hashes={
            "song": file_hash(request.song),
            "image": file_hash(request.image),
            "schedule": file_hash(request.schedule.path),
        },
        warnings=tuple(warnings),
    )
