"""Speed and memory for the LTX-2.3 transformer: regional compile, attention kernel, compile cache, FP8,
offload.

Everything acts on a loaded `LTX2VideoTransformer3DModel` in place, through `accelerate(transformer, settings,
device)`, and leaves its forward signature alone, so the sampler runs unchanged.

- Compile: each of the 48 blocks' `forward` goes through `torch.compile(fullgraph=True, dynamic=False)`, with
  the video token count marked symbolic by a pre-hook (window 0 has one frame of guide tokens fewer than
  windows ≥ 1). The blocks share one code object, hence one graph for every layout, traced once a process;
  nothing else varies between steps (sigmas arrive as tensors). Hooks stay outside the compiled region,
  which is what lets the offload streamer run around it. Compiled, the bf16 FFs' tanh GELU runs in
  the up-projection's cuBLASLt epilogue on CUDA, as x·σ(2u) elsewhere (`models/gelu.py`), and every
  row reduction of up to 4,096 elements (the norms, the FP8 row quantisation) holds its row in
  registers (`models/reductions.py`): one read of the row instead of one per dependent reduction.
- Attention: SDPA's choice (cuDNN's kernel on Hopper) by default; `fa4` sends the RoPE attentions' unmasked
  calls to FlashAttention-4's forward (`models/flash4.py`, the optional flash-attn-4 package), 1.10× cuDNN's;
  `fa3` sends them to FlashAttention-3's prebuilt Hopper forward (`models/flash3.py`, fa3-fwd).
- The compile cache: inductor's FX-graph, AOT-autograd, autotune and Triton caches live under the audioloop
  cache dir, so a second process skips the inductor and Triton work.
- FP8 (`torch._scaled_mm`, Hopper or Ada): chosen linears become `models/fp8.py`'s `Fp8Linear` — e4m3 weights
  with one scale per output channel, activations quantised per token (row-wise) on the fly, which inductor
  fuses with the op that produces them; each FF's GELU and the quantisation after it are one Triton pass.
  Plain tensors, no tensor subclass: the compile costs what bf16's does.
- Offload: the blocks' weights sit in pinned host memory and stream into two device slots on a side stream,
  one block ahead of the compute; only the non-block layers stay resident.
- Memory, every mode: the video adaLN modulation from each sample's two timestep levels instead of one
  row per token (`models/modulation.py`): a 1.9 GiB lower peak at 832×480, 4.3 GiB at 1280×704; RoPE
  without fp32 copies of q and k and with compact tables (`models/attention.py`, `models/rope.py`):
  0.8 GiB lower at 832×480, 1.7 GiB at 1280×704.

Measured at 832×480×497 on an H200 (bench/RESULTS.md, tenth session): compiled bf16 0.746× the stock step,
FP8 "all" 0.588× (with `fa4`, fourteenth session: 0.719× and 0.554×; with the GELU epilogue too,
fifteenth: 0.711× and 0.556× on a slower machine); offload 1.006× / 0.995× its
resident mode at 4.0 / 3.5 GiB; peaks bf16 37.2 GiB (39.35 GiB at 1280×704), FP8 20.1 GiB (22.5 GiB).
A second process's FP8 warm-up (thirteenth session): window 0's layout 6.5 s, window 1's 0.1 s (one
graph), the decoder 2.5 s.
"""

from __future__ import annotations

import fnmatch
import os
import threading
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from diffusers import LTX2VideoTransformer3DModel
from diffusers.models.attention_dispatch import _AttentionBackendRegistry
from torch import Tensor, nn
from torch._inductor.runtime import compile_tasks

from audioloop.models import flash3, flash4
from audioloop.models.attention import KERNELS, RotaryAttnProcessor, use_rotary_attention
from audioloop.models.fp8 import Fp8Linear, use_fused_gelu
from audioloop.models.gelu import use_fast_gelu
from audioloop.models.modulation import TokenLevels, use_two_level_modulation
from audioloop.models.reductions import use_persistent_rows
from audioloop.models.rope import RopeIndex
from audioloop.workdir import cache_dir

