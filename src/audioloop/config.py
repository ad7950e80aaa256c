"""One frozen settings object: built-in defaults < config file < command-line flags."""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from audioloop.errors import InputError, SettingsError

DISTILLED = (1.0, 0.99375, 0.9875, 0.98125, 0.975, 0.909375, 0.725, 0.421875, 0.0)
DEFAULT_NEGATIVE = (
    "blurry, out of focus, distorted face, deformed hands, extra fingers, flickering, jittery motion, "
    "static frozen image, text, subtitles, watermark, logo"
)


@dataclass(frozen=True)
class Settings:
    """Every parameter that shapes a render; the defaults are DESIGN.md's."""

    width: int = 832
    height: int = 480
    fps: float = 25.0
    window: float = 19.88
    overlap: float = 2.0
    start: float = 0.0
    duration: float | None = None
    seed: int = 0
    model: str = "diffusers/LTX-2.3-Distilled-Diffusers"
    device: str = "auto"
    dtype: str = "bfloat16"
    sigmas: tuple[float, ...] = DISTILLED
    nag: bool = True
    nag_scale: float = 5.0
    nag_alpha: float = 0.25
    nag_tau: float = 2.5
    adain: float = 0.2
    adain_per_frame: bool = False
    per_step_adain: tuple[float, ...] = ()
    context: str = "latent"
    image_crf: int = 18
    crf: int = 18
    preset: str = "medium"
    negative: str = DEFAULT_NEGATIVE
    compile: str | bool = "auto"  # auto: on for CUDA, off for the CPU
    attention: str = "sdpa"
    fp8: bool = False
    offload: bool = False
    background_decode: str | bool = "auto"  # auto: on for CUDA cards of 64 GiB or more, unless offloading

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready view (tuples become lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


_FIELDS = {f.name: f for f in fields(Settings)}
_TUPLE_FIELDS = {"sigmas", "per_step_adain"}
MAX_CRF = 51  # x264's worst quality; 0 is lossless (output) or no round trip (image)
_RANGES = {"crf": (0, MAX_CRF), "image_crf": (0, MAX_CRF)}
# The settings that change speed and memory but not the numbers: neither fingerprints nor a batch's
# "finished" check look at them, so a render resumes across them.
SPEED_ONLY = ("compile", "attention", "offload", "background_decode")
AUTO_CHOICES = ("auto", "true", "false")
_AUTO_FIELDS = {"compile", "background_decode"}
# models/accel.py's ATTENTION names, spelt out so that reading settings never imports diffusers (a test
# keeps them equal)
_CHOICES = {
    "attention": ("sdpa", "cudnn", "flash", "efficient", "fa4", "fa3"),
    "context": ("latent", "pixel"),
    "dtype": ("bfloat16", "float16", "float32"),
    "preset": ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower"),
}


def parse_float_list(text: str, name: str) -> tuple[float, ...]:
    """'0.3,0.2,0.1' → (0.3, 0.2, 0.1); the name goes into the error message."""
    try:
        return tuple(float(x) for x in text.replace(" ", "").split(",") if x)
    except ValueError:
        raise SettingsError(f"{name}: expected comma-separated numbers like 0.3,0.2, got {text!r}") from None


def _coerce(name: str, value: Any, origin: str) -> Any:
    """Convert a config-file or flag value to the field's type, or say which key is wrong and why."""
    if name in _TUPLE_FIELDS:
        if isinstance(value, str):
            return parse_float_list(value, f"{origin}: {name}")
        if isinstance(value, list | tuple) and all(isinstance(x, int | float) for x in value):
            return tuple(float(x) for x in value)
        raise SettingsError(f"{origin}: {name} must be a list of numbers, got {value!r}")
    if name in _AUTO_FIELDS:
        text = str(value).lower() if isinstance(value, bool | str) else None
        if text not in AUTO_CHOICES:
            raise SettingsError(f"{origin}: {name} must be auto, true or false, got {value!r}")
        return text if text == "auto" else text == "true"
    default = _FIELDS[name].default
    if name == "duration":
        if value is None:
            return None
        default = 0.0
    kind = type(default)
    if kind is bool:
        if not isinstance(value, bool):
            raise SettingsError(f"{origin}: {name} must be true or false, got {value!r}")
        return value
    if kind is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if kind is int and isinstance(value, int) and not isinstance(value, bool):
        low, high = _RANGES.get(name, (value, value))
        if not low <= value <= high:
            raise SettingsError(f"{origin}: {name} {value} is out of range; use {low} to {high}")
        return value
    if kind is str and isinstance(value, str):
        choices = _CHOICES.get(name)
        if choices and value not in choices:
            raise SettingsError(f"{origin}: {name} must be one of {', '.join(choices)}, got {value!r}")
        return value
    raise SettingsError(f"{origin}: {name} must be a {kind.__name__}, got {value!r}")


def read_config(path: Path) -> dict[str, Any]:
    """Read a YAML config file into checked field values; unknown keys are errors (typo safety)."""
    if not path.is_file():
        raise InputError(f"{path}: config file not found; pass an existing file to --config")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        line = getattr(getattr(exc, "problem_mark", None), "line", None)
        where = f" at line {line + 1}" if line is not None else ""
        raise InputError(f"{path}: not valid YAML{where}; fix the syntax") from None
    if not isinstance(raw, dict):
        raise InputError(f"{path}: expected a mapping of setting: value")
    return setting_values(raw, str(path))


def setting_values(raw: Mapping[Any, Any], origin: str) -> dict[str, Any]:
    """Checked field values of a mapping of setting: value (a config file, a batch manifest row); unknown
    keys are errors (typo safety), and `origin` starts every message."""
    values = {}
    for key, value in raw.items():
        name = str(key).replace("-", "_")
        if name not in _FIELDS:
            close = difflib.get_close_matches(name, _FIELDS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise InputError(f"{origin}: unknown setting {key!r}{hint}")
        values[name] = _coerce(name, value, origin)
    return values


def load_settings(config: Path | None = None, overrides: dict[str, Any] | None = None) -> Settings:
    """Built-in defaults, then the config file, then flags (None means 'not given')."""
    values = read_config(config) if config is not None else {}
    for name, value in (overrides or {}).items():
        if value is not None:
            values[name] = _coerce(name, value, f"--{name.replace('_', '-')}")
    return Settings(**values)
