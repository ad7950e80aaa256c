"""Sequence parallelism for one window of LTX2VideoTransformer3DModel: Ulysses attention over heads.

With W ranks (torchrun, one process per GPU), every rank calls the transformer with the same full inputs;
`sequence_parallel` shards them, runs the blocks on 1/W of the video tokens and hands back the full video
velocity on every rank, so the sampler's Euler state stays replicated and `sample_window` runs unchanged.

- Video tokens (window + appended guides), their per-token timesteps and RoPE coordinates are split along
  the sequence into W contiguous shards, zero-padded at the end. Everything per token — proj_in, AdaLN
  with per-token temb, norms, FF, the RoPE tables (built from the local coordinates), the text
  cross-attention against the replicated text (NAG included) and a2v against the replicated audio — runs
  on local tokens with no communication.
- Video self-attention (attn1): q/k/v projected, normalised and rotated on local tokens, one all-to-all to
  head shards (all tokens, H/W heads), the pad keys dropped, attention, one all-to-all back; then the per-head
  gate and to_out on local tokens.
- Audio is replicated, not sharded: ~500 tokens against 25–56k video tokens, ~1% of the FLOPs. Keeping it
  whole costs no audio padding, no audio all-to-all and no gather for a2v, whose audio K/V are local.
- v2a (video_to_audio_attn): the video K/V go to head shards by the same all-to-all, each rank attends every
  audio query for its heads, and the small [N_a, H, D] output is all-gathered over heads, so the audio
  stream stays identical on every rank.
- Pad tokens never act as keys (they are dropped after each all-to-all), and the output trims them.

diffusers' own context parallel (`enable_parallelism` with `_cp_plan`) is not used: besides the wrong plan
(RoPE split on heads, per-token timestep and audio not split), it gives every processor the Ulysses path, so
the replicated text, audio and NAG halves go through all-to-alls too, its uneven-length mode does a
host-synchronising size all-gather per attention call, and it cannot be undone on a model. This plan
reuses diffusers' hook registry for the input/output split and its attention dispatch for the kernel.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from diffusers.hooks import HookRegistry, ModelHook
from diffusers.models.transformers.transformer_ltx2 import (
    AudioVisualModelOutput,
    LTX2Attention,
    LTX2VideoTransformer3DModel,
)
from torch import Tensor

from audioloop.models.attention import attend, gate_and_project, heads, rotate, swap_processor
from audioloop.models.rope import same_tensor
from audioloop.parallel import (
    TokenShard,
    gather_along,
    heads_to_seq,
    seq_to_heads,
    shard_tokens,
    unshard_tokens,
)
from audioloop.sampling.nag import Processors, restore_processors

HOOK_NAME = "audioloop_sequence_parallel"
# Forward inputs this plan does not shard (STG, attention masks, 2.5 keyframe markers): refused, not ignored.
UNSUPPORTED = ("video_self_attention_mask", "perturbation_mask", "video_keyframes_mask")


@dataclass
class _Shards:
    """Shared by the input hook and the processors: the group, this rank, the current call's video shard."""

    group: dist.ProcessGroup | None
    world: int
    rank: int
    video: TokenShard | None = None


class _ShardedAttnProcessor:
    """Shared by the plan's processors: the shard state and diffusers' backend dispatch for the kernel."""

    _attention_backend = None

    def __init__(self, shards: _Shards) -> None:
        """Keep the state shared with the input hook; the processor holds no tensors."""
        self.shards = shards

    def _attend(self, query: Tensor, key: Tensor, value: Tensor) -> Tensor:
        """Unmasked attention [B, T, H, D] with the kernel chosen for the processor this one replaced."""
        return attend(self, query, key, value)

    def _real(self, x: Tensor) -> Tensor:
        """The real video tokens of a full padded sequence [B, S_pad, ...]: pad tokens never act as keys."""
        return unshard_tokens(x, self.shards.video)


