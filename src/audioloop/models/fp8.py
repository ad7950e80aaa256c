"""FP8 linears, and feed-forwards whose GELU and down-projection quantisation run as one pass over a row.

`Fp8Linear`: e4m3 weights with one scale per output channel (or one), activations quantised per token (or
per tensor) at each call, one `torch._scaled_mm` with the bias fused.

An FP8 block's FF is up-projection → GELU → quantise per row (`quantize_rows`) → down-projection.
Compiled, inductor makes the middle a two-loop reduction over each [16384] row (absmax, then quantise) that
reads the row and computes the GELU twice: 1.26–1.38 ms a block at 832×480 on an H200 (1.0 ms with the GELU
as x·σ(2u)), against 0.40 ms for one Triton pass holding the row in registers (3.1 TB/s, bench/quantize.py).
`use_fused_gelu` makes every FF whose projections are `Fp8Linear`s, the down one row-wise, an
`Fp8FeedForward` with that pass on CUDA (the same math in PyTorch elsewhere).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from diffusers.models.activations import GELU
from diffusers.models.attention import FeedForward
from torch import Tensor, nn

from audioloop.models.gelu import CUBIC, SQRT_2_OVER_PI, gelu_tanh

FP8_MAX = torch.finfo(torch.float8_e4m3fn).max  # 448
MAX_ROW = 16384  # a row in registers: 32 fp32 values a thread at 16 warps; longer rows take the PyTorch path

RowQuantizer = Callable[[Tensor], tuple[Tensor, Tensor]]


def quantize_rows(x: Tensor) -> tuple[Tensor, Tensor]:
    """x [M, K] → e4m3 [M, K] and fp32 scales [M, 1], each row's absmax mapped to 448 (x ≈ q·scale)."""
    scale = x.abs().amax(dim=-1, keepdim=True).float().clamp(min=1e-12) / FP8_MAX
    return (x.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn), scale


def quantize_tensor(x: Tensor) -> tuple[Tensor, Tensor]:
    """x → e4m3 and one fp32 scale for the whole tensor, its absmax mapped to 448 (x ≈ q·scale)."""
    scale = x.abs().amax().float().clamp(min=1e-12) / FP8_MAX
    return (x.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn), scale


class Fp8Linear(nn.Module):
    """y = x·Wᵀ + b on FP8 tensor cores: W in e4m3 with per-output-channel (or one) scale, x quantised per
    token (or per tensor) at each call, the product accumulated and returned in x's dtype."""

    def __init__(self, linear: nn.Linear, rowwise: bool, fast_accum: bool) -> None:
        """Quantise `linear`'s weight; keep its bias in the compute dtype."""
        super().__init__()
        self.rowwise, self.fast_accum = rowwise, fast_accum
        weight, scale = (quantize_rows if rowwise else quantize_tensor)(linear.weight.detach())
        self.register_buffer("weight", weight)
        self.register_buffer("weight_scale", scale.t() if rowwise else scale)  # [1, N] or []
        bias = linear.bias.detach() if linear.bias is not None else None
        self.register_buffer("bias", bias)

    @property
    def in_features(self) -> int:
        """K, as nn.Linear has it."""
        return self.weight.shape[1]

    @property
    def out_features(self) -> int:
        """N, as nn.Linear has it."""
        return self.weight.shape[0]

    def forward(self, x: Tensor) -> Tensor:
        """Quantise x's rows, one scaled FP8 matmul with the bias fused, back to x's shape and dtype."""
        rows, scale = (quantize_rows if self.rowwise else quantize_tensor)(x.reshape(-1, x.shape[-1]))
        return self.project(rows, scale, x.dtype).reshape(*x.shape[:-1], self.out_features)

    def project(self, rows: Tensor, scale: Tensor, dtype: torch.dtype) -> Tensor:
        """The scaled FP8 matmul of rows already quantised ([M, K] e4m3, scales as `forward` makes them),
        bias fused: [M, N] in `dtype`."""
        bias = None if self.bias is None else self.bias.to(dtype)
        return torch._scaled_mm(
            rows,
            self.weight.t(),
            scale_a=scale,
            scale_b=self.weight_scale,
            bias=bias,
            out_dtype=dtype,
            use_fast_accum=self.fast_accum,
        )


def gelu_quantize_rows(x: Tensor) -> tuple[Tensor, Tensor]:
    """tanh-GELU of x [M, K], quantised per row as `quantize_rows` does: e4m3 [M, K], scales [M, 1]."""
    return quantize_rows(gelu_tanh(x))


