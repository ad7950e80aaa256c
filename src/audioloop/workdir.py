"""The work dir: each finished window's latents and a manifest of fingerprints, so a render can resume.

A window's fingerprint hashes everything that shapes its latents — its audio slice, the preprocessed image,
its prompt and the negative, every sampling setting, the model revision and dtype — together with the
previous window's fingerprint, so a change invalidates exactly that window and every window after it.
Files are written atomically (temporary file, then rename): an interrupted render leaves only whole windows.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from audioloop.errors import InputError, SettingsError

MANIFEST = "manifest.json"
FORMAT = 1
_CHUNK = 1 << 20


def cache_dir(env: Mapping[str, str] | None = None) -> Path:
    """The text-embedding cache: $AUDIOLOOP_CACHE_DIR, $XDG_CACHE_HOME/audioloop or ~/.cache/audioloop."""
    env = os.environ if env is None else env
    if env.get("AUDIOLOOP_CACHE_DIR"):
        return Path(env["AUDIOLOOP_CACHE_DIR"]).expanduser()
    base = Path(env["XDG_CACHE_HOME"]).expanduser() if env.get("XDG_CACHE_HOME") else Path.home() / ".cache"
    return base / "audioloop"


def file_hash(path: Path) -> str:
    """sha256 of a file's bytes, read in chunks (songs can be large)."""
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def tensor_hash(tensor: torch.Tensor) -> str:
    """sha256 of a tensor's dtype, shape and values: the content a model actually sees."""
    digest = hashlib.sha256(f"{tensor.dtype}{tuple(tensor.shape)}".encode())
    digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def fingerprint(previous: str, inputs: Mapping[str, Any]) -> str:
    """A window's fingerprint: the previous window's ('' for window 0) and this window's inputs, as JSON."""
    text = json.dumps({"previous": previous, "inputs": inputs}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def chain(inputs: Sequence[Mapping[str, Any]], previous: str = "") -> list[str]:
    """Fingerprints of consecutive windows, each chained onto the one before (the first onto `previous`)."""
    prints = []
    for window_inputs in inputs:
        previous = fingerprint(previous, window_inputs)
        prints.append(previous)
    return prints


def resume_start(valid: Sequence[bool], resume: bool) -> int:
    """The first window to sample: 0 without resume, else the first window without a valid stored copy."""
    if not resume:
        return 0
    return next((i for i, ok in enumerate(valid) if not ok), len(valid))


def parse_windows(text: str, count: int) -> tuple[int, ...]:
    """'3,7' → (3, 7): sorted, unique window indices that exist in a plan of `count` windows."""
    try:
        indices = sorted({int(part) for part in text.replace(" ", "").split(",") if part})
    except ValueError:
        raise SettingsError(f"--only-windows: expected window numbers like 3,7, got {text!r}") from None
    if not indices:
        raise SettingsError("--only-windows: give at least one window number, e.g. --only-windows 3")
    outside = [i for i in indices if not 0 <= i < count]
    if outside:
        raise SettingsError(
            f"--only-windows: window {outside[0]} does not exist; this render has windows 0–{count - 1} "
            "(see `audioloop plan`)"
        )
    return tuple(indices)


def only_windows_start(only: Sequence[int], present: Sequence[bool], work: Path) -> int:
    """The first window --only-windows re-renders; `present[i]` says whether each earlier window is stored,
    and all of them must be (they are reused)."""
    start = min(only)
    missing = [i for i in range(start) if not present[i]]
    if missing:
        raise InputError(
            f"--only-windows {','.join(map(str, only))}: window {missing[0]} is missing or unreadable in "
            f"{work}, and windows before {start} are reused as they are; render without --only-windows first"
        )
    return start


def finite_latents(latents: torch.Tensor) -> bool:
    """True when every latent value is finite (no NaN, no inf)."""
    return bool(torch.isfinite(latents).all())


def _write_atomic(path: Path, write: Any) -> None:
    """Call write(temporary) and rename the result onto path; the temporary never outlives the call."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(temporary)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (the sidecar and the manifest)."""
    _write_atomic(path, lambda temporary: temporary.write_text(json.dumps(data, indent=2) + "\n"))


class WorkDir:
    """A render's work dir: `window_NNN.safetensors` per finished window plus `manifest.json`."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InputError(
                f"{self.path}: cannot create the work dir ({exc}); pass a writable --work-dir"
            ) from None
        if not os.access(self.path, os.W_OK):
            raise InputError(f"{self.path}: the work dir is not writable; pass a writable --work-dir")
        self._entries = self._read_manifest()

    def _read_manifest(self) -> dict[int, dict[str, Any]]:
        """The manifest's window entries; an unreadable or foreign manifest counts as empty."""
        try:
            data = json.loads((self.path / MANIFEST).read_text())
            return {int(entry["index"]): entry for entry in data["windows"] if data.get("format") == FORMAT}
        except (OSError, ValueError, KeyError, TypeError):
            return {}

    def window_path(self, index: int) -> Path:
        """Where window `index`'s latents live."""
        return self.path / f"window_{index:03d}.safetensors"

    def stored_fingerprint(self, index: int) -> str | None:
        """The fingerprint the manifest records for window `index`, if any."""
        entry = self._entries.get(index)
        return None if entry is None else entry.get("fingerprint")

    def load(self, index: int, shape: Sequence[int] | None = None) -> torch.Tensor | None:
        """Window `index`'s latents if stored, readable, finite and (when given) of shape [1, *, F, h, w]."""
        entry = self._entries.get(index)
        path = self.window_path(index)
        if entry is None or not path.is_file():
            return None
        try:
            latents = load_file(path)["latents"]
        except (OSError, SafetensorError, KeyError):
            return None
        if shape is not None and (latents.ndim != 5 or latents.shape[2:] != tuple(shape)[2:]):
            return None
        return latents if finite_latents(latents) else None

    def stored(self) -> int:
        """How many windows, counting from 0 without a gap, the manifest holds."""
        count = 0
        while count in self._entries:
            count += 1
        return count

    def valid(self, index: int, expected: str, shape: Sequence[int]) -> bool:
        """Whether window `index` is stored with the expected fingerprint and loads as sound latents."""
        return self.stored_fingerprint(index) == expected and self.load(index, shape) is not None

    def save(self, index: int, latents: torch.Tensor, fingerprint: str, info: Mapping[str, Any]) -> None:
        """Store a finished window (latents first, then its manifest entry), each write atomic."""
        tensors = {"latents": latents.detach().to("cpu", torch.float32).contiguous()}
        _write_atomic(self.window_path(index), lambda temporary: save_file(tensors, temporary))
        self._entries[index] = {
            "index": index,
            "file": self.window_path(index).name,
            "fingerprint": fingerprint,
            "shape": list(latents.shape),
            **info,
        }
        self._write_manifest()

    def forget_from(self, start: int) -> None:
        """Drop windows start.. from the manifest and disk: they are about to be re-rendered."""
        stale = [i for i in self._entries if i >= start]
        for index in stale:
            del self._entries[index]
        if stale:
            self._write_manifest()
        for index in stale:
            self.window_path(index).unlink(missing_ok=True)

    def _write_manifest(self) -> None:
        """Rewrite manifest.json from the in-memory entries."""
        entries = [self._entries[i] for i in sorted(self._entries)]
        write_json(self.path / MANIFEST, {"format": FORMAT, "windows": entries})