class UlyssesSelfAttnProcessor(_ShardedAttnProcessor):
    """Video self-attention on sequence shards: all-to-all to head shards, attend, all-to-all back."""

    def __call__(
        self,
        attn: LTX2Attention,
        hidden_states: Tensor,
        encoder_hidden_states: Tensor | None = None,
        attention_mask: Tensor | None = None,
        query_rotary_emb: tuple[Tensor, Tensor] | None = None,
        key_rotary_emb: tuple[Tensor, Tensor] | None = None,
        perturbation_mask: Tensor | None = None,
        all_perturbed: bool | None = None,
    ) -> Tensor:
        """Project, normalise and rotate local tokens, re-shard q/k/v over heads in one all-to-all, attend.

        The 2.3 block also passes the STG arguments; they are always off here (the input hook refuses STG).
        """
        if encoder_hidden_states is not None or attention_mask is not None or key_rotary_emb is not None:
            raise ValueError("UlyssesSelfAttnProcessor serves unmasked video self-attention only")
        query = rotate(attn, attn.norm_q(attn.to_q(hidden_states)), query_rotary_emb)
        key = rotate(attn, attn.norm_k(attn.to_k(hidden_states)), query_rotary_emb)
        value = attn.to_v(hidden_states)
        qkv = torch.stack([heads(attn, query), heads(attn, key), heads(attn, value)], dim=3)
        query, key, value = seq_to_heads(qkv, self.shards.group).unbind(3)
        out = self._attend(query, self._real(key), self._real(value))
        return gate_and_project(attn, hidden_states, heads_to_seq(out, self.shards.group))


class HeadShardedV2AProcessor(_ShardedAttnProcessor):
    """v2a: the whole audio attends every video token on this rank's heads; outputs gathered over heads."""

    def __call__(
        self,
        attn: LTX2Attention,
        hidden_states: Tensor,
        encoder_hidden_states: Tensor | None = None,
        attention_mask: Tensor | None = None,
        query_rotary_emb: tuple[Tensor, Tensor] | None = None,
        key_rotary_emb: tuple[Tensor, Tensor] | None = None,
    ) -> Tensor:
        """Audio q on this rank's heads against every video token's k/v, gathered by one all-to-all."""
        if encoder_hidden_states is None or attention_mask is not None:
            raise ValueError("HeadShardedV2AProcessor serves unmasked video-to-audio cross-attention only")
        query = heads(attn, rotate(attn, attn.norm_q(attn.to_q(hidden_states)), query_rotary_emb))
        key = rotate(attn, attn.norm_k(attn.to_k(encoder_hidden_states)), key_rotary_emb)
        value = attn.to_v(encoder_hidden_states)
        kv = torch.stack([heads(attn, key), heads(attn, value)], dim=3)
        key, value = self._real(seq_to_heads(kv, self.shards.group)).unbind(3)
        local = attn.heads // self.shards.world
        own = query.narrow(2, self.shards.rank * local, local)
        out = gather_along(self._attend(own, key, value), dim=2, group=self.shards.group)
        return gate_and_project(attn, hidden_states, out)


