"""AdaIN on video latents: pull each channel's mean and std toward a reference to stop colour drift.

Per channel, y = (x − μ_x)/σ_x·σ_r + μ_r and out = x + f·(y − x), std unbiased as in ComfyUI's
LTXVAdainLatent (σ_x is floored at 1e-6 so a constant channel cannot divide by zero). Video latents only,
never packed audio.

Per-frame mode takes the statistics per latent frame. Frames of x map to reference frames by relative
position: x frame f of F_x uses reference frame ⌊f·F_r/F_x⌋ — identity when the counts match, a 1-frame
reference is repeated, and a longer or shorter reference is resampled in time (ComfyUI instead requires
F_r ≥ F_x and takes the first F_x). `adain_frames` aligns by window position instead: for the generated
frames start.. of a window it maps the reference onto the whole window first, so window frame k meets
reference frame k when geometries match.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from audioloop.sampling.layout import WindowLayout, pack_video, unpack_video
from audioloop.sampling.sampler import X0Hook

STD_FLOOR = 1e-6


def match_frames(ref: Tensor, frames: int) -> Tensor:
    """The reference [B, C, F_r, h, w] resampled to `frames` frames: frame f ← ⌊f·F_r/frames⌋."""
    index = torch.arange(frames, device=ref.device) * ref.shape[2] // frames
    return ref.index_select(2, index)


def _stats(x: Tensor, per_frame: bool) -> tuple[Tensor, Tensor]:
    """Per-channel (per-frame if asked) unbiased std and mean of [B, C, F, h, w], kept broadcastable."""
    dims = (3, 4) if per_frame else (2, 3, 4)
    return torch.std_mean(x, dim=dims, keepdim=True)


def adain(x: Tensor, ref: Tensor, factor: float, per_frame: bool = False) -> Tensor:
    """Move x's per-channel statistics toward ref's by `factor` (0 = x itself, 1 = ref's mean and std)."""
    if factor == 0.0:
        return x
    work = x.to(torch.promote_types(x.dtype, torch.float32))
    ref = ref.to(device=x.device, dtype=work.dtype)
    if per_frame:
        ref = match_frames(ref, x.shape[2])
    std_x, mean_x = _stats(work, per_frame)
    std_r, mean_r = _stats(ref, per_frame)
    y = (work - mean_x) / std_x.clamp_min(STD_FLOOR) * std_r + mean_r
    return (work + factor * (y - work)).to(x.dtype)


def adain_frames(video: Tensor, ref: Tensor, factor: float, start: int, per_frame: bool = False) -> Tensor:
    """AdaIN on a window's frames start.. only (earlier ones stay bit for bit), reference aligned by frame."""
    if factor == 0.0:
        return video
    if per_frame:
        ref = match_frames(ref, video.shape[2])[:, :, start:]
    moved = adain(video[:, :, start:], ref, factor, per_frame)
    return torch.cat([video[:, :, :start], moved], dim=2)


def per_step_adain(
    layout: WindowLayout, reference: Tensor | None, factors: Sequence[float], per_frame: bool = False
) -> X0Hook | None:
    """An x0 hook: AdaIN with factors[k] at step k (0 past the end) on the window's generated video tokens.

    Frozen context frames and appended guides are never touched; None when there is nothing to do. The step
    counter is the sampler's step index, so it restarts with every window. The reference moves to the
    layout's device once, here, so the steps copy nothing between devices.
    """
    if reference is None or not any(factors):
        return None
    channels = layout.clean.shape[-1]
    if reference.ndim != 5 or reference.shape[:2] != (1, channels):
        raise ValueError(
            f"reference must be video latents [1, {channels}, F, h, w], got {tuple(reference.shape)}"
        )
    factors = tuple(float(f) for f in factors)
    end = layout.n_window_tokens
    work_dtype = torch.promote_types(layout.clean.dtype, torch.float32)
    reference = reference.to(device=layout.clean.device, dtype=work_dtype)
    if per_frame:
        reference = match_frames(reference, layout.frames)

    def hook(step: int, x0: Tensor) -> Tensor:
        """AdaIN the generated tokens of this step's x0 prediction."""
        factor = factors[step] if step < len(factors) else 0.0
        if factor == 0.0:
            return x0
        video = unpack_video(x0[:, :end], layout.frames, layout.height, layout.width)
        moved = adain_frames(video, reference, factor, layout.context_frames, per_frame)
        return torch.cat([pack_video(moved), x0[:, end:]], dim=1)

    return hook
