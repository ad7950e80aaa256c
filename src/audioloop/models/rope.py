"""The video RoPE tables from each axis's distinct positions instead of one row per token.

diffusers' `LTX2AudioVideoRotaryPosEmbed` returns cos and sin [B, H, N, D/2] in fp32 for every video token,
rebuilt every step and alive through all 48 blocks: the self-attention's and the a2v cross-attention's
tables are 1.3 GiB together at 1280×704 (56k tokens), and every block reads them from memory again. Each
column of a split table follows one coordinate axis (time, height or width) and depends on that axis's
position only, and a window's tokens take few distinct positions per axis (its latent frames, rows and
columns). So `CompactRope` runs diffusers' own module on U pseudo-tokens, the u-th of which stands at the
u-th distinct position of every axis, and keeps per token and axis the index of its position. Each RoPE
use gathers its full table from those (`expand`, called by `models/attention.rotate` inside the compiled
blocks, so a gathered table lives only as long as that attention's rotation). The values are diffusers'
own, moved rather than recomputed: the same numbers.

The distinct positions need one host sync; they are kept for as long as the forward gets the same
coordinates (the sampler passes one tensor per window, never modified), so steps after a window's first
reuse them and have none.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn


class RopeIndex(NamedTuple):
    """Split RoPE tables of U pseudo-tokens [B', H, U, R], each token's position index per axis
    [B, A, N], and the axis each table column follows [H, R]."""

    cos: Tensor
    sin: Tensor
    index: Tensor
    axes: Tensor


def column_axes(heads: int, half_dim: int, dim: int, num_axes: int) -> Tensor:
    """The coordinate axis of every column of a split table [H, half_dim] of a RoPE over `dim`: diffusers
    lays the frequencies out axis-fastest after `half_dim − A·(dim // 2A)` padding columns (constant 1 and
    0, given axis 0 here: any index reads the same value there)."""
    pad = heads * half_dim - num_axes * (dim // (2 * num_axes))
    column = torch.arange(heads * half_dim) - pad
    return torch.where(column < 0, 0, column % num_axes).reshape(heads, half_dim)


def distinct_positions(coords: Tensor) -> tuple[Tensor, Tensor]:
    """coords [B, A, N, 2] (patch bounds) → pseudo-token coords [1, A, U, 2] (token u at every axis's u-th
    distinct position, the last one repeated where an axis has fewer) and each token's index [B, A, N]."""
    axes = coords.shape[1]
    found = [torch.unique(coords[:, a].flatten(0, 1), dim=0, return_inverse=True) for a in range(axes)]
    count = max(values.shape[0] for values, _ in found)
    pseudo = torch.stack(
        [
            values[torch.arange(count, device=coords.device).clamp(max=values.shape[0] - 1)]
            for values, _ in found
        ]
    )
    index = torch.stack([inverse.view(coords.shape[0], -1) for _, inverse in found], dim=1)
    return pseudo.unsqueeze(0), index


def expand(rope: RopeIndex) -> tuple[Tensor, Tensor]:
    """The full tables [B, H, N, R] that diffusers' module gives for the tokens of `rope.index`."""
    axes = rope.axes[None, :, None, :]

    def table(compact: Tensor) -> Tensor:
        out = compact[0][:, rope.index[:, 0]].transpose(0, 1)
        for a in range(1, rope.index.shape[1]):
            out = torch.where(axes == a, compact[0][:, rope.index[:, a]].transpose(0, 1), out)
        return out

    return table(rope.cos), table(rope.sin)


class CompactRope(nn.Module):
    """diffusers' video RoPE module (split layout) returning a `RopeIndex` instead of full tables, kept
    while the coordinates stay the same tensor."""

    def __init__(self, inner: nn.Module) -> None:
        """Wrap an `LTX2AudioVideoRotaryPosEmbed` with `rope_type="split"`."""
        super().__init__()
        self.inner = inner
        self._last: tuple[Tensor, RopeIndex] | None = None

    def prepare_video_coords(self, *args: object, **kwargs: object) -> Tensor:
        """diffusers' own coordinates (its forward asks for them when the caller passes none)."""
        return self.inner.prepare_video_coords(*args, **kwargs)

    def forward(self, coords: Tensor, device: torch.device | str | None = None) -> RopeIndex:
        """The compact tables of coords [B, A, N, 2]; the previous call's when coords are its tensor."""
        if self._last is not None and same_tensor(self._last[0], coords):
            return self._last[1]
        pseudo, index = distinct_positions(coords)
        cos, sin = self.inner(pseudo, device=device)
        heads, half = cos.shape[1], cos.shape[-1]
        axes = column_axes(heads, half, self.inner.dim, coords.shape[1]).to(cos.device)
        rope = RopeIndex(cos, sin, index.to(cos.device), axes)
        self._last = (coords, rope)  # the reference keeps coords' memory from being reused by another tensor
        return rope


def same_tensor(a: Tensor, b: Tensor) -> bool:
    """The same memory seen the same way (a view rebuilt each call, e.g. `coords[:, 0:1]`, counts)."""
    key = (a.data_ptr(), a.shape, a.stride(), a.dtype, a.device)
    return key == (b.data_ptr(), b.shape, b.stride(), b.dtype, b.device)
