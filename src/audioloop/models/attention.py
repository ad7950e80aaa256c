"""Attention processors audioloop puts into diffusers' LTX-2 blocks, and the tail they share with stock.

`QuantSelfAttnProcessor` is the stock processor's video self-attention (projections, QK norms, RoPE,
the 2.3 per-head gate, the output projection) with `quant_attention` in place of SDPA. It serves the
unmasked self-attention the sampler runs; masks, cross-attention and STG perturbation keep the stock
processor's path and are refused here.
"""

from __future__ import annotations

from diffusers.models.transformers.transformer_ltx2 import (
    LTX2Attention,
    LTX2VideoTransformer3DModel,
    apply_interleaved_rotary_emb,
    apply_split_rotary_emb,
)
from torch import Tensor

from audioloop.models.quant_attention import VALUE_FORMATS, quant_attention


def rotate(attn: LTX2Attention, x: Tensor, freqs: tuple[Tensor, Tensor]) -> Tensor:
    """x [B, T, H·D] rotated by RoPE in the layout the attention uses (split for 2.3, interleaved for 2.0)."""
    rotate_as = apply_split_rotary_emb if attn.rope_type == "split" else apply_interleaved_rotary_emb
    return rotate_as(x, freqs)


def heads(attn: LTX2Attention, x: Tensor) -> Tensor:
    """[B, T, H·D] → [B, T, H, D]."""
    return x.unflatten(2, (attn.heads, -1))


def gate_and_project(attn: LTX2Attention, hidden_states: Tensor, out: Tensor) -> Tensor:
    """The stock processors' last steps on out [B, T, H, D]: the 2.3 per-head gate (2·sigmoid of logits
    from the attention's input tokens), then to_out."""
    if attn.to_gate_logits is not None:
        out = out * (2.0 * attn.to_gate_logits(hidden_states).sigmoid()).unsqueeze(-1)
    return attn.to_out[1](attn.to_out[0](out.flatten(2, 3)))


class QuantSelfAttnProcessor:
    """Video self-attention with int8 Q·Kᵀ and `values` ("fp8" or "bf16") P·V."""

    def __init__(self, values: str) -> None:
        """Keep the value format; the processor holds no tensors."""
        if values not in VALUE_FORMATS:
            raise ValueError(f"attention values {values!r}: choose one of {', '.join(VALUE_FORMATS)}")
        self.values = values

    def __call__(
        self,
        attn: LTX2Attention,
        hidden_states: Tensor,
        encoder_hidden_states: Tensor | None = None,
        attention_mask: Tensor | None = None,
        query_rotary_emb: tuple[Tensor, Tensor] | None = None,
        key_rotary_emb: tuple[Tensor, Tensor] | None = None,
        perturbation_mask: Tensor | None = None,
        all_perturbed: bool | None = None,
    ) -> Tensor:
        """Project, normalise and rotate Q and K, attend through the quantised kernel, gate, project out."""
        if encoder_hidden_states is not None or attention_mask is not None or perturbation_mask is not None:
            raise ValueError("QuantSelfAttnProcessor serves unmasked self-attention only (no STG)")
        query = attn.norm_q(attn.to_q(hidden_states))
        key = attn.norm_k(attn.to_k(hidden_states))
        if query_rotary_emb is not None:
            query = rotate(attn, query, query_rotary_emb)
            key = rotate(attn, key, query_rotary_emb if key_rotary_emb is None else key_rotary_emb)
        out = quant_attention(
            heads(attn, query), heads(attn, key), heads(attn, attn.to_v(hidden_states)), values=self.values
        )
        return gate_and_project(attn, hidden_states, out)


def use_quant_attention(transformer: LTX2VideoTransformer3DModel, values: str) -> None:
    """Route every block's video self-attention (attn1) through `QuantSelfAttnProcessor(values)`."""
    for block in transformer.transformer_blocks:
        block.attn1.set_processor(QuantSelfAttnProcessor(values))
