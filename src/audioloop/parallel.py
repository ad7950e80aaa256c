"""Sequence-parallel primitives: joining a torchrun job, sharding tokens, and the collectives Ulysses needs.

A sequence of N tokens is split into W contiguous shards of ⌈N/W⌉ tokens (rank r holds tokens
[r·⌈N/W⌉, (r+1)·⌈N/W⌉)); the last shards are zero-padded so every rank holds the same count, which
`all_to_all_single` needs. Gathering concatenates the shards in rank order and trims the pad. The layout
half of an all-to-all (`chunks_to_send`, `join_received`) is pure tensor math, so it is tested without a
process group.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import Tensor

# NVLink multicast (NVLS) stays off on the lent multi-GPU machines; NCCL and NVSHMEM read these at start-up.
MULTICAST_OFF = {
    "NCCL_NVLS_ENABLE": "0",
    "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1",
    "NVSHMEM_DISABLE_NVLS": "1",
}


def init_distributed(backend: str | None = None, timeout: timedelta = timedelta(minutes=10)) -> torch.device:
    """Join the torchrun job (env:// rendezvous) with NVLink multicast off; return this rank's device.

    The default backend is NCCL with one GPU per local rank where CUDA exists, gloo on the CPU otherwise.
    """
    os.environ.update(MULTICAST_OFF)
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    device = torch.device("cpu")
    if backend == "nccl":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=timeout)
    return device


@dataclass(frozen=True)
class TokenShard:
    """Rank `rank`'s contiguous slice of `tokens` tokens split over `world` ranks, zero-padded at the end."""

    tokens: int
    world: int
    rank: int

    def __post_init__(self) -> None:
        """Refuse an empty sequence, an empty world or a rank outside it."""
        if self.tokens < 1 or self.world < 1 or not 0 <= self.rank < self.world:
            raise ValueError(f"need tokens ≥ 1, world ≥ 1 and 0 ≤ rank < world, got {self}")

    @classmethod
    def of(cls, tokens: int, group: dist.ProcessGroup | None = None) -> TokenShard:
        """This process's shard of `tokens` tokens over `group` (default: the whole job)."""
        return cls(tokens, dist.get_world_size(group), dist.get_rank(group))

    @property
    def local(self) -> int:
        """Tokens every rank holds, pad included: ⌈tokens / world⌉."""
        return -(-self.tokens // self.world)

    @property
    def padded(self) -> int:
        """The sequence length once padded: a multiple of the world size."""
        return self.local * self.world

    @property
    def start(self) -> int:
        """Index of this rank's first token in the padded sequence."""
        return self.rank * self.local


def shard_tokens(x: Tensor, shard: TokenShard, dim: int = 1) -> Tensor:
    """This rank's `shard.local` tokens of x along `dim`; positions past the real tokens are zeros."""
    if x.shape[dim] != shard.tokens:
        raise ValueError(f"expected {shard.tokens} tokens along dim {dim}, got shape {tuple(x.shape)}")
    start = min(shard.start, shard.tokens)
    piece = x.narrow(dim, start, min(shard.start + shard.local, shard.tokens) - start)
    missing = shard.local - piece.shape[dim]
    if missing == 0:
        return piece
    pad_shape = list(piece.shape)
    pad_shape[dim] = missing
    return torch.cat([piece, piece.new_zeros(pad_shape)], dim=dim)


def unshard_tokens(gathered: Tensor, shard: TokenShard, dim: int = 1) -> Tensor:
    """The real tokens of a padded sequence gathered in rank order: the inverse of sharding every rank."""
    return gathered.narrow(dim, 0, shard.tokens)


def chunks_to_send(x: Tensor, scatter_dim: int, world: int) -> Tensor:
    """x cut into `world` equal chunks along `scatter_dim`, stacked first: an all-to-all's send buffer."""
    if x.shape[scatter_dim] % world:
        raise ValueError(f"dim {scatter_dim} of {tuple(x.shape)} does not split over {world} ranks")
    return x.unflatten(scatter_dim, (world, -1)).movedim(scatter_dim, 0).contiguous()


def join_received(chunks: Tensor, gather_dim: int) -> Tensor:
    """An all-to-all's receive buffer (chunk j from rank j, stacked first) joined along `gather_dim`."""
    return chunks.movedim(0, gather_dim).flatten(gather_dim, gather_dim + 1)


def all_to_all(
    x: Tensor, scatter_dim: int, gather_dim: int, group: dist.ProcessGroup | None = None
) -> Tensor:
    """Send chunk j of x's `scatter_dim` to rank j and join what arrives along `gather_dim`, in rank order."""
    send = chunks_to_send(x, scatter_dim, dist.get_world_size(group))
    received = torch.empty_like(send)
    dist.all_to_all_single(received, send, group=group)
    return join_received(received, gather_dim)


def seq_to_heads(x: Tensor, group: dist.ProcessGroup | None = None) -> Tensor:
    """[B, S/W, H, ...] sequence shards → [B, S, H/W, ...]: every token, this rank's group of heads."""
    return all_to_all(x, scatter_dim=2, gather_dim=1, group=group)


def heads_to_seq(x: Tensor, group: dist.ProcessGroup | None = None) -> Tensor:
    """[B, S, H/W, ...] head shards → [B, S/W, H, ...] sequence shards: the inverse of `seq_to_heads`."""
    return all_to_all(x, scatter_dim=1, gather_dim=2, group=group)


def gather_along(x: Tensor, dim: int, group: dist.ProcessGroup | None = None) -> Tensor:
    """Every rank's x joined along `dim` in rank order, on every rank (list all_gather: any torch ≥ 2.11)."""
    pieces = [torch.empty_like(x) for _ in range(dist.get_world_size(group))]
    dist.all_gather(pieces, x.contiguous(), group=group)
    return torch.cat(pieces, dim=dim)
