"""The fused decoder's memory-bound passes as plain Triton kernels over channels-last activations (CUDA).

A channels-last [B, C, T, H, W] activation is one row of C channels per position (b, t, h, w), so each pass
writes whole output rows from whole input rows: `pad_time` (the temporal replicate padding before a conv,
optionally after the per-position RMS norm and SiLU), `depth_to_space` (the upsampler's rearrangement) and
`residual` (a resnet's sum). Each can add the bias of the conv that produced its input, so that a conv runs
without one and its output is not read and written once more only to add it (PyTorch adds a cuDNN conv's
bias as a pass of its own: 0.12 s of a 1.0 s render span). For a streamed decode (`decoder.Stream`),
`pad_time` and `residual` also read a few frames kept from the chunk before, in front of the new ones,
from a tensor of their own: no concatenation copies the activation.

They replace torch.compile'd helpers that Dynamo re-traced in every process (13 graphs, 2.5–3.3 s before a
render's first window) and that could not compile on the decode thread; a process loads these from Triton's
cache in milliseconds, on whichever thread first decodes. Only the channel count (the row stride, which
vectorises the loads) and the flags pick a compiled kernel: Triton would otherwise compile one for each new
divisibility of the frame and row counts, i.e. for a song's first and last span, beside sampling or in the
tail of the render.
"""

from __future__ import annotations

import functools
from types import SimpleNamespace

import torch
from torch import Tensor

ROW_ELEMENTS = 4096  # channels × rows one program handles


