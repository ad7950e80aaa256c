"""Load the LTX-2.3 components for `--model ID|DIR|tiny`: the in-code tiny model, or a diffusers-format
directory (local or a Hugging Face hub snapshot), one load path for real and saved-tiny weights alike."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property, partial
from pathlib import Path
from typing import Any

import torch
from diffusers import (
    AutoencoderKLLTX2Audio,
    AutoencoderKLLTX2Video,
    FlowMatchEulerDiscreteScheduler,
    LTX2VideoTransformer3DModel,
)
from diffusers.pipelines.ltx2.connectors import LTX2TextConnectors
from diffusers.pipelines.ltx2.latent_upsampler import LTX2LatentUpsamplerModel
from huggingface_hub import snapshot_download
from huggingface_hub.errors import (
    HfHubHTTPError,
    HFValidationError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
)
from transformers import AutoTokenizer, Gemma3ForConditionalGeneration, PreTrainedTokenizerBase

from audioloop.errors import InputError
from audioloop.models import tiny

# Each required subfolder of a diffusers-format LTX-2.3 directory, and the file that shows it is there.
REQUIRED = {
    "transformer": "config.json",
    "vae": "config.json",
    "audio_vae": "config.json",
    "connectors": "config.json",
    "text_encoder": "config.json",
    "tokenizer": "tokenizer_config.json",
    "scheduler": "scheduler_config.json",
}
UPSAMPLER = "latent_upsampler"  # LTX-2.3's ×2 spatial latent upsampler, only `audioloop upscale` needs it
OPTIONAL = (UPSAMPLER,)
REAL_MAX_SEQUENCE_LENGTH = 1024
REGISTER_BLOCK = 128  # the connectors tile their learnable registers over the sequence: length % 128 == 0
WEIGHT_SUFFIXES = frozenset({".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf"})
LAYOUT = "a diffusers-format LTX-2.3 directory holds " + ", ".join(f"{name}/" for name in REQUIRED)


@dataclass(frozen=True)
class Components:
    """Everything needed to render; Gemma and the transformer load on first use, so they are never resident
    together as long as text is encoded before the transformer is first touched."""

    model_id: str
    revision: str
    video_vae: AutoencoderKLLTX2Video = field(repr=False)
    audio_vae: AutoencoderKLLTX2Audio = field(repr=False)
    connectors: LTX2TextConnectors = field(repr=False)
    tokenizer: PreTrainedTokenizerBase = field(repr=False)
    load_transformer: Callable[[], LTX2VideoTransformer3DModel] = field(repr=False)
    load_text_encoder: Callable[[], torch.nn.Module] = field(repr=False)
    max_sequence_length: int
    device: torch.device
    dtype: torch.dtype

    @cached_property
    def transformer(self) -> LTX2VideoTransformer3DModel:
        """The joint audio-video transformer, loaded once on first access."""
        return self.load_transformer()


def load_components(
    model: str,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    transformer_device: str | torch.device | None = None,
) -> Components:
    """Load `tiny` (built in code, no disk), a diffusers-format directory, or a hub id's snapshot. The
    transformer loads on `transformer_device` when given (the CPU, for `accel.accelerate` to offload it:
    a small card cannot hold it whole), else on `device` like the rest."""
    device = torch.device(device)
    home = device if transformer_device is None else torch.device(transformer_device)
    if model == "tiny":
        return _tiny_components(device, dtype, home)
    path = resolve_model_dir(model)
    check_layout(model, path)
    return _directory_components(model, path, device, dtype, home)


def resolve_model_dir(model: str) -> Path:
    """A directory as is; a hub id through the local Hugging Face cache (fetched unless HF_HUB_OFFLINE=1)."""
    path = Path(model).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise InputError(f"--model {model}: is a file; pass a diffusers-format LTX-2.3 directory or a hub id")
    offline = _hub_offline()
    patterns = [f"{name}/*" for name in (*REQUIRED, *OPTIONAL)]
    try:
        return Path(snapshot_download(model, local_files_only=offline, allow_patterns=patterns))
    except HFValidationError as exc:
        raise InputError(
            f"--model {model}: no such directory and not a hub id (owner/name); pass a diffusers-format "
            "LTX-2.3 directory, a hub id or `tiny`"
        ) from exc
    except LocalEntryNotFoundError as exc:
        reason = "HF_HUB_OFFLINE=1 is set" if offline else "the hub could not be reached"
        raise InputError(
            f"--model {model}: no such directory, and the hub id is not in the local Hugging Face cache "
            f"({reason}); run `hf download {model}` where the hub is reachable, or pass a local directory"
        ) from exc
    except RepositoryNotFoundError as exc:
        raise InputError(
            f"--model {model}: no such directory or hub repository (if it is gated, accept its licence and "
            "run `hf auth login`)"
        ) from exc
    except HfHubHTTPError as exc:
        raise InputError(
            f"--model {model}: download failed ({_one_line(exc)}); retry or pass a directory"
        ) from exc


def check_layout(model: str, path: Path) -> None:
    """Refuse a directory that lacks a required component, naming every missing one in one line."""
    missing = [f"{name}/" for name, marker in REQUIRED.items() if not (path / name / marker).is_file()]
    if missing:
        raise InputError(f"--model {model}: {path} is missing {', '.join(missing)}; {LAYOUT}")


def fingerprint(path: Path, parts: tuple[str, ...] = tuple(REQUIRED)) -> str:
    """A cheap content fingerprint of a model directory's `parts` (subfolders): small files by content,
    weights by name and size."""
    digest = hashlib.sha256()
    for name in parts:
        for file in sorted(p for p in (path / name).rglob("*") if p.is_file()):
            relative = file.relative_to(path)
            if any(part.startswith(".") for part in relative.parts):
                continue
            content = (
                str(file.stat().st_size)
                if file.suffix in WEIGHT_SUFFIXES
                else hashlib.sha256(file.read_bytes()).hexdigest()
            )
            digest.update(f"{relative.as_posix()}\0{content}\0".encode())
    return f"sha256-{digest.hexdigest()[:16]}"


def save_tiny(path: Path) -> Path:
    """Write the tiny model as a diffusers-format directory: the layout real LTX-2.3 weights come in."""
    parts: dict[str, Any] = {
        "transformer": tiny.tiny_transformer(),
        "vae": tiny.tiny_video_vae(),
        "audio_vae": tiny.tiny_audio_vae(),
        "connectors": tiny.tiny_connectors(),
        "text_encoder": tiny.tiny_text_encoder(),
        "tokenizer": tiny.tiny_tokenizer(),
        "scheduler": FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=False, shift_terminal=None),
        UPSAMPLER: tiny.tiny_latent_upsampler(),
    }
    for name, part in parts.items():
        part.save_pretrained(path / name)
    return path


def max_sequence_length(tokenizer: PreTrainedTokenizerBase) -> int:
    """1024 tokens as LTX-2.3 was trained, unless the tokenizer allows fewer; always a multiple of 128."""
    length = min(REAL_MAX_SEQUENCE_LENGTH, tokenizer.model_max_length)
    return max(REGISTER_BLOCK, length // REGISTER_BLOCK * REGISTER_BLOCK)


def _tiny_components(
    device: torch.device, dtype: torch.dtype, transformer_device: torch.device
) -> Components:
    """The tiny model built in code, placed on the device (the transformer on its own) in the dtype."""

    def place(module: torch.nn.Module, where: torch.device = device) -> Any:
        # Built in float32; cast only when asked to, since diffusers warns on any dtype cast through `to()`.
        module = module.to(where)
        return module if dtype == torch.float32 else module.to(dtype)

    tokenizer = tiny.tiny_tokenizer()
    return Components(
        model_id="tiny",
        revision=tiny.REVISION,
        video_vae=place(tiny.tiny_video_vae()),
        audio_vae=place(tiny.tiny_audio_vae()),
        connectors=place(tiny.tiny_connectors()),
        tokenizer=tokenizer,
        load_transformer=lambda: place(tiny.tiny_transformer(), transformer_device),
        load_text_encoder=lambda: place(tiny.tiny_text_encoder()),
        max_sequence_length=max_sequence_length(tokenizer),
        device=device,
        dtype=dtype,
    )


def _directory_components(
    model: str, path: Path, device: torch.device, dtype: torch.dtype, transformer_device: torch.device
) -> Components:
    """Every component from its subfolder with its class's from_pretrained, never touching the network."""
    diffusers_part = partial(_load_part, path, torch_dtype=dtype, device=device)
    tokenizer = _load_part(path, "tokenizer", AutoTokenizer.from_pretrained)
    return Components(
        model_id=model,
        revision=fingerprint(path),
        video_vae=diffusers_part("vae", AutoencoderKLLTX2Video.from_pretrained),
        audio_vae=diffusers_part("audio_vae", AutoencoderKLLTX2Audio.from_pretrained),
        connectors=diffusers_part("connectors", LTX2TextConnectors.from_pretrained),
        tokenizer=tokenizer,
        load_transformer=partial(
            diffusers_part,
            "transformer",
            LTX2VideoTransformer3DModel.from_pretrained,
            device=transformer_device,
        ),
        load_text_encoder=partial(
            _load_part,
            path,
            "text_encoder",
            Gemma3ForConditionalGeneration.from_pretrained,
            dtype=dtype,
            device=device,
        ),
        max_sequence_length=max_sequence_length(tokenizer),
        device=device,
        dtype=dtype,
    )


