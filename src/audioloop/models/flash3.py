"""FlashAttention-3's forward kernel (the optional fa3-fwd package: FA3's Hopper forward, prebuilt against
PyTorch's stable ABI for CUDA 13) as one PyTorch custom op, for the transformer's unmasked attentions on
Hopper.

It is compiled ahead of time, so unlike FA4 there is no JIT compile on first use and no kernel cache; the
import loads one shared library. The op is opaque to Dynamo, so the compiled blocks call it as they call
SDPA.
"""

from __future__ import annotations

import importlib.util

import torch
from torch import Tensor

NAME = "fa3"
INSTALL = "pip install 'audioloop[fa3]'"
# FA3's forward is written for Hopper's wgmma and TMA: sm_90 only.
CAPABILITY = 9
# fa3-fwd 0.0.3's library links CUDA 13's runtime (libcudart.so.13), which only a CUDA 13 torch brings.
CUDA = "13"


def missing(device: torch.device) -> str | None:
    """Why `--attention fa3` cannot run on `device` (a one-line message naming the fix), or None."""
    if device.type != "cuda":
        return f"--attention {NAME} needs a CUDA GPU, not {device}; use --attention sdpa"
    major, minor = torch.cuda.get_device_capability(device)
    if major != CAPABILITY:
        gpu = torch.cuda.get_device_name(device)
        return f"--attention {NAME} needs a Hopper GPU; {gpu} is sm_{major}{minor}: use sdpa"
    if (cuda := torch.version.cuda or "none").split(".")[0] != CUDA:
        return f"--attention {NAME} needs a CUDA {CUDA} build of torch, not CUDA {cuda}: use fa4"
    if importlib.util.find_spec("fa3_fwd_interface") is None:
        return f"--attention {NAME} needs the fa3-fwd package: {INSTALL}"
    return None


def forward(query: Tensor, key: Tensor, value: Tensor) -> Tensor:
    """softmax(q·kᵀ/√d)·v on [B, T, H, D] by FA3."""
    from fa3_fwd_interface import flash_attn_func

    return flash_attn_func(query, key, value)


@torch.library.custom_op("audioloop::flash3", mutates_args=())
def flash3(query: Tensor, key: Tensor, value: Tensor) -> Tensor:
    """Unmasked, non-causal attention on [B, T, H, D] → [B, T, H, Dv], by `forward`."""
    return forward(query, key, value)


@flash3.register_fake
def _(query: Tensor, key: Tensor, value: Tensor) -> Tensor:
    return query.new_empty((*query.shape[:-1], value.shape[-1]))
