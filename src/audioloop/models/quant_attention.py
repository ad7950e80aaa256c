"""Attention on 8-bit tensor cores: the quantisation, the op the compiled blocks call, and its reference.

PyTorch's SDPA kernels are bf16 only, and the video self-attention is half of the FP8 step. Here Q and K
become int8 with one scale per token and head (e4m3 would lose 4× more of the scores: 3 mantissa bits
against int8's 7 on these near-Gaussian rows), K first smoothed by its mean over the sequence (softmax
ignores a per-row constant, and the shared offset no longer costs every token's range). V either becomes
e4m3 with one scale per channel and the probabilities e4m3 too ("fp8": both products on 8-bit tensor
cores), or stays bf16 ("bf16": only Q·Kᵀ is 8-bit). The kernel (`quant_attention_kernel.py`, Triton, CUDA
only) computes softmax(QKᵀ/√D)·V in one flash pass; elsewhere (the CPU, tests) the op computes exact
attention over the dequantised tensors, the kernel's answer without its probability rounding, which is
what the GPU benchmark checks it against.

The quantisation is plain torch so that inductor fuses it into the norm and RoPE before it; the kernel is
a custom op, opaque to the compiler, with a shape-only fake for tracing.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

FP8 = torch.float8_e4m3fn
FP8_MAX = torch.finfo(FP8).max  # 448
INT8_MAX = 127
TINY = 1e-12  # scale floor: an all-zero row quantises to zeros, never divides by zero
V_ALIGN = 16  # V's rows padded to a multiple of 16 keys: 16-byte rows for the kernel's loads
VALUE_FORMATS = ("fp8", "bf16")


def quantize_tokens(x: Tensor) -> tuple[Tensor, Tensor]:
    """x [B, S, H, D] → int8 [B, H, S, D] and fp32 scales [B, H, S]: each token-and-head's absmax maps to
    127, rounding to nearest, so x ≈ q · scale."""
    x = x.float().transpose(1, 2)
    scale = x.abs().amax(-1).clamp(min=TINY) / INT8_MAX
    q = (x / scale[..., None]).round().clamp(-INT8_MAX, INT8_MAX).to(torch.int8)
    return q.contiguous(), scale.contiguous()


def smooth(key: Tensor) -> Tensor:
    """K [B, S, H, D] minus its mean over the sequence: every score of a query shifts by one constant."""
    return key - key.float().mean(dim=1, keepdim=True).to(key.dtype)


def quantize_channels(v: Tensor) -> tuple[Tensor, Tensor]:
    """v [B, S, H, D] → e4m3 [B, H, D, S'] (S rounded up to V_ALIGN, zero keys after S) and fp32 scales
    [B, H, D]: each channel's absmax over the sequence maps to 448."""
    v = v.float().permute(0, 2, 3, 1)
    scale = v.abs().amax(-1).clamp(min=TINY) / FP8_MAX
    q = F.pad(v / scale[..., None], (0, -v.shape[-1] % V_ALIGN)).clamp(-FP8_MAX, FP8_MAX).to(FP8)
    return q.contiguous(), scale.contiguous()


def transpose_values(v: Tensor) -> tuple[Tensor, Tensor]:
    """v [B, S, H, D] as the kernel takes unquantised values: [B, H, D, S'] in v's dtype, unit scales."""
    t = F.pad(v.permute(0, 2, 3, 1), (0, -v.shape[1] % V_ALIGN))
    return t.contiguous(), v.new_ones(v.shape[0], v.shape[2], v.shape[3], dtype=torch.float32)


def dequantized_attention(
    q: Tensor, k: Tensor, v: Tensor, q_scale: Tensor, k_scale: Tensor, v_scale: Tensor, sm_scale: float
) -> Tensor:
    """Exact fp32 attention over the dequantised tensors (layouts as quantised), as [B, S, H, D]."""
    seq = q.shape[2]
    query = q.float() * q_scale[..., None]
    key = k.float() * k_scale[..., None]
    value = (v[..., :seq].float() * v_scale[..., None]).transpose(-1, -2).contiguous()  # else SDPA's N² path
    out = F.scaled_dot_product_attention(query, key, value, scale=sm_scale)
    return out.transpose(1, 2).contiguous()


@torch.library.custom_op("audioloop::quant_flash", mutates_args=())
def quant_flash(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    q_scale: Tensor,
    k_scale: Tensor,
    v_scale: Tensor,
    sm_scale: float,
    out_dtype: torch.dtype,
) -> Tensor:
    """softmax(sm_scale · QKᵀ)·V over quantised tensors → [B, S, H, D]: the Triton kernel on CUDA, the
    dequantised reference elsewhere."""
    if q.is_cuda:
        from audioloop.models import quant_attention_kernel

        return quant_attention_kernel.quant_flash(q, k, v, q_scale, k_scale, v_scale, sm_scale, out_dtype)
    return dequantized_attention(q, k, v, q_scale, k_scale, v_scale, sm_scale).to(out_dtype)


@quant_flash.register_fake
def _quant_flash_shape(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    q_scale: Tensor,
    k_scale: Tensor,
    v_scale: Tensor,
    sm_scale: float,
    out_dtype: torch.dtype,
) -> Tensor:
    """The output's shape and dtype, for tracing."""
    batch, heads, seq, head_dim = q.shape
    return q.new_empty(batch, seq, heads, head_dim, dtype=out_dtype)


def quant_attention(query: Tensor, key: Tensor, value: Tensor, values: str = "fp8") -> Tensor:
    """softmax(QKᵀ/√D)·V for [B, S, H, D] self-attention inputs with int8 Q·Kᵀ and `values` ("fp8" or
    "bf16") P·V; returns [B, S, H, D] in the query's dtype."""
    if values not in VALUE_FORMATS:
        raise ValueError(f"attention values {values!r}: choose one of {', '.join(VALUE_FORMATS)}")
    q, q_scale = quantize_tokens(query)
    k, k_scale = quantize_tokens(smooth(key))
    v, v_scale = quantize_channels(value) if values == "fp8" else transpose_values(value)
    return quant_flash(q, k, v, q_scale, k_scale, v_scale, query.shape[-1] ** -0.5, query.dtype)