def _bind(module: LTX2VideoTransformer3DModel, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict:
    """The forward's arguments by name, however they were passed."""
    call = inspect.signature(type(module).forward).bind(module, *args, **kwargs).arguments
    call.pop("self")
    return dict(call)


def _check_supported(call: dict[str, Any]) -> None:
    """Refuse a call this plan cannot shard: no explicit video coordinates, masks, STG or keyframe markers."""
    if call.get("video_coords") is None:
        raise ValueError("sequence parallel needs explicit video_coords (the window layout carries them)")
    refused = [name for name in UNSUPPORTED if call.get(name) is not None]
    if call.get("spatio_temporal_guidance_blocks"):
        refused.append("spatio_temporal_guidance_blocks")
    if refused:
        raise ValueError(f"sequence parallel does not support {', '.join(refused)}")


class _ShardHook(ModelHook):
    """Splits the video inputs before the transformer's forward and gathers the video velocity after it."""

    def __init__(self, shards: _Shards) -> None:
        """Share the shard state with the processors; remember how the caller wants the output."""
        super().__init__()
        self.shards = shards
        self.return_dict = True
        self._coords: tuple[Tensor, Tensor] | None = None

    def pre_forward(
        self, module: LTX2VideoTransformer3DModel, *args: Any, **kwargs: Any
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """Shard hidden_states, video_coords and a per-token timestep [B, N]; the audio stays whole."""
        call = _bind(module, args, kwargs)
        _check_supported(call)
        video = TokenShard(call["hidden_states"].shape[1], self.shards.world, self.shards.rank)
        self.shards.video = video
        call["hidden_states"] = shard_tokens(call["hidden_states"], video, dim=1)
        call["video_coords"] = self._local_coords(call["video_coords"], video)
        if call["timestep"].ndim == 2:
            call["timestep"] = shard_tokens(call["timestep"], video, dim=1)
        self.return_dict = call.get("return_dict", True)
        call["return_dict"] = False
        return (), call

    def _local_coords(self, coords: Tensor, video: TokenShard) -> Tensor:
        """This rank's shard of the coordinates, one tensor for as long as the caller passes one: the
        compact RoPE (`models/rope.py`) then keeps its tables across steps instead of rebuilding them."""
        if self._coords is None or not same_tensor(self._coords[0], coords):
            self._coords = (coords, shard_tokens(coords, video, dim=2))
        return self._coords[1]

    def post_forward(self, module: LTX2VideoTransformer3DModel, output: tuple[Tensor, Tensor]) -> Any:
        """The full video velocity on every rank (gathered, pad trimmed); the audio output is whole."""
        local, audio = output
        video = unshard_tokens(gather_along(local, dim=1, group=self.shards.group), self.shards.video)
        if self.return_dict:
            return AudioVisualModelOutput(sample=video, audio_sample=audio)
        return video, audio


def _plan(transformer: LTX2VideoTransformer3DModel, shards: _Shards) -> dict[str, _ShardedAttnProcessor]:
    """The processors this plan swaps in, by module name: every block's attn1 and video_to_audio_attn."""
    plan: dict[str, _ShardedAttnProcessor] = {}
    for i in range(len(transformer.transformer_blocks)):
        plan[f"transformer_blocks.{i}.attn1"] = UlyssesSelfAttnProcessor(shards)
        plan[f"transformer_blocks.{i}.video_to_audio_attn"] = HeadShardedV2AProcessor(shards)
    return plan


def _install(
    transformer: LTX2VideoTransformer3DModel, plan: dict[str, _ShardedAttnProcessor], world: int
) -> Processors:
    """Swap the plan's processors in (keeping each module's attention backend); return the ones replaced."""
    modules = dict(transformer.named_modules())
    uneven = [name for name in plan if modules[name].heads % world]
    if uneven:
        raise ValueError(f"{uneven[0]} and {len(uneven) - 1} more: heads do not divide over {world} ranks")
    previous: Processors = {}
    for name, processor in plan.items():
        previous[name] = modules[name].processor
        swap_processor(modules[name], processor)
    return previous


@contextmanager
def sequence_parallel(
    transformer: LTX2VideoTransformer3DModel, group: dist.ProcessGroup | None = None
) -> Iterator[None]:
    """Inside the block, every call of `transformer` runs sequence-parallel over `group` (default: the job).

    Every rank must make the same calls with the same full inputs (explicit `video_coords`, timestep (B,) or
    per-token (B, N)); each gets the full video velocity back. Attention heads must divide by the world size.
    The processors and forward are as before on exit.
    """
    shards = _Shards(group, dist.get_world_size(group), dist.get_rank(group))
    previous = _install(transformer, _plan(transformer, shards), shards.world)
    registry = HookRegistry.check_if_exists_or_initialize(transformer)
    registry.register_hook(_ShardHook(shards), HOOK_NAME)
    try:
        yield
    finally:
        registry.remove_hook(HOOK_NAME, recurse=False)
        restore_processors(transformer, previous)
