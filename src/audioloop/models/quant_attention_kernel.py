"""The Triton kernel behind `quant_attention`: one flash-attention pass (online softmax) over int8 Q and K
and e4m3 or bf16 V.

Inputs come from `quant_attention`: Q and K int8 [B, H, S, D] with one scale per token and head (the
int32 products take the row scale times the softmax scale in log2 units, and the column scale), V
[B, H, D, S'] (sequence-contiguous, the layout FP8 tensor cores take for the P·V operand; S' ≥ S keeps
its rows 16-byte aligned) with one scale per channel. For e4m3 V the probabilities enter P·V as e4m3
scaled by 448 (exp2 of the score minus the running max plus log2 448), so they use e4m3's whole range;
the row sums see the same scaling, which the final division cancels. Accumulation is fp32.

Imported only where CUDA runs it: Triton is not installed with the CPU build of torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from torch import Tensor
from triton.tools.tensor_descriptor import TensorDescriptor

LOG2E = 1.4426950408889634
LOG2_FP8_MAX = tl.constexpr(math.log2(448.0))


@dataclass(frozen=True)
class KernelConfig:
    """Tile sizes and launch shape: queries per program, keys per step, warps, software-pipeline depth."""

    block_m: int = 128
    block_n: int = 128
    num_warps: int = 8
    num_stages: int = 2
    tma: bool = False  # Hopper's tensor-memory-accelerator loads (tensor descriptors), else block pointers


# Per P·V format (V's dtype): the fastest tiles on an H200 at 24,960 tokens (bench/attention.py).
CONFIGS = {torch.float8_e4m3fn: KernelConfig(), torch.bfloat16: KernelConfig()}


@triton.jit
def _tile(
    q,
    k,
    v,
    k_scale,
    row_factor,
    acc,
    l_i,
    m_i,
    start_n,
    seq,
    offs_n,
    MASKED: tl.constexpr,
    V_FP8: tl.constexpr,
):
    """One key tile: log2-domain scores, the running max and row sums updated, P·V accumulated (P in V's
    dtype: e4m3 scaled by 448, or bf16)."""
    s = tl.dot(q, k, out_dtype=tl.int32).to(tl.float32) * k_scale[None, :] * row_factor[:, None]
    if MASKED:
        s = tl.where((start_n + offs_n)[None, :] < seq, s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    shift = LOG2_FP8_MAX if V_FP8 else 0.0
    p = tl.math.exp2(s - (m_new - shift)[:, None])
    alpha = tl.math.exp2(m_i - m_new)
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None])
    return acc, l_i, m_new


@triton.jit
def _store(
    Out, VS, acc, l_i, bh, heads, seq, offs_m, stride_ob, stride_os, stride_oh, HEAD_DIM: tl.constexpr
):
    """Normalise by the row sums, apply V's channel scales, write the valid rows of O [B, S, H, D]."""
    offs_d = tl.arange(0, HEAD_DIM)
    v_scale = tl.load(VS + bh * HEAD_DIM + offs_d)
    out = acc * (1.0 / l_i)[:, None] * v_scale[None, :]
    b, h = bh // heads, bh % heads
    o_ptrs = Out + b * stride_ob + h * stride_oh + offs_m[:, None] * stride_os + offs_d[None, :]
    tl.store(o_ptrs, out.to(Out.dtype.element_ty), mask=offs_m[:, None] < seq)


@triton.jit
def _quant_flash(
    Q,
    K,
    V,
    QS,
    KS,
    VS,
    Out,
    seq,
    full,
    heads,
    qk_factor,
    stride_v,
    stride_ob,
    stride_os,
    stride_oh,
    HEAD_DIM: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    V_FP8: tl.constexpr,
):
    """Program (m, b·H + h): BLOCK_M queries of one head against all keys (the first `full` of them in
    whole tiles); writes O [B, S, H, D]."""
    start_m = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    base = bh * seq * HEAD_DIM
    q_block = tl.make_block_ptr(
        Q + base, (seq, HEAD_DIM), (HEAD_DIM, 1), (start_m * BLOCK_M, 0), (BLOCK_M, HEAD_DIM), (1, 0)
    )
    k_block = tl.make_block_ptr(K + base, (HEAD_DIM, seq), (1, HEAD_DIM), (0, 0), (HEAD_DIM, BLOCK_N), (0, 1))
    v_block = tl.make_block_ptr(
        V + bh * HEAD_DIM * stride_v, (seq, HEAD_DIM), (1, stride_v), (0, 0), (BLOCK_N, HEAD_DIM), (0, 1)
    )
    offs_m = start_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    q = tl.load(q_block, boundary_check=(0,), padding_option="zero")
    row_factor = tl.load(QS + bh * seq + offs_m, mask=offs_m < seq, other=0.0) * qk_factor
    k_scales = KS + bh * seq
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    for start_n in range(0, full, BLOCK_N):
        k = tl.load(k_block)
        v = tl.load(v_block)
        k_scale = tl.load(k_scales + start_n + offs_n)
        acc, l_i, m_i = _tile(q, k, v, k_scale, row_factor, acc, l_i, m_i, start_n, seq, offs_n, False, V_FP8)
        k_block = tl.advance(k_block, (0, BLOCK_N))
        v_block = tl.advance(v_block, (BLOCK_N, 0))
    if full < seq:
        k = tl.load(k_block, boundary_check=(1,), padding_option="zero")
        v = tl.load(v_block, boundary_check=(0,), padding_option="zero")
        k_scale = tl.load(k_scales + full + offs_n, mask=full + offs_n < seq, other=0.0)
        acc, l_i, m_i = _tile(q, k, v, k_scale, row_factor, acc, l_i, m_i, full, seq, offs_n, True, V_FP8)
    _store(Out, VS, acc, l_i, bh, heads, seq, offs_m, stride_ob, stride_os, stride_oh, HEAD_DIM)