# Our attention names → diffusers attention backends. "sdpa" lets PyTorch pick per call; "fa4" and "fa3" are
# ours (`models/flash4.py`, `models/flash3.py`) for the RoPE attentions' unmasked calls, and SDPA's choice
# for every other call.
ATTENTION = {
    "sdpa": "native",
    "cudnn": "_native_cudnn",
    "flash": "_native_flash",
    "efficient": "_native_efficient",
    flash4.NAME: "native",
    flash3.NAME: "native",
}
# The linears of a block that run on video tokens (M = 24,960 rows at 832×480): 99% of its matmul FLOPs.
VIDEO_LINEARS = (
    "attn1.to_q",
    "attn1.to_k",
    "attn1.to_v",
    "attn1.to_out.0",
    "attn2.to_q",
    "attn2.to_out.0",
    "audio_to_video_attn.to_q",
    "audio_to_video_attn.to_out.0",
    "video_to_audio_attn.to_k",
    "video_to_audio_attn.to_v",
    "ff.net.0.proj",
    "ff.net.2",
)
# Video tokens a compiled block graph takes: the FF's [N, 4·4096] stays under 2³¹ elements (int32 indices).
MAX_VIDEO_TOKENS = (2**31 - 1) // (4 * 4096)


@dataclass(frozen=True)
class Fp8Recipe:
    """Which block linears run in FP8 (names relative to a block, fnmatch patterns), which blocks stay bf16
    whole (negative indices count from the end), row-wise or tensor-wise scales, Hopper fast accumulation."""

    layers: tuple[str, ...] = VIDEO_LINEARS
    bf16_blocks: tuple[int, ...] = ()
    rowwise: bool = True
    fast_accum: bool = True


# Measured at 832×480×497 on an H100 (bench/RESULTS.md): step vs stock bf16, peak GPU, per-block error
# (video / audio stream) against fp32. "all" is the default: as fast as "video" and the only one ≤ 24 GiB.
FP8_RECIPES: dict[str, Fp8Recipe] = {
    "all": Fp8Recipe(layers=("*",)),  # 0.61×, 22.6 GiB, 3.8% / 1.7%
    "video": Fp8Recipe(),  # 0.61×, 27.9 GiB, 3.6% / 1.1%
    "video-exact": Fp8Recipe(fast_accum=False),  # 0.66×, same error: accumulation is not the error
    "video-tensorwise": Fp8Recipe(rowwise=False),  # 0.63×, 3.8% / 1.3%
    "video-edges": Fp8Recipe(bf16_blocks=(0, -1)),  # for trained weights' sensitive ends; not timed
    "video-no-out": Fp8Recipe(
        layers=tuple(n for n in VIDEO_LINEARS if not n.endswith("to_out.0"))
    ),  # 0.63×, 2.8%
    "ff": Fp8Recipe(layers=("ff.net.0.proj", "ff.net.2")),  # 0.68×, 33.9 GiB, 1.8% / 0.4%
}
DEFAULT_FP8 = "all"


@dataclass(frozen=True)
class AccelSettings:
    """How the transformer runs: compiled or eager, the attention kernel (SDPA's own choice is the fastest on
    H100: it picks cuDNN's kernel without diffusers' extra copies), FP8 recipe name or None, blocks streamed
    from host memory or resident."""

    compile: bool = True
    attention: str = "sdpa"
    fp8: str | None = None
    offload: bool = False

    def __post_init__(self) -> None:
        """Refuse names that do not exist, naming the ones that do."""
        if self.attention not in ATTENTION:
            raise ValueError(f"--attention {self.attention}: choose one of {', '.join(ATTENTION)}")
        if self.fp8 is not None and self.fp8 not in FP8_RECIPES:
            raise ValueError(f"FP8 recipe {self.fp8!r}: choose one of {', '.join(FP8_RECIPES)}")


def check_device(settings: AccelSettings, device: torch.device) -> None:
    """Refuse FA4, FP8 and offload where they cannot run (`check_attention`, then `check_modes`)."""
    check_attention(settings, device)
    check_modes(settings, device)


def check_attention(settings: AccelSettings, device: torch.device) -> None:
    """Refuse FA4 or FA3 where it cannot run: each needs its GPUs and its package."""
    kernel = {flash4.NAME: flash4, flash3.NAME: flash3}.get(settings.attention)
    if kernel and (why := kernel.missing(device)):
        raise ValueError(why)


def check_modes(settings: AccelSettings, device: torch.device) -> None:
    """Refuse FP8 and offload where they cannot run: both need CUDA, FP8 also FP8 matmuls (sm_89+)."""
    if (settings.fp8 or settings.offload) and device.type != "cuda":
        raise ValueError(f"--fp8 and --offload need a CUDA device, not {device}")
    if settings.fp8 and torch.cuda.get_device_capability(device) < (8, 9):
        name = torch.cuda.get_device_name(device)
        raise ValueError(f"--fp8 needs FP8 matmuls (Ada or Hopper, sm_89+); {name} has none")


