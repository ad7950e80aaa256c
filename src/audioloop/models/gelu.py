"""The feed-forwards' tanh GELU: on CUDA in the up-projection's GEMM epilogue, elsewhere as x·σ(2u).

Every block's FF applies it to [N, 16384] (24,960 tokens at 832×480). On CUDA cuBLASLt adds the bias and
applies the GELU as the GEMM writes its output (`torch._addmm_activation`, which inductor keeps as one
call), so the pre-activation is never written and read back: on an H200 the up-projection with its GELU
takes 4.69 ms a block against 4.91 ms for the GEMM and a compiled GELU pass, with one rounding instead of
two (0.17% against 0.26% from fp32), and the bf16 step 20 ms less (bench/projections.py,
bench/step_variants.py). Elsewhere it is ½x(1 + tanh u) = x·σ(2u) for
u = √(2/π)(x + 0.044715x³): the same function with one exp in place of a tanh, which compiled is one pass
(bench/quantize.py). The FP8 FFs fuse it with the quantisation after it instead (`models/fp8.py`).
"""

from __future__ import annotations

import math

import torch
from diffusers.models.activations import GELU
from torch import Tensor, nn

SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
CUBIC = 0.044715  # u = √(2/π)(x + CUBIC·x³)


def gelu_tanh(x: Tensor) -> Tensor:
    """F.gelu(x, approximate="tanh"), computed in fp32 as x·σ(2u) and returned in x's dtype."""
    y = x.float()
    return (y * torch.sigmoid(2.0 * SQRT_2_OVER_PI * (y + CUBIC * y * y * y))).to(x.dtype)


def addmm_gelu(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """GELU(x·Wᵀ + b) for x [..., K] as one `torch._addmm_activation` GEMM with the GELU in its epilogue:
    the tanh form on CUDA (cuBLASLt), the exact erf form on the CPU (ATen's own rule)."""
    rows = x.reshape(-1, x.shape[-1])
    out = torch._addmm_activation(bias, rows, weight.t(), use_gelu=True)
    return out.view(*x.shape[:-1], out.shape[-1])


class FastGELU(GELU):
    """diffusers' tanh GELU block (projection, then activation) with the two as one GEMM on CUDA where the
    projection is a plain biased linear; otherwise the projection, then `gelu_tanh`."""

    def forward(self, hidden_states: Tensor) -> Tensor:
        """GELU(proj(x)), by `addmm_gelu` on CUDA, else by `gelu_tanh`."""
        proj = self.proj
        if hidden_states.is_cuda and type(proj) is nn.Linear and proj.bias is not None:
            return addmm_gelu(hidden_states, proj.weight, proj.bias)
        return gelu_tanh(proj(hidden_states))


def use_fast_gelu(model: nn.Module) -> int:
    """Make every tanh-approximate diffusers GELU in `model` a `FastGELU`, in place (same module, same
    weights; idempotent); returns how many it covers."""
    modules = [m for m in model.modules() if isinstance(m, GELU) and m.approximate == "tanh"]
    for module in modules:
        module.__class__ = FastGELU
    return len(modules)
