"""Normalized Attention Guidance (NAG) on the LTX-2 text cross-attention, with no extra transformer pass.

Plumbing: the caller passes `nag_text(positive, negative)` — the two contexts concatenated along the token
axis — as the transformer's text input. Each block then applies the 2.3 sigma-driven K/V modulation
(`prompt_adaln`) to both halves exactly as it would to either alone, and `NagAttnProcessor` splits the
projected K/V back into halves: one shared query, one extra attention call over T keys per block. Because
the negative travels with the call, it lives wherever the caller puts the inputs (`sample_window` casts it
to the model's device and dtype every window). Audio text is only concatenated when audio NAG is on;
otherwise `audio_attn2` keeps the stock processor and sees only its positive context.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from diffusers.models.transformers.transformer_ltx2 import (
    LTX2Attention,
    LTX2AudioVideoAttnProcessor,
    LTX2PerturbedAttnProcessor,
    LTX2VideoTransformer3DModel,
)
from torch import Tensor

from audioloop.models.attention import attend, gate_and_project, heads, swap_processor


@dataclass(frozen=True)
class NagSettings:
    """NAG strength s (1 = off), blend α, L1-ratio cap τ (≥ 1: s = 1 stays plain attention), audio on/off."""

    scale: float = 5.0
    alpha: float = 0.25
    tau: float = 2.5
    audio: bool = False

    def __post_init__(self) -> None:
        """Refuse values outside the ranges the method is defined for."""
        if self.scale < 1.0:
            raise ValueError(f"NAG scale must be ≥ 1 (1 = off), got {self.scale}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"NAG alpha must lie in [0, 1], got {self.alpha}")
        if self.tau < 1.0:
            raise ValueError(f"NAG tau must be ≥ 1, got {self.tau}")


def nag_guidance(z_pos: Tensor, z_neg: Tensor, scale: float) -> Tensor:
    """Extrapolate away from the negative: G = s·Z⁺ − (s−1)·Z⁻, written so that s = 1 gives Z⁺ exactly."""
    return z_pos + (scale - 1.0) * (z_pos - z_neg)


def nag_normalize(g: Tensor, z_pos: Tensor, tau: float) -> Tensor:
    """Per token, where ‖G‖₁/‖Z⁺‖₁ > τ scale G down to ratio τ (L1 over the last axis, never divides by 0)."""
    g_norm = torch.linalg.vector_norm(g, ord=1, dim=-1, keepdim=True)
    pos_norm = torch.linalg.vector_norm(z_pos, ord=1, dim=-1, keepdim=True)
    cap = tau * pos_norm
    return torch.where(g_norm > cap, g * (cap / g_norm), g)


def nag_combine(z_pos: Tensor, z_neg: Tensor, settings: NagSettings) -> Tensor:
    """The NAG attention output: Z = α·normalize(G) + (1−α)·Z⁺ (exactly Z⁺ at s = 1)."""
    g = nag_normalize(nag_guidance(z_pos, z_neg, settings.scale), z_pos, settings.tau)
    return z_pos + settings.alpha * (g - z_pos)


@functools.cache
def _fused_combine() -> Callable[[Tensor, Tensor, NagSettings], Tensor]:
    """nag_combine compiled into one kernel: eager it is ~12 passes over [N, H·D] per block (5% of a step)."""
    return torch.compile(nag_combine, fullgraph=True, dynamic=False)


def combine(z_pos: Tensor, z_neg: Tensor, settings: NagSettings) -> Tensor:
    """nag_combine, fused on CUDA; traced as is inside a compiled block (which fuses it with the rest);
    eager elsewhere (a CPU compile costs more than it saves)."""
    if z_pos.is_cuda and not torch.compiler.is_compiling():
        return _fused_combine()(z_pos, z_neg, settings)
    return nag_combine(z_pos, z_neg, settings)


def nag_text(positive: Tensor, negative: Tensor) -> Tensor:
    """The text input of a NAG forward: [positive, negative] along tokens (equal shapes: it is halved)."""
    if positive.shape != negative.shape:
        raise ValueError(
            f"NAG needs positive and negative text of one shape, got {tuple(positive.shape)} and "
            f"{tuple(negative.shape)}"
        )
    return torch.cat([positive, negative.to(positive)], dim=1)


class NagAttnProcessor:
    """Text cross-attention: NAG between the two text halves, then the 2.3 per-head gate and to_out."""

    _attention_backend = None
    _parallel_config = None

    def __init__(self, settings: NagSettings) -> None:
        """Keep the NAG settings; the processor holds no tensors."""
        self.settings = settings

    def __call__(
        self,
        attn: LTX2Attention,
        hidden_states: Tensor,
        encoder_hidden_states: Tensor | None = None,
        attention_mask: Tensor | None = None,
        query_rotary_emb: tuple[Tensor, Tensor] | None = None,
        key_rotary_emb: tuple[Tensor, Tensor] | None = None,
    ) -> Tensor:
        """Attend the shared query to both text halves, combine by NAG, gate per head, project out."""
        if encoder_hidden_states is None or query_rotary_emb is not None or key_rotary_emb is not None:
            raise ValueError("NagAttnProcessor serves text cross-attention only (no self-attention, no RoPE)")
        batch, text_tokens, _ = encoder_hidden_states.shape
        mask_pos = mask_neg = None
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, text_tokens, batch)
            attention_mask = attention_mask.view(batch, attn.heads, -1, attention_mask.shape[-1])
            mask_pos, mask_neg = attention_mask.chunk(2, dim=-1)

        query = heads(attn, attn.norm_q(attn.to_q(hidden_states)))
        key = heads(attn, attn.norm_k(attn.to_k(encoder_hidden_states)))
        value = heads(attn, attn.to_v(encoder_hidden_states))
        key_pos, key_neg = key.chunk(2, dim=1)
        value_pos, value_neg = value.chunk(2, dim=1)
        z_pos = attend(self, query, key_pos, value_pos, mask_pos).flatten(2, 3)
        z_neg = attend(self, query, key_neg, value_neg, mask_neg).flatten(2, 3)
        return gate_and_project(attn, hidden_states, heads(attn, combine(z_pos, z_neg, self.settings)))


Processors = dict[str, object]


def _text_attentions(transformer: LTX2VideoTransformer3DModel, audio: bool) -> dict[str, LTX2Attention]:
    """The text cross-attention modules by name: every block's attn2, plus audio_attn2 when asked."""
    names = ("attn2", "audio_attn2") if audio else ("attn2",)
    return {
        f"transformer_blocks.{i}.{name}": getattr(block, name)
        for i, block in enumerate(transformer.transformer_blocks)
        for name in names
    }