def start_early(settings: AccelSettings, device: torch.device, dtype: torch.dtype) -> None:
    """What can begin before the models load, each on a daemon thread: FA4's seconds-long import, and on
    CUDA cuDNN's first use (loading its engines), which the image encode or the text stage would otherwise
    wait for (0.4 s on an H200, bench/RESULTS.md)."""
    if settings.attention == flash4.NAME:
        flash4.preload(cache_dir() / "flash4")
    if device.type == "cuda":
        threading.Thread(
            target=first_convolution, args=(device, dtype), name="audioloop-cudnn", daemon=True
        ).start()


def first_convolution(device: torch.device, dtype: torch.dtype) -> None:
    """One tiny 3-D convolution: what loads cuDNN's libraries and engines for every later one. A failure is
    left for the render's own first use of the device to report, with its message."""
    try:
        x = torch.zeros(1, 8, 3, 8, 8, device=device, dtype=dtype)
        nn.functional.conv3d(x, torch.zeros(8, 8, 3, 3, 3, device=device, dtype=dtype))
        torch.cuda.synchronize(device)
    except (RuntimeError, AssertionError):  # AssertionError: a torch built without CUDA
        return


def compile_cache_dir(env: Mapping[str, str] | None = None) -> Path:
    """Where compiled kernels persist between runs: `inductor/` under the audioloop cache dir."""
    return cache_dir(env) / "inductor"


def use_compile_cache(path: Path) -> Path:
    """Send inductor's FX-graph, AOT-autograd, autotune and Triton caches to `path` (before compiling).

    Triton's goes to `path/triton` for every kernel, the decoder's own too, and Triton uses torch's own
    ptxas, which inductor otherwise picks only in a process that compiles. A Triton kernel's cache key holds
    the ptxas version: the decoder's kernels from a cold process were missed by the warm one after it,
    which compiled them again beside window 1 (12 s on an H200)."""
    path.mkdir(parents=True, exist_ok=True)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(path)
    os.environ["TRITON_CACHE_DIR"] = str(path / "triton")
    compile_tasks._set_triton_ptxas_path()
    torch._inductor.config.fx_graph_cache = True
    torch._functorch.config.enable_autograd_cache = True
    return path


def compile_blocks(transformer: LTX2VideoTransformer3DModel, backend: str = "inductor") -> None:
    """Compile each block's forward with static shapes except the video token count and the RoPE tables'
    distinct positions (`mark_video_tokens`): one graph for every window layout, shared by all blocks."""
    levels = getattr(transformer.time_embed, "levels", None)
    for block in transformer.transformer_blocks:
        block.forward = torch.compile(block.forward, fullgraph=True, dynamic=False, backend=backend)
        block.register_forward_pre_hook(partial(mark_video_tokens, levels), with_kwargs=True)


def mark_video_tokens(levels: TokenLevels | None, _block: nn.Module, _args: tuple, kwargs: dict) -> None:
    """Make a block call's video token dims symbolic for Dynamo (a pre-hook): window 0 has one latent frame
    of tokens fewer than windows ≥ 1 (no guide) and one distinct time position fewer, and nothing else of
    a call differs, so one graph serves both, traced once a process instead of twice. Marked: dim 1 of the
    per-token inputs (hidden states; stock diffusers' per-token modulation), the token levels, dim 2 of
    the video RoPE (full tables, or compact tables and their index). The bound keeps the widest per-token
    tensor (the FF's 4·4096) within int32 indexing; a larger window compiles a graph of its own."""

    def mark(tensor: Tensor, dim: int) -> None:
        torch._dynamo.mark_dynamic(tensor, dim, min=2, max=MAX_VIDEO_TOKENS)

    tokens = kwargs["hidden_states"].shape[1]
    if tokens > MAX_VIDEO_TOKENS:
        return
    for value in kwargs.values():
        if isinstance(value, Tensor) and value.ndim > 1 and value.shape[1] == tokens:
            mark(value, 1)
    for name in ("video_rotary_emb", "ca_video_rotary_emb"):
        rope = kwargs.get(name)
        for tensor in (rope.cos, rope.sin, rope.index) if isinstance(rope, RopeIndex) else rope or ():
            mark(tensor, 2)
    if levels is not None and levels.top is not None:
        mark(levels.top, 1)