@functools.cache
def kernels() -> SimpleNamespace | None:
    """The compiled-on-first-use kernels, or None without Triton (the decoder then runs its PyTorch form)."""
    try:
        import triton
        import triton.language as tl
    except ImportError:
        return None

    @triton.jit(do_not_specialize=["rows", "frames", "plane", "frames_out", "before", "held"])
    def pad_rows(
        x_ptr,
        bias_ptr,
        head_ptr,
        y_ptr,
        rows,
        frames,
        plane,
        frames_out,
        before,
        held,
        eps,
        C,
        BLOCK_C: tl.constexpr,
        BLOCK_R: tl.constexpr,
        BIAS: tl.constexpr,
        NORM: tl.constexpr,
    ):
        r = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
        c = tl.arange(0, BLOCK_C)
        b = r // (frames_out * plane)
        t = (r // plane) % frames_out
        src = (b * frames + tl.minimum(tl.maximum(t - held - before, 0), frames - 1)) * plane + r % plane
        mask = (r < rows)[:, None] & (c < C)[None, :]
        kept = (t < held)[:, None]
        v = tl.load(x_ptr + src[:, None] * C + c[None, :], mask=mask & ~kept, other=0.0)
        if BIAS:
            v = v.to(tl.float32) + tl.load(bias_ptr + c, mask=c < C, other=0.0).to(tl.float32)[None, :]
        if NORM:
            v = v.to(tl.float32)
            v = v * tl.rsqrt(tl.sum(v * v, axis=1) / C + eps)[:, None]
            v = v * tl.sigmoid(v)
        head = (b * held + t) * plane + r % plane
        v = tl.where(kept, tl.load(head_ptr + head[:, None] * C + c[None, :], mask=mask & kept), v)
        tl.store(y_ptr + r[:, None] * C + c[None, :], v.to(y_ptr.dtype.element_ty), mask=mask)

    @triton.jit(do_not_specialize=["rows", "frames", "height", "width", "drop"])
    def spread_rows(
        x_ptr,
        bias_ptr,
        y_ptr,
        rows,
        frames,
        height,
        width,
        drop,
        C,
        BLOCK_C: tl.constexpr,
        BLOCK_R: tl.constexpr,
        BIAS: tl.constexpr,
        ST: tl.constexpr,
        SH: tl.constexpr,
        SW: tl.constexpr,
    ):
        p = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
        c = tl.arange(0, BLOCK_C)
        w = p % width
        h = (p // width) % height
        t = (p // (width * height)) % frames
        b = p // (width * height * frames)
        frames_out = frames * ST - drop
        for k in tl.static_range(ST * SH * SW):
            t_out = t * ST + k // (SH * SW) - drop
            h_out = h * SH + (k // SW) % SH
            w_out = w * SW + k % SW
            row = ((b * frames_out + t_out) * height * SH + h_out) * width * SW + w_out
            keep = (p < rows) & (t_out >= 0)
            mask = keep[:, None] & (c < C)[None, :]
            channel = c * (ST * SH * SW) + k
            v = tl.load(x_ptr + p[:, None] * (C * ST * SH * SW) + channel[None, :], mask=mask)
            if BIAS:
                v = (
                    v.to(tl.float32)
                    + tl.load(bias_ptr + channel, mask=c < C, other=0.0).to(tl.float32)[None, :]
                )
            tl.store(y_ptr + row[:, None] * C + c[None, :], v.to(y_ptr.dtype.element_ty), mask=mask)

    @triton.jit(do_not_specialize=["rows", "frames", "plane", "held", "x_frames"])
    def add_rows(
        h_ptr,
        bias_ptr,
        head_ptr,
        x_ptr,
        y_ptr,
        rows,
        frames,
        plane,
        held,
        x_frames,
        C,
        BLOCK_C: tl.constexpr,
        BLOCK_R: tl.constexpr,
    ):
        r = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
        c = tl.arange(0, BLOCK_C)
        mask = (r < rows)[:, None] & (c < C)[None, :]
        b = r // (frames * plane)
        t = (r // plane) % frames
        kept = (t < held)[:, None]
        v = tl.load(h_ptr + r[:, None] * C + c[None, :], mask=mask).to(tl.float32)
        v = v + tl.load(bias_ptr + c, mask=c < C, other=0.0).to(tl.float32)[None, :]
        x_row = (b * x_frames + t - held) * plane + r % plane
        head_row = (b * held + t) * plane + r % plane
        v = v + tl.load(x_ptr + x_row[:, None] * C + c[None, :], mask=mask & ~kept, other=0.0).to(tl.float32)
        v = v + tl.load(head_ptr + head_row[:, None] * C + c[None, :], mask=mask & kept, other=0.0).to(
            tl.float32
        )
        tl.store(y_ptr + r[:, None] * C + c[None, :], v.to(y_ptr.dtype.element_ty), mask=mask)

    return SimpleNamespace(
        pad_rows=pad_rows, spread_rows=spread_rows, add_rows=add_rows, next_power_of_2=triton.next_power_of_2
    )


def _grid(rows: int, channels: int) -> tuple[tuple[int], int, int]:
    """The launch grid, BLOCK_C and BLOCK_R: all channels of a row in one block, ROW_ELEMENTS elements a
    program."""
    block_c = kernels().next_power_of_2(channels)
    block_r = max(1, ROW_ELEMENTS // block_c)
    return (-(-rows // block_r),), block_c, block_r


def channels_last(x: Tensor) -> Tensor:
    """x laid out NDHWC, the layout the decoder keeps every CUDA activation in (a no-op for those)."""
    return x.contiguous(memory_format=torch.channels_last_3d)


def _empty(x: Tensor, shape: tuple[int, ...]) -> Tensor:
    """An uninitialised channels-last tensor of `shape`, with x's dtype and device."""
    return torch.empty(shape, dtype=x.dtype, device=x.device, memory_format=torch.channels_last_3d)


def pad_time(
    x: Tensor,
    before: int,
    after: int,
    eps: float | None = None,
    bias: Tensor | None = None,
    head: Tensor | None = None,
) -> Tensor:
    """x [B, C, T, H, W] (plus a per-channel `bias`) with its first frame repeated `before` times and its
    last `after` times; with `eps`, of the per-position RMS norm over channels (that epsilon) and SiLU, in
    float32; with `head`, those frames copied as they are in front of it all (a streamed conv's input
    kept from the chunk before). Channels-last, in x's dtype."""
    x = channels_last(x)
    b, c, t, h, w = x.shape
    held = 0 if head is None else head.shape[2]
    out = _empty(x, (b, c, held + t + before + after, h, w))
    rows = out.numel() // c
    grid, block_c, block_r = _grid(rows, c)
    kernels().pad_rows[grid](
        x,
        x if bias is None else bias,
        x if head is None else channels_last(head),
        out,
        rows,
        t,
        h * w,
        out.shape[2],
        before,
        held,
        0.0 if eps is None else eps,
        c,
        BLOCK_C=block_c,
        BLOCK_R=block_r,
        BIAS=bias is not None,
        NORM=eps is not None,
    )
    return out


def depth_to_space(
    x: Tensor, stride: tuple[int, int, int], bias: Tensor | None = None, drop: bool = True
) -> Tensor:
    """The upsampler's rearrangement of x [B, C·st·sh·sw, T, H, W] (plus a per-channel `bias`; channels
    (c, st, sh, sw)) into [B, C, T·st, H·sh, W·sw], less the first st−1 frames with `drop`: channels-last,
    one pass."""
    x = channels_last(x)
    b, k, t, h, w = x.shape
    st, sh, sw = stride
    c = k // (st * sh * sw)
    dropped = st - 1 if drop else 0
    out = _empty(x, (b, c, t * st - dropped, h * sh, w * sw))
    rows = b * t * h * w
    grid, block_c, block_r = _grid(rows, c)
    kernels().spread_rows[grid](
        x,
        x if bias is None else bias,
        out,
        rows,
        t,
        h,
        w,
        dropped,
        c,
        BLOCK_C=block_c,
        BLOCK_R=block_r,
        BIAS=bias is not None,
        ST=st,
        SH=sh,
        SW=sw,
    )
    return out


def residual(h: Tensor, bias: Tensor, x: Tensor, head: Tensor | None = None) -> Tensor:
    """h + bias + x (h [B, C, T, H, W], bias per channel), summed in float32, where x is `head`'s frames,
    then its own, of which the first T are summed (a streamed resnet's input frames kept from the chunk
    before lead): channels-last, in h's dtype."""
    h, x = channels_last(h), channels_last(x)
    held = 0 if head is None else head.shape[2]
    if not held <= h.shape[2] <= held + x.shape[2]:
        raise ValueError(f"{held} kept and {x.shape[2]} new frames cannot be summed with {h.shape[2]}")
    out = _empty(h, h.shape)
    _, c, t, height, width = h.shape
    rows = h.numel() // c
    grid, block_c, block_r = _grid(rows, c)
    kernels().add_rows[grid](
        h,
        bias,
        x if head is None else channels_last(head),
        x,
        out,
        rows,
        t,
        height * width,
        held,
        x.shape[2],
        c,
        BLOCK_C=block_c,
        BLOCK_R=block_r,
    )
    return out
