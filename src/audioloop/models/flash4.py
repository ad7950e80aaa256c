"""FlashAttention-4's forward kernel (the optional flash-attn-4 package, written in NVIDIA's CuTe DSL) as one
PyTorch custom op, for the transformer's unmasked attentions on Hopper and Blackwell.

At the video self-attention's 24,960 tokens on an H200 it is 1.10× cuDNN's bf16 kernel (the one SDPA picks)
with the same error against fp32 (bench/attention_fa4.py). The op is opaque to Dynamo, so the compiled blocks
call it as they call SDPA. Its kernels compile on first use (about 2 s per head size) into a cache under
the audioloop cache dir, which a second process loads in milliseconds. Importing the package takes seconds
(3.4 s on the GPU machine), so a render starts it on a thread of its own (`preload`) while it loads the
models and encodes the prompts.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import threading
from pathlib import Path

import torch
from torch import Tensor

NAME = "fa4"
INSTALL = "pip install 'audioloop[fa4]'"
# flash-attn-4's CuTe DSL forward: Hopper (sm_90) and Blackwell data-centre chips (sm_100, sm_103).
CAPABILITIES = (9, 10)


def missing(device: torch.device) -> str | None:
    """Why `--attention fa4` cannot run on `device` (a one-line message naming the fix), or None."""
    if device.type != "cuda":
        return f"--attention {NAME} needs a CUDA GPU, not {device}; use --attention sdpa"
    major, minor = torch.cuda.get_device_capability(device)
    if major not in CAPABILITIES:
        gpu = torch.cuda.get_device_name(device)
        return f"--attention {NAME} needs a Hopper or Blackwell GPU; {gpu} is sm_{major}{minor}: use sdpa"
    if importlib.util.find_spec("flash_attn") is None or importlib.util.find_spec("flash_attn.cute") is None:
        return f"--attention {NAME} needs the flash-attn-4 package: {INSTALL}"
    return None


def use_kernel_cache(path: Path) -> Path:
    """Keep FA4's compiled kernels in `path` across processes (read when flash-attn-4 is first imported, so
    call this before); a cache the user already chose is kept."""
    path.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("FLASH_ATTENTION_CUTE_DSL_CACHE_ENABLED", "1")
    os.environ.setdefault("FLASH_ATTENTION_CUTE_DSL_CACHE_DIR", str(path))
    return path


def preload(cache: Path) -> threading.Thread:
    """Point the kernel cache at `cache` and import flash-attn-4's kernels module on a daemon thread, so the
    first attention call finds it done (that call waits on the import lock if it is still running). A
    failed import is left for that call to raise: Python does not keep half-imported modules."""
    use_kernel_cache(cache)

    def load() -> None:
        try:
            importlib.import_module("flash_attn.cute")
        except Exception:  # raised again, with its traceback, by the first call's own import
            return

    thread = threading.Thread(target=load, name="audioloop-fa4-import", daemon=True)
    thread.start()
    return thread


def forward(query: Tensor, key: Tensor, value: Tensor) -> Tensor:
    """softmax(q·kᵀ/√d)·v on [B, T, H, D] by FA4 (the import, seconds long, happens on the first call)."""
    from flash_attn.cute import flash_attn_func

    return flash_attn_func(query, key, value)[0]


@torch.library.custom_op("audioloop::flash4", mutates_args=())
def flash4(query: Tensor, key: Tensor, value: Tensor) -> Tensor:
    """Unmasked, non-causal attention on [B, T, H, D] → [B, T, H, Dv], by `forward`."""
    return forward(query, key, value)


@flash4.register_fake
def _(query: Tensor, key: Tensor, value: Tensor) -> Tensor:
    return query.new_empty((*query.shape[:-1], value.shape[-1]))