@triton.jit
def _quant_flash_tma(
    desc_q,
    desc_k,
    desc_v,
    QS,
    KS,
    VS,
    Out,
    seq,
    full,
    heads,
    qk_factor,
    stride_ob,
    stride_os,
    stride_oh,
    HEAD_DIM: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    V_FP8: tl.constexpr,
):
    """`_quant_flash` with tensor-descriptor loads: Q and K as [B·H·S, D], V as [B·H·D, S']. A tile that
    runs past its head's S rows reads the next head's (masked scores, unstored rows) or zeros."""
    start_m = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    row0 = (bh * seq).to(tl.int32)
    offs_m = start_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    q = desc_q.load([row0 + start_m * BLOCK_M, 0])
    row_factor = tl.load(QS + bh * seq + offs_m, mask=offs_m < seq, other=0.0) * qk_factor
    k_scales = KS + bh * seq
    v_row = (bh * HEAD_DIM).to(tl.int32)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    for start_n in range(0, full, BLOCK_N):
        k = desc_k.load([row0 + start_n, 0]).T
        v = desc_v.load([v_row, start_n]).T
        k_scale = tl.load(k_scales + start_n + offs_n)
        acc, l_i, m_i = _tile(q, k, v, k_scale, row_factor, acc, l_i, m_i, start_n, seq, offs_n, False, V_FP8)
    if full < seq:
        k = desc_k.load([row0 + full, 0]).T
        v = desc_v.load([v_row, full]).T
        k_scale = tl.load(k_scales + full + offs_n, mask=full + offs_n < seq, other=0.0)
        acc, l_i, m_i = _tile(q, k, v, k_scale, row_factor, acc, l_i, m_i, full, seq, offs_n, True, V_FP8)
    _store(Out, VS, acc, l_i, bh, heads, seq, offs_m, stride_ob, stride_os, stride_oh, HEAD_DIM)


def quant_flash(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    q_scale: Tensor,
    k_scale: Tensor,
    v_scale: Tensor,
    sm_scale: float,
    out_dtype: torch.dtype,
    config: KernelConfig | None = None,
) -> Tensor:
    """softmax(sm_scale · Q Kᵀ) V over the quantised tensors (layouts above); returns [B, S, H, D]. The
    tiles are `config`, else CONFIGS' for V's dtype."""
    config = config or CONFIGS.get(v.dtype, KernelConfig())
    batch, heads, seq, head_dim = q.shape
    out = torch.empty(batch, seq, heads, head_dim, dtype=out_dtype, device=q.device)
    grid = (triton.cdiv(seq, config.block_m), batch * heads)
    if config.tma:
        sources = (
            TensorDescriptor.from_tensor(q.view(-1, head_dim), [config.block_m, head_dim]),
            TensorDescriptor.from_tensor(k.view(-1, head_dim), [config.block_n, head_dim]),
            TensorDescriptor.from_tensor(v.view(-1, v.shape[-1]), [head_dim, config.block_n]),
        )
        kernel, strides = _quant_flash_tma, ()
    else:
        sources, kernel, strides = (q, k, v), _quant_flash, (v.stride(2),)
    kernel[grid](
        *sources,
        q_scale,
        k_scale,
        v_scale,
        out,
        seq,
        seq - seq % config.block_n,
        heads,
        sm_scale * LOG2E,
        *strides,
        out.stride(0),
        out.stride(1),
        out.stride(2),
        HEAD_DIM=head_dim,
        BLOCK_M=config.block_m,
        BLOCK_N=config.block_n,
        V_FP8=v.dtype == torch.float8_e4m3fn,
        num_warps=config.num_warps,
        num_stages=config.num_stages,
    )
    return out