def set_attention(transformer: LTX2VideoTransformer3DModel, name: str) -> None:
    """Route every attention of the transformer (NAG's included, which copies it) to one kernel, and only
    the transformer's: diffusers' `set_attention_backend` also makes its kernel the process-wide default of
    every processor without one of its own (the text connectors, any other model), which is put back."""
    active, _ = _AttentionBackendRegistry.get_active_backend()
    transformer.set_attention_backend(ATTENTION[name])
    _AttentionBackendRegistry.set_active_backend(active)
    if name in KERNELS:  # only `attend` knows the name: set where the processor calls it
        for module in transformer.modules():
            if isinstance(getattr(module, "processor", None), RotaryAttnProcessor):
                module.processor._attention_backend = name


def fp8_layer_names(transformer: LTX2VideoTransformer3DModel, recipe: Fp8Recipe) -> list[str]:
    """Full names of the linears `recipe` turns into FP8: matching block linears outside the bf16 blocks, with
    both dimensions multiples of 16 (what `_scaled_mm` accepts)."""
    count = len(transformer.transformer_blocks)
    kept = {index % count for index in recipe.bf16_blocks}
    names = []
    for index, block in enumerate(transformer.transformer_blocks):
        if index in kept:
            continue
        for name, module in block.named_modules():
            aligned = (
                isinstance(module, nn.Linear) and module.in_features % 16 == module.out_features % 16 == 0
            )
            if aligned and any(fnmatch.fnmatchcase(name, pattern) for pattern in recipe.layers):
                names.append(f"transformer_blocks.{index}.{name}")
    return names


def quantize_fp8(transformer: LTX2VideoTransformer3DModel, recipe: Fp8Recipe, names: list[str]) -> None:
    """Replace each named linear by its `Fp8Linear` in place, where the linear lives (on-device is fast)."""
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = transformer.get_submodule(parent_name)
        setattr(parent, child, Fp8Linear(getattr(parent, child), recipe.rowwise, recipe.fast_accum))


def _block_tensors(block: nn.Module) -> list[tuple[nn.Module, str, Tensor]]:
    """Every parameter and buffer of a block as (owner module, attribute name, tensor), in a fixed order."""
    found = []
    for module in block.modules():
        for name, tensor in [*module._parameters.items(), *module._buffers.items()]:
            if tensor is not None:
                found.append((module, name, tensor))
    return found


