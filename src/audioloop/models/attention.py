"""The steps of diffusers' LTX-2 attention processors that audioloop's own processors (NAG, sequence
parallel) repeat around their attention call: RoPE in the model's layout, the head split, the 2.3 per-head
gate and the output projection."""

from __future__ import annotations

from diffusers.models.transformers.transformer_ltx2 import (
    LTX2Attention,
    apply_interleaved_rotary_emb,
    apply_split_rotary_emb,
)
from torch import Tensor


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
