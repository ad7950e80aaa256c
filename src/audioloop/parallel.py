"""Sequence-parallel primitives: joining a torchrun job, sharding tokens, and the collectives Ulysses needs.

A sequence of N tokens is split into W contiguous shards of ⌈N/W⌉ tokens (rank r holds tokens
[r·⌈N/W⌉, (r+1)·⌈N/W⌉)); the last shards are zero-padded so every rank holds the same count, which
`all_to_all_single` needs. Gathering concatenates the shards in rank order and trims the pad. The layout
half of an all-to-all (`chunks_to_send`, `join_received`) is pure tensor math, so it is tested without a
process group.

A render split over the job needs a little more: whether the launch may split (`split_ranks`), which process
writes and prints (rank 0), a check that every rank prepared the same job, and rank 0's tensors sent to all.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from audioloop.errors import SettingsError

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


def torchrun_world(env: Mapping[str, str] | None = None) -> int:
    """The torchrun job's size (WORLD_SIZE); 1 in a process torchrun did not start."""
    env = os.environ if env is None else env
    return int(env.get("WORLD_SIZE") or 1)


def split_ranks(sequence_parallel: bool, world: int) -> int:
    """How many ranks share each window: the job's `world` with --sequence-parallel, else 1.

    A render started on several ranks without the flag would have every rank write the same files.
    """
    if world > 1 and not sequence_parallel:
        raise SettingsError(
            f"render runs under torchrun ({world} processes) only with --sequence-parallel, which splits "
            "every window over them; to give each GPU its own song, use `audioloop batch`"
        )
    return world if sequence_parallel else 1


def rank_backend(device: torch.device) -> str | None:
    """gloo for a CPU render, else init_distributed's default (NCCL, one GPU per local rank)."""
    return "gloo" if device.type == "cpu" else None


@contextmanager
def torchrun_job(world: int, device: torch.device) -> Iterator[torch.device]:
    """Inside the block this process is one rank of the torchrun job on its rank's device (world > 1), or
    alone on `device`. The group is left when the block ends cleanly; after an error it is left to the
    process's exit, since other ranks may still be inside a collective."""
    if world == 1:
        yield device
        return
    yield init_distributed(rank_backend(device))
    dist.destroy_process_group()


def is_rank0() -> bool:
    """True on rank 0 of a joined job and in a process outside any job: the process that writes and prints."""
    return not dist.is_initialized() or dist.get_rank() == 0


def same_on_every_rank(value: Any) -> bool:
    """Whether every rank passed an equal (picklable) value; every rank gets the same answer."""
    values: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(values, value)
    return all(v == values[0] for v in values)


def from_rank0(compute: Callable[[], Tensor], like: Tensor) -> Tensor:
    """Rank 0's `compute()` on every rank: the others skip the work and receive a tensor like `like`."""
    with torch.inference_mode():
        if dist.get_rank() == 0:
            x = compute().contiguous()
        else:
            x = torch.empty(like.shape, dtype=like.dtype, device=like.device)
        dist.broadcast(x, src=0)
    return x


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
