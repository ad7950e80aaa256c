"""audioloop's LTX-2 attention pieces: RoPE in the model's layout, the head split, the 2.3 per-head gate
and the output projection, shared by its processors (`RotaryAttnProcessor` here, NAG, sequence parallel).

`RotaryAttnProcessor` is diffusers' LTX-2 processor with two differences that matter for memory: the split
RoPE is written without in-place updates of slices, so the compiled blocks rotate q and k in one pass that
writes bf16 (diffusers' form leaves fp32 copies of both at the step's peak: 1.7 GiB at 1280×704), and it
takes the compact RoPE tables of `models/rope.py`, gathered where they are used.
"""

from __future__ import annotations

import torch
from diffusers.models.attention_dispatch import dispatch_attention_fn
from diffusers.models.transformers.transformer_ltx2 import (
    LTX2Attention,
    LTX2VideoTransformer3DModel,
    apply_interleaved_rotary_emb,
)
from torch import Tensor

from audioloop.models import flash3, flash4
from audioloop.models.rope import CompactRope, RopeIndex, expand

ROTARY_ATTENTIONS = ("attn1", "audio_attn1", "audio_to_video_attn", "video_to_audio_attn")
# The kernels of our own that `--attention` can name, each a custom op for unmasked calls.
KERNELS = {flash4.NAME: flash4.flash4, flash3.NAME: flash3.flash3}


def split_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """diffusers' `apply_split_rotary_emb` on x [B, T, H·D] with cos, sin [B, H, T, D/2]: each head's
    halves (x₁, x₂) become (x₁·cos − x₂·sin, x₂·cos + x₁·sin), in fp32, returned in x's dtype. One
    expression with no in-place update, which inductor compiles to one pass that writes x's dtype."""
    b, h, t, r = cos.shape
    halves = x.reshape(b, t, h, 2, r).float()
    sign = torch.arange(-1.0, 2.0, 2.0, device=x.device).view(2, 1)  # [−1, 1], made on the device: no copy
    cos, sin = cos.transpose(1, 2).unsqueeze(3), sin.transpose(1, 2).unsqueeze(3)
    return (halves * cos + halves.flip(3) * (sign * sin)).reshape(x.shape).to(x.dtype)


def rotate(attn: LTX2Attention, x: Tensor, freqs: tuple[Tensor, Tensor] | RopeIndex) -> Tensor:
    """x [B, T, H·D] rotated by RoPE in the layout the attention uses (split for 2.3, interleaved for 2.0),
    from full tables or compact ones."""
    if attn.rope_type != "split":
        return apply_interleaved_rotary_emb(x, freqs)
    cos, sin = expand(freqs) if isinstance(freqs, RopeIndex) else freqs
    return split_rotary(x, cos, sin)


def attend(
    processor: object, query: Tensor, key: Tensor, value: Tensor, mask: Tensor | None = None
) -> Tensor:
    """Attention on [B, T, H, D] with the kernel and parallel config chosen for `processor`: FA4's or FA3's
    op for an unmasked call where `--attention` chose it (a masked one takes diffusers' default),
    otherwise diffusers' dispatch; the result in the query's dtype."""
    backend = processor._attention_backend
    if backend in KERNELS:
        if mask is None:
            return KERNELS[backend](query, key, value)
        backend = None
    out = dispatch_attention_fn(
        query,
        key,
        value,
        attn_mask=mask,
        dropout_p=0.0,
        is_causal=False,
        backend=backend,
        parallel_config=getattr(processor, "_parallel_config", None),
    )
    return out.to(query.dtype)


def swap_processor(module: LTX2Attention, processor: object) -> None:
    """Swap a processor in, keeping the attention backend and parallel config chosen for the old one (where
    the new one has such a setting)."""
    for attr in ("_attention_backend", "_parallel_config"):
        if hasattr(processor, attr):
            setattr(processor, attr, getattr(module.processor, attr, None))
    module.set_processor(processor)


def heads(attn: LTX2Attention, x: Tensor) -> Tensor:
    """[B, T, H·D] → [B, T, H, D]."""
    return x.unflatten(2, (attn.heads, -1))


def gate_and_project(attn: LTX2Attention, hidden_states: Tensor, out: Tensor) -> Tensor:
    """The stock processors' last steps on out [B, T, H, D]: the 2.3 per-head gate (2·sigmoid of logits
    from the attention's input tokens), then to_out."""
    if attn.to_gate_logits is not None:
        out = out * (2.0 * attn.to_gate_logits(hidden_states).sigmoid()).unsqueeze(-1)
    return attn.to_out[1](attn.to_out[0](out.flatten(2, 3)))


class RotaryAttnProcessor:
    """diffusers' LTX-2 attention (self or cross, optional mask and RoPE) through `rotate`; STG, which
    audioloop's sampler never asks for, is refused."""

    _attention_backend = None
    _parallel_config = None

    def __call__(
        self,
        attn: LTX2Attention,
        hidden_states: Tensor,
        encoder_hidden_states: Tensor | None = None,
        attention_mask: Tensor | None = None,
        query_rotary_emb: tuple[Tensor, Tensor] | RopeIndex | None = None,
        key_rotary_emb: tuple[Tensor, Tensor] | RopeIndex | None = None,
        perturbation_mask: Tensor | None = None,
        all_perturbed: bool | None = None,
    ) -> Tensor:
        """Project, normalise, rotate, attend through diffusers' backend dispatch, gate, project out."""
        if perturbation_mask is not None or all_perturbed:
            raise ValueError("RotaryAttnProcessor does not do spatio-temporal guidance (STG)")
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        if attention_mask is not None:
            batch, tokens, _ = context.shape
            attention_mask = attn.prepare_attention_mask(attention_mask, tokens, batch)
            attention_mask = attention_mask.view(batch, attn.heads, -1, attention_mask.shape[-1])
        query = attn.norm_q(attn.to_q(hidden_states))
        key = attn.norm_k(attn.to_k(context))
        value = attn.to_v(context)
        if query_rotary_emb is not None:
            query = rotate(attn, query, query_rotary_emb)
            key = rotate(attn, key, query_rotary_emb if key_rotary_emb is None else key_rotary_emb)
        out = attend(self, heads(attn, query), heads(attn, key), heads(attn, value), attention_mask)
        return gate_and_project(attn, hidden_states, out)


def use_rotary_attention(transformer: LTX2VideoTransformer3DModel) -> None:
    """Install in place, once: `RotaryAttnProcessor` on every attention that takes RoPE (keeping its
    attention backend) and, for split RoPE (2.3), the compact video tables, which only it can read."""
    for block in transformer.transformer_blocks:
        for name in ROTARY_ATTENTIONS:
            module = getattr(block, name)
            if not isinstance(module.processor, RotaryAttnProcessor):
                swap_processor(module, RotaryAttnProcessor())
    for name in ("rope", "cross_attn_rope"):
        rope = getattr(transformer, name)
        if not isinstance(rope, CompactRope) and rope.rope_type == "split":
            setattr(transformer, name, CompactRope(rope))