def _offsets(tensors: list[Tensor], align: int = 256) -> tuple[list[int], int]:
    """Byte offsets of tensors packed one after another (each aligned), and the packed size."""
    offsets, end = [], 0
    for tensor in tensors:
        start = -(-end // align) * align
        offsets.append(start)
        end = start + tensor.numel() * tensor.element_size()
    return offsets, end


def _view(buffer: Tensor, offset: int, like: Tensor) -> Tensor:
    """A tensor shaped and typed like `like` over `buffer`'s bytes from `offset`."""
    size = like.numel() * like.element_size()
    return buffer[offset : offset + size].view(like.dtype).view(like.shape)


def _pinned(size: int) -> Tensor:
    """A page-locked host byte buffer of exactly `size` bytes (torch's pinned allocator would round a block's
    0.77 GB up to 1 GiB, 13 GiB of host memory wasted over 48 bf16 blocks)."""
    buffer = torch.empty(size, dtype=torch.uint8)
    cudart = torch.cuda.cudart()
    torch.cuda.check_error(cudart.cudaHostRegister(buffer.data_ptr(), size, 0))
    weakref.finalize(buffer, cudart.cudaHostUnregister, buffer.data_ptr())
    return buffer


def _point(module: nn.Module, name: str, data: Tensor) -> None:
    """Make a module's parameter (same Parameter object) or buffer `name` use `data`."""
    if name in module._parameters:
        module._parameters[name].data = data
    else:
        module._buffers[name] = data


class BlockStreamer:
    """The blocks' weights live in pinned host memory; block i computes on device slot i mod 2 while block i+1
    is copied into the other slot on a side stream. Each block's tensors point at their slot for good, so the
    compiled graphs see the same tensors every call; hooks order copies and compute with CUDA events."""

    def __init__(self, blocks: nn.ModuleList, device: torch.device) -> None:
        """Empty streamer for `blocks` (an even count): `adopt` each block in order, then `start` once."""
        if len(blocks) % 2:
            raise ValueError(f"block streaming needs an even number of blocks, got {len(blocks)}")
        self.blocks, self.device = blocks, device
        self.stream = torch.cuda.Stream(device)
        self.host: list[Tensor] = []
        self.layouts: list[tuple[list[tuple[nn.Module, str, Tensor]], list[int]]] = []
        self.loaded = [torch.cuda.Event() for _ in blocks]
        self.slot_done = [torch.cuda.Event(), torch.cuda.Event()]
        self.slots: list[Tensor] = []
        self.next = -1  # the block whose copy is in flight; none yet

    def adopt(self, block: nn.Module) -> None:
        """Move a block's tensors into one pinned host buffer, freeing their device memory at once."""
        entries = _block_tensors(block)
        offsets, size = _offsets([tensor for _, _, tensor in entries])
        host = _pinned(size)
        for (module, name, tensor), offset in zip(entries, offsets, strict=True):
            _point(module, name, _view(host, offset, tensor).copy_(tensor.detach()))
        self.host.append(host)
        # Shapes and dtypes only (meta tensors): a reference to an original would keep its memory alive.
        self.layouts.append(([(m, n, t.to("meta")) for m, n, t in entries], offsets))

    def start(self) -> None:
        """Allocate the two device slots, point each block tensor at its slot for good, install the hooks."""
        size = max(host.numel() for host in self.host)
        self.slots = [torch.empty(size, dtype=torch.uint8, device=self.device) for _ in range(2)]
        for index, (entries, offsets) in enumerate(self.layouts):
            slot = self.slots[index % 2]
            for (module, name, tensor), offset in zip(entries, offsets, strict=True):
                _point(module, name, _view(slot, offset, tensor))
        for index, block in enumerate(self.blocks):
            block.register_forward_pre_hook(lambda _m, _a, i=index: self._before(i))
            block.register_forward_hook(lambda _m, _a, _o, i=index: self._after(i))

    def _load(self, index: int) -> None:
        """Queue block `index`'s copy into its slot once the last block computing there is done."""
        with torch.cuda.stream(self.stream):
            self.stream.wait_event(self.slot_done[index % 2])
            self.slots[index % 2][: self.host[index].numel()].copy_(self.host[index], non_blocking=True)
            self.loaded[index].record(self.stream)

    def _before(self, index: int) -> None:
        """Make the compute stream wait for this block's weights; start copying the next block's."""
        if index != self.next:  # first call, or after an interrupted forward: nothing is in flight for it
            self._load(index)
        torch.cuda.current_stream(self.device).wait_event(self.loaded[index])
        self.next = (index + 1) % len(self.blocks)
        self._load(self.next)

    def _after(self, index: int) -> None:
        """Mark this block's slot free once the compute queued so far has run."""
        self.slot_done[index % 2].record(torch.cuda.current_stream(self.device))


def accelerate(
    transformer: LTX2VideoTransformer3DModel, settings: AccelSettings, device: torch.device | str
) -> BlockStreamer | None:
    """Apply `settings` in place, in the order that works: per block, move to the device and swap in FP8
    linears, then park it in pinned host memory if offloading; the rest of the model to the device; the
    attention kernel; the compile (with its persistent cache). Returns the streamer when offloading.

    Call once per transformer, before its first forward. Load the transformer on the CPU to offload or
    quantise on a small card: only one bf16 block is ever on the device here besides the non-block layers.
    """
    device = torch.device(device)
    check_device(settings, device)
    use_two_level_modulation(transformer)
    use_rotary_attention(transformer)
    if settings.compile:  # eager, the CPU's x·σ(2u) would be six passes instead of one
        use_fast_gelu(transformer)
    recipe = FP8_RECIPES[settings.fp8] if settings.fp8 else None
    names = fp8_layer_names(transformer, recipe) if recipe else []
    blocks = transformer.transformer_blocks
    streamer = BlockStreamer(blocks, device) if settings.offload else None
    for index, block in enumerate(blocks):
        block.to(device)
        if recipe:
            prefix = f"transformer_blocks.{index}."
            quantize_fp8(transformer, recipe, [name for name in names if name.startswith(prefix)])
            use_fused_gelu(block, device)
        if streamer:
            streamer.adopt(block)
    if streamer:
        streamer.start()
    transformer.to(device)
    if settings.attention == flash4.NAME:
        flash4.use_kernel_cache(cache_dir() / "flash4")
    if settings.attention != "sdpa":  # diffusers' default already: setting it only prints a warning
        set_attention(transformer, settings.attention)
    if settings.compile:
        use_compile_cache(compile_cache_dir())
        use_persistent_rows()
        compile_blocks(transformer)
    return streamer