def _load_part(
    path: Path, name: str, load: Callable[..., Any], device: torch.device | None = None, **kwargs: Any
) -> Any:
    """One component through `load(path, subfolder=name, local_files_only=True)`, moved to the device."""
    try:
        part = load(path, subfolder=name, local_files_only=True, **kwargs)
    except (OSError, ValueError) as exc:
        raise InputError(
            f"{path / name}: cannot be loaded ({_one_line(exc)}); re-download or re-convert it"
        ) from exc
    return part if device is None else part.to(device)


def _hub_offline() -> bool:
    """HF_HUB_OFFLINE read now, not at import time, so setting it for one run (or one test) takes effect."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def _one_line(exc: BaseException) -> str:
    """The first line of an exception's message, for one-line user errors."""
    return next(iter(str(exc).strip().splitlines()), type(exc).__name__)


def upsampler_revision(model: str) -> str:
    """The latent upsampler's revision without loading it: tiny's constant, else its folder's fingerprint;
    a directory without `latent_upsampler/` is refused here, before anything loads."""
    if model == "tiny":
        return tiny.REVISION
    path = resolve_model_dir(model)
    _check_upsampler(model, path)
    return fingerprint(path, (UPSAMPLER,))


def load_latent_upsampler(
    model: str, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> LTX2LatentUpsamplerModel:
    """The ×2 spatial latent upsampler of `--model`: tiny's built in code, else `latent_upsampler/`."""
    device = torch.device(device)
    if model == "tiny":
        upsampler = tiny.tiny_latent_upsampler().to(device)
        return upsampler if dtype == torch.float32 else upsampler.to(dtype)
    path = resolve_model_dir(model)
    _check_upsampler(model, path)
    return _load_part(
        path, UPSAMPLER, LTX2LatentUpsamplerModel.from_pretrained, torch_dtype=dtype, device=device
    )


def _check_upsampler(model: str, path: Path) -> None:
    """Refuse a model directory without the latent upsampler, naming what belongs there."""
    if not (path / UPSAMPLER / "config.json").is_file():
        raise InputError(
            f"--model {model}: {path} has no {UPSAMPLER}/; the upscale needs LTX-2.3's ×2 spatial latent "
            f"upsampler (ltx-2.3-spatial-upscaler-x2) there in diffusers format"
        )
