"""Prompt text → connector embeddings, encoded once per (model, text) and cached on disk.

Gemma 3 is the largest model after the transformer, so all prompts missing from the cache go through it in
one batched pass, it is freed before returning, and a run whose prompts are all cached never builds it.
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
import threading
import warnings
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch.nn.attention import SDPBackend, sdpa_kernel
from transformers import BatchEncoding

from audioloop.models.load import Components

# The text stage's attention backends: all but cuDNN's, which builds a graph for each new shape (0.1-1.2 s
# on an H200), and a run's longest prompt sets Gemma's. Gemma's pass and the connectors' are short enough
# that the memory-efficient kernel costs nothing against it.
UNCACHED_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
_WRITERS: list[threading.Thread] = []  # cache writes still running (`_write_behind`)


@dataclass(frozen=True)
class TextEmbedding:
    """One prompt's connector outputs: what the transformer's text cross-attentions read."""

    video: torch.Tensor  # [T, D_video]
    audio: torch.Tensor  # [T, D_audio]


def encode_prompts(
    components: Components, prompts: Sequence[str], cache_dir: Path
) -> dict[str, TextEmbedding]:
    """Embeddings for every prompt (the empty one included), encoding only those not already cached. New
    entries reach the disk on a thread while the caller goes on; the next call waits for them first."""
    wait_for_writes()
    paths = {prompt: cache_path(components, prompt, cache_dir) for prompt in prompts}
    missing = {path: prompt.strip() for prompt, path in paths.items() if not path.is_file()}
    fresh: dict[Path, TextEmbedding] = {}
    if missing:
        cache_dir.mkdir(parents=True, exist_ok=True)
        fresh = dict(zip(missing, encode_texts(components, list(missing.values())), strict=True))
        revision = components.revision
        _write_behind(
            [(path, fresh[path], {"revision": revision, "text": text}) for path, text in missing.items()]
        )
    return {
        prompt: fresh[path] if path in fresh else _read(path, components) for prompt, path in paths.items()
    }


def wait_for_writes() -> None:
    """Block until every cache entry handed to `_write_behind` is on disk (or has failed with a warning)."""
    while _WRITERS:
        _WRITERS.pop().join()


def cache_path(components: Components, prompt: str, cache_dir: Path) -> Path:
    """The cache file of a prompt: keyed by model revision, sequence length, dtype and the stripped text."""
    key = json.dumps(
        [components.revision, components.max_sequence_length, str(components.dtype), prompt.strip()]
    )
    return cache_dir / f"{hashlib.sha256(key.encode()).hexdigest()}.safetensors"


def encode_texts(components: Components, texts: Sequence[str]) -> list[TextEmbedding]:
    """Encode texts with no cache: one Gemma pass, then the connectors once; results on the components'
    device and dtype, as ordinary tensors (copied out of inference mode)."""
    hidden, mask = _gemma_hidden_states(components, texts)
    with torch.inference_mode(), sdpa_kernel(UNCACHED_BACKENDS):
        video, audio, _ = components.connectors(hidden, mask, padding_side="left")
    return [TextEmbedding(v.clone(), a.clone()) for v, a in zip(video, audio, strict=True)]


def _gemma_hidden_states(components: Components, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Every Gemma hidden state stacked per token, [B, T, H·(L+1)], left-padded to T = max_sequence_length
    as diffusers' LTX2Pipeline builds it. Gemma itself runs on the longest prompt's tokens only: the
    connectors zero every padded position, and left padding only shifts the RoPE positions, which attention
    sees as differences, so the real tokens' states are the same (to rounding) at a fraction of the cost
    (1024 tokens a prompt, where a schedule's prompts hold tens)."""
    tokens = tokenize(components, texts)
    encoder = components.load_text_encoder()
    weight = weakref.ref(next(encoder.parameters()))
    with torch.inference_mode(), sdpa_kernel(UNCACHED_BACKENDS):
        output = encoder(
            input_ids=tokens.input_ids,
            attention_mask=tokens.attention_mask,
            output_hidden_states=True,
            logits_to_keep=1,
        )
        hidden, mask = connector_inputs(components, output.hidden_states, tokens.attention_mask)
    del encoder, output
    _free_memory(components.device, weight)
    return hidden, mask


def tokenize(components: Components, texts: Sequence[str], length: int | None = None) -> BatchEncoding:
    """The texts' Gemma tokens on the components' device, left-padded to `length` (the longest text's
    when None) and cut at max_sequence_length."""
    tokenizer = components.tokenizer
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer(
        list(texts),
        padding="longest" if length is None else "max_length",
        max_length=components.max_sequence_length if length is None else length,
        truncation=True,
        add_special_tokens=True,
        padding_side="left",
        return_tensors="pt",
    ).to(components.device)


def connector_inputs(
    components: Components, hidden_states: Sequence[torch.Tensor], mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gemma's per-layer hidden states [B, T, H] stacked per token in the components' dtype, and their
    mask, both left-padded from T to max_sequence_length: what the connectors take."""
    hidden = torch.stack(tuple(hidden_states), dim=-1).flatten(2, 3).to(components.dtype)
    padding = components.max_sequence_length - hidden.shape[1]
    return F.pad(hidden, (0, 0, padding, 0)), F.pad(mask, (padding, 0))


def _free_memory(device: torch.device, weight: weakref.ref[torch.Tensor]) -> None:
    """Return a dropped model's memory now, so Gemma is gone before the transformer loads. Reference
    counting frees it as it is dropped; a full garbage collection (0.3 s in a render's process) runs only
    if a reference cycle still holds `weight`, one of its parameters."""
    if weight() is not None:
        gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _write_behind(entries: list[tuple[Path, TextEmbedding, dict[str, str]]]) -> None:
    """Write cache entries on a thread (about 10 ms each for the full-size model, copied to the host there).
    It is not a daemon: the interpreter finishes the writes before it exits."""
    thread = threading.Thread(target=_write_all, args=(entries,), name="audioloop text cache")
    thread.start()
    _WRITERS.append(thread)


def _write_all(entries: list[tuple[Path, TextEmbedding, dict[str, str]]]) -> None:
    """Write each entry; a failure (a full disk, a read-only cache) warns, and that prompt is encoded
    again by the next run."""
    for path, embedding, metadata in entries:
        try:
            _write_atomic(path, embedding, metadata)
        except OSError as exc:
            warnings.warn(f"{path}: text cache entry not written ({exc})", RuntimeWarning, stacklevel=1)


def _write_atomic(path: Path, embedding: TextEmbedding, metadata: dict[str, str]) -> None:
    """Write one cache entry through a temporary file and a rename, so a reader never sees half a file."""
    temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tensors = {"video": embedding.video.cpu(), "audio": embedding.audio.cpu()}
    try:
        save_file(tensors, temporary, metadata=metadata)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def _read(path: Path, components: Components) -> TextEmbedding:
    """One cache entry on the components' device and dtype."""
    tensors = load_file(path)
    return TextEmbedding(
        video=tensors["video"].to(components.device, components.dtype),
        audio=tensors["audio"].to(components.device, components.dtype),
    )