@functools.cache
def triton_gelu_quantize_rows() -> RowQuantizer | None:
    """`gelu_quantize_rows` as one Triton kernel for CUDA tensors (one program a row), or None without
    Triton. Same GELU (x·σ(2u)); the quantisation multiplies by 448/absmax, so a value may land one e4m3
    step from the division's at a rounding tie. One launcher per process: every block holds the same."""
    try:
        import triton
        import triton.language as tl
    except ImportError:
        return None

    @triton.jit
    def kernel(
        x_ptr,
        q_ptr,
        s_ptr,
        K: tl.constexpr,
        BLOCK: tl.constexpr,
        LIMIT: tl.constexpr,
        TWO_C: tl.constexpr,
        CUBIC: tl.constexpr,
    ):
        row = tl.program_id(0).to(tl.int64)
        offs = tl.arange(0, BLOCK)
        x = tl.load(x_ptr + row * K + offs, mask=offs < K, other=0.0).to(tl.float32)
        g = x / (1.0 + tl.exp(-TWO_C * (x + CUBIC * x * x * x)))  # x·σ(2u), as gelu_tanh
        amax = tl.maximum(tl.max(tl.abs(g), 0), 1e-12)
        q = tl.clamp(g * (LIMIT / amax), -LIMIT, LIMIT)
        tl.store(q_ptr + row * K + offs, q.to(tl.float8e4nv), mask=offs < K)
        tl.store(s_ptr + row, amax / LIMIT)

    def launch(x: Tensor) -> tuple[Tensor, Tensor]:
        """Both outputs of one kernel launch over x's rows (x contiguous, CUDA)."""
        m, k = x.shape
        q = torch.empty(m, k, device=x.device, dtype=torch.float8_e4m3fn)
        s = torch.empty(m, 1, device=x.device, dtype=torch.float32)
        kernel[(m,)](
            x,
            q,
            s,
            K=k,
            BLOCK=triton.next_power_of_2(k),
            LIMIT=FP8_MAX,
            TWO_C=2.0 * SQRT_2_OVER_PI,
            CUBIC=CUBIC,
            num_warps=16,
        )
        return q, s

    return launch


class Fp8FeedForward(nn.Module):
    """A diffusers FF (tanh GELU, no dropout) whose projections are `Fp8Linear`s (the down one row-wise), with
    the GELU and the down-projection's quantisation as one `gelu_quantize` call. A class of its own, with the
    same `gelu_quantize` object in every block, so the blocks still share one compiled graph."""

    def __init__(self, ff: FeedForward, gelu_quantize: RowQuantizer) -> None:
        """Take over `ff`'s two projections (the same modules, not copies)."""
        super().__init__()
        self.up, self.down = ff.net[0].proj, ff.net[2]
        self.gelu_quantize = gelu_quantize

    def forward(self, x: Tensor) -> Tensor:
        """up → GELU and row quantisation → down, in x's dtype and shape (last axis: the FF's output)."""
        hidden = self.up(x)
        rows, scale = self.gelu_quantize(hidden.reshape(-1, hidden.shape[-1]).contiguous())
        return self.down.project(rows, scale, hidden.dtype).reshape(*x.shape[:-1], self.down.out_features)


def fusable(ff: nn.Module) -> bool:
    """A diffusers FF of tanh-GELU, no-op dropout and FP8 projections on both sides, the down one row-wise
    (its input is what the one pass quantises)."""
    if not isinstance(ff, FeedForward) or len(ff.net) < 3:
        return False
    gelu, dropout, down = ff.net[0], ff.net[1], ff.net[2]
    tail = [m for m in ff.net[3:] if not (isinstance(m, nn.Dropout) and m.p == 0.0)]
    return (
        isinstance(gelu, GELU)
        and gelu.approximate == "tanh"
        and isinstance(gelu.proj, Fp8Linear)
        and isinstance(dropout, nn.Dropout)
        and dropout.p == 0.0
        and isinstance(down, Fp8Linear)
        and down.rowwise
        and not tail
    )


def use_fused_gelu(model: nn.Module, device: torch.device) -> int:
    """Replace every fusable FF below `model` by its `Fp8FeedForward` (the Triton pass on CUDA for rows up
    to MAX_ROW, the PyTorch form otherwise), in place; idempotent. Returns how many it replaced."""
    kernel = triton_gelu_quantize_rows() if device.type == "cuda" else None
    count = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if fusable(child):
                short = kernel is not None and child.net[0].proj.out_features <= MAX_ROW
                setattr(parent, name, Fp8FeedForward(child, kernel if short else gelu_quantize_rows))
                count += 1
    return count