def _stock_processor(transformer: LTX2VideoTransformer3DModel) -> object:
    """The processor class diffusers gives these blocks (perturbed for 2.3, plain for 2.0)."""
    perturbed = transformer.transformer_blocks[0].perturbed_attn
    return LTX2PerturbedAttnProcessor() if perturbed else LTX2AudioVideoAttnProcessor()


def _is_nag(processor: object, settings: NagSettings) -> bool:
    """Whether a processor already is NAG with these settings (then it is left in place)."""
    return isinstance(processor, NagAttnProcessor) and processor.settings == settings


def install_nag(transformer: LTX2VideoTransformer3DModel, settings: NagSettings) -> Processors:
    """Put NAG on every block's attn2 (and audio_attn2 if `settings.audio`); return the processors replaced.

    NAG processors already installed with equal settings are kept as they are, so installing once per song
    keeps compiled blocks valid; `audio_attn2` goes back to stock when audio NAG is off.
    """
    previous: Processors = {}
    for name, module in _text_attentions(transformer, audio=True).items():
        wants_nag = settings.audio or not name.endswith("audio_attn2")
        if wants_nag and not _is_nag(module.processor, settings):
            previous[name] = module.processor
            swap_processor(module, NagAttnProcessor(settings))
        elif not wants_nag and isinstance(module.processor, NagAttnProcessor):
            previous[name] = module.processor
            swap_processor(module, _stock_processor(transformer))
    return previous


def remove_nag(transformer: LTX2VideoTransformer3DModel) -> Processors:
    """Put the stock processor back wherever NAG is installed; return the processors replaced."""
    previous: Processors = {}
    for name, module in _text_attentions(transformer, audio=True).items():
        if isinstance(module.processor, NagAttnProcessor):
            previous[name] = module.processor
            swap_processor(module, _stock_processor(transformer))
    return previous


def restore_processors(transformer: LTX2VideoTransformer3DModel, processors: Processors) -> None:
    """Put back the exact processor objects `install_nag`/`remove_nag` returned."""
    modules = dict(transformer.named_modules())
    for name, processor in processors.items():
        modules[name].set_processor(processor)


@contextmanager
def nag_attention(transformer: LTX2VideoTransformer3DModel, settings: NagSettings | None) -> Iterator[None]:
    """NAG with `settings` (stock text attention for None) inside the block, the previous processors after."""
    previous = remove_nag(transformer) if settings is None else install_nag(transformer, settings)
    try:
        yield
    finally:
        restore_processors(transformer, previous)
