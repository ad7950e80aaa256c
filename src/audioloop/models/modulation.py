"""The video adaLN modulation from two rows instead of one per token.

diffusers embeds the per-token timestep of every video token (`time_embed`: a 4096 → 9·4096 linear per
token) and every block then reads that [N, 9·4096] tensor: 1.7 GiB at 832×480, 3.9 GiB at 1280×704, alive
for the whole forward and read 48 times. The sampler's timesteps take two values per sample only (frozen
tokens 0, the others 1000·σ: `sampler.token_timesteps` of a 0/1 mask), so `TwoLevelTimestepEmbed` embeds
the two levels and records which level each token has; each block's video modulation then selects its
row per token (`torch.where`, which the compiled blocks fuse into the ops that read it).

The output layer's modulation of every token uses the top level's embedding, as a stride-0 view (a
per-token copy would be another [N, 4096] for the whole forward). That changes the transformer's output
on frozen tokens only, whose velocity the sampler never uses (their σ is 0: x0 = x, then re-imposed
from the clean latents), so the sampled windows are the stock model's.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from diffusers import LTX2VideoTransformer3DModel
from torch import Tensor, nn


@dataclass
class TokenLevels:
    """Shared by the embedding and the blocks: per sample and token, True at the top timestep [B, N]."""

    top: Tensor | None = None


def two_levels(timestep: Tensor) -> tuple[Tensor, Tensor]:
    """timestep [B, N] → its (lowest, highest) value per sample [B, 2] and top [B, N]: True where a token
    is at the highest. A third value is refused (asynchronously on a GPU: no host sync in the step)."""
    levels = torch.stack([timestep.amin(dim=1), timestep.amax(dim=1)], dim=1)
    top = timestep == levels[:, 1:]
    torch._assert_async((top | (timestep == levels[:, :1])).all(), "timesteps take more than two values")
    return levels, top


def select_levels(values: Tensor, top: Tensor) -> Tensor:
    """values [B, 2, ...] per level → [B, N, ...] per token (row 1 where top, else row 0)."""
    pick = top.reshape(*top.shape, *([1] * (values.ndim - 2)))
    return torch.where(pick, values[:, 1:2], values[:, 0:1])


class TwoLevelTimestepEmbed(nn.Module):
    """`time_embed` that embeds each sample's two timestep levels: the block modulation [B·2, 9·D] and, for
    the output layer, the top level's embedding for every token [B·N, D] (a view for one sample), with the
    token levels left in `levels` for the blocks."""

    def __init__(self, inner: nn.Module, levels: TokenLevels) -> None:
        """Wrap diffusers' `LTX2AdaLayerNormSingle`; share `levels` with the blocks."""
        super().__init__()
        self.inner, self.levels = inner, levels

    def forward(
        self,
        timestep: Tensor,
        added_cond_kwargs: dict | None = None,
        batch_size: int | None = None,
        hidden_dtype: torch.dtype | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Embed [lowest, highest] per sample; the output layer's embedding is the highest's, broadcast."""
        batch = batch_size or 1
        levels, top = two_levels(timestep.view(batch, -1))
        modulation, embedded = self.inner(levels.flatten(), added_cond_kwargs, batch, hidden_dtype)
        self.levels.top = top
        return modulation, embedded.view(batch, 2, -1)[:, 1:].expand(-1, top.shape[1], -1).flatten(0, 1)


def _block_mod_params(
    block: nn.Module, levels: TokenLevels, table: Tensor, temb: Tensor, batch_size: int
) -> tuple[Tensor, ...]:
    """diffusers' own `get_mod_params`, with the video self-modulation (the block's `scale_shift_table`)
    selected per token from its two rows."""
    params = type(block).get_mod_params(table, temb, batch_size)
    if table is block.scale_shift_table:
        params = tuple(select_levels(p, levels.top) for p in params)
    return params


def use_two_level_modulation(transformer: LTX2VideoTransformer3DModel) -> None:
    """Install the two-level video modulation in place (once; the blocks' forward code is unchanged)."""
    if isinstance(transformer.time_embed, TwoLevelTimestepEmbed):
        return
    levels = TokenLevels()
    transformer.time_embed = TwoLevelTimestepEmbed(transformer.time_embed, levels)
    for block in transformer.transformer_blocks:
        block.get_mod_params = functools.partial(_block_mod_params, block, levels)
