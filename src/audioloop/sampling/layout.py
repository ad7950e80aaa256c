"""Token layout of one window: packed video tokens, the frozen mask, RoPE coordinates and appended guides.

Video latents `[1, C, F, h, w]` are packed f-major (then h, then w) into `[1, F·h·w, C]`, as diffusers'
`LTX2Pipeline._pack_latents` does with patch size 1. A window's tokens come first; appended guide tokens
(frozen, with their own coordinates) follow and are cropped before anything outside the sampler sees the
latents.

Coordinates are `[1, 3, N, 2]`: [start, end) per token in (seconds, pixel y, pixel x), the form
`LTX2VideoTransformer3DModel.forward(video_coords=...)` takes. The window's own coordinates equal
`transformer.rope.prepare_video_coords(1, F, h, w, device, fps=fps)` (latent dims in, causal first frame).

Audio coordinates are not part of the layout: the sampler passes `audio_num_frames` and the transformer
builds `audio_rope.prepare_audio_coords(1, N_a, device)` with shift 0, so audio latent i spans mel frames
[max(0, 4i−3), 4i+1) × 10 ms. The window's audio slice therefore always starts at the window's first pixel
frame, where the video time axis starts too.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

VAE_SCALE = (8, 32, 32)
CAUSAL_OFFSET = 1
GUIDE_PIXEL_FRAMES = (-8.0, -7.0)


def pack_video(latent: Tensor) -> Tensor:
    """Video latents [B, C, F, h, w] → tokens [B, F·h·w, C], f-major then h then w."""
    batch, channels = latent.shape[:2]
    return latent.permute(0, 2, 3, 4, 1).reshape(batch, -1, channels)


def unpack_video(tokens: Tensor, frames: int, height: int, width: int) -> Tensor:
    """Tokens [B, F·h·w, C] → video latents [B, C, F, h, w]; the inverse of `pack_video`."""
    return tokens.reshape(tokens.shape[0], frames, height, width, -1).permute(0, 4, 1, 2, 3)


def _pixel_bounds(frames: int, height: int, width: int, device: torch.device) -> Tensor:
    """Un-shifted pixel [start, end) of each latent cell, [1, 3, F·h·w, 2], as prepare_video_coords has it."""
    axes = [torch.arange(n, dtype=torch.float32, device=device) for n in (frames, height, width)]
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=0)
    bounds = torch.stack([grid, grid + 1.0], dim=-1).flatten(1, 3).unsqueeze(0)
    return bounds * torch.tensor(VAE_SCALE, dtype=torch.float32, device=device).view(1, 3, 1, 1)


def video_coords(
    frames: int, height: int, width: int, fps: float, device: torch.device | str = "cpu"
) -> Tensor:
    """RoPE coordinates of a window's own tokens: causal pixel time / fps, pixel y, pixel x."""
    coords = _pixel_bounds(frames, height, width, torch.device(device))
    coords[:, 0] = (coords[:, 0] + CAUSAL_OFFSET - VAE_SCALE[0]).clamp(min=0) / fps
    return coords


def guide_coords(height: int, width: int, fps: float, device: torch.device | str = "cpu") -> Tensor:
    """RoPE coordinates of one appended guide frame: pixel frames [−8, −7] (one latent before the window)."""
    coords = _pixel_bounds(1, height, width, torch.device(device))
    coords[:, 0] = torch.tensor(GUIDE_PIXEL_FRAMES, dtype=torch.float32, device=coords.device) / fps
    return coords


@dataclass(frozen=True, eq=False)
class WindowLayout:
    """Everything the sampler needs about one window's video tokens.

    `clean` [1, N, C] holds the window's F·h·w tokens, then the appended guides; `mask` [1, N] is 1 where
    tokens are generated and 0 where frozen; the window's first `context_frames` latent frames are frozen.
    """

    clean: Tensor
    mask: Tensor
    video_coords: Tensor
    frames: int
    height: int
    width: int
    context_frames: int
    fps: float

    @property
    def n_window_tokens(self) -> int:
        """Tokens of the window proper; the rest of `clean` are appended guides."""
        return self.frames * self.height * self.width

    @property
    def n_guide_tokens(self) -> int:
        """Tokens appended after the window (0 or one latent frame's worth)."""
        return self.clean.shape[1] - self.n_window_tokens


def _check_latent(name: str, latent: Tensor, frames: int | None = None) -> None:
    """Refuse anything but a batch-1 video latent [1, C, F, h, w] (with F = frames when given)."""
    if latent.ndim != 5 or latent.shape[0] != 1 or (frames is not None and latent.shape[2] != frames):
        want = f"[1, C, {frames if frames is not None else 'F'}, h, w]"
        raise ValueError(f"{name} must be a video latent {want}, got {tuple(latent.shape)}")


def _window(
    prefix: Tensor, lat_frames: int, fps: float, guide: Tensor | None
) -> tuple[Tensor, Tensor, Tensor]:
    """Clean tokens, mask and coords: frozen `prefix` frames, zero generated frames, then the frozen guide."""
    _, channels, n_prefix, height, width = prefix.shape
    if not 0 < n_prefix < lat_frames:
        raise ValueError(f"frozen frames must satisfy 0 < {n_prefix} < window latent frames {lat_frames}")
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    generated = prefix.new_zeros(1, channels, lat_frames - n_prefix, height, width)
    tokens = [pack_video(torch.cat([prefix, generated], dim=2))]
    per_frame = height * width
    mask = [
        prefix.new_zeros(1, n_prefix * per_frame),
        prefix.new_ones(1, (lat_frames - n_prefix) * per_frame),
    ]
    coords = [video_coords(lat_frames, height, width, fps, prefix.device)]
    if guide is not None:
        tokens.append(pack_video(guide))
        mask.append(prefix.new_zeros(1, per_frame))
        coords.append(guide_coords(height, width, fps, prefix.device))
    return torch.cat(tokens, dim=1), torch.cat(mask, dim=1), torch.cat(coords, dim=2)


def first_window(image_latent: Tensor, lat_frames: int, fps: float) -> WindowLayout:
    """Window 0 (image to video): latent frame 0 is the image latent, frozen; frames 1.. are generated."""
    _check_latent("image_latent", image_latent, frames=1)
    clean, mask, coords = _window(image_latent, lat_frames, fps, guide=None)
    _, _, _, height, width = image_latent.shape
    return WindowLayout(clean, mask, coords, lat_frames, height, width, context_frames=1, fps=fps)


def next_window(context: Tensor, image_latent: Tensor, lat_frames: int, fps: float) -> WindowLayout:
    """Window i ≥ 1: the previous window's last latents frozen first, then generated frames, then the image
    latent appended as one frozen guide frame placed one latent before the window start."""
    _check_latent("context", context)
    _check_latent("image_latent", image_latent, frames=1)
    if context.shape[1] != image_latent.shape[1] or context.shape[3:] != image_latent.shape[3:]:
        raise ValueError(
            f"context {tuple(context.shape)} and image_latent {tuple(image_latent.shape)} differ in C, h or w"
        )
    clean, mask, coords = _window(context, lat_frames, fps, guide=image_latent.to(context))
    _, _, n_context, height, width = context.shape
    return WindowLayout(clean, mask, coords, lat_frames, height, width, context_frames=n_context, fps=fps)


def refine_window(latents: Tensor, context_frames: int, fps: float) -> WindowLayout:
    """A stage-2 refinement tile: its first `context_frames` latents frozen, the rest generated starting from
    their own values (the sampler noises them to σ0), and no guide: stage 2 refines content, it adds none."""
    _check_latent("latents", latents)
    _, _, frames, height, width = latents.shape
    if not 0 <= context_frames < frames:
        raise ValueError(f"frozen frames must satisfy 0 ≤ {context_frames} < tile latent frames {frames}")
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    per_frame = height * width
    mask = torch.cat(
        [
            latents.new_zeros(1, context_frames * per_frame),
            latents.new_ones(1, (frames - context_frames) * per_frame),
        ],
        dim=1,
    )
    coords = video_coords(frames, height, width, fps, latents.device)
    return WindowLayout(pack_video(latents), mask, coords, frames, height, width, context_frames, fps)


def crop_guides(tokens: Tensor, layout: WindowLayout) -> Tensor:
    """Sampled tokens → the window's video latents [1, C, F, h, w], appended guides removed."""
    window = tokens[:, : layout.n_window_tokens]
    return unpack_video(window, layout.frames, layout.height, layout.width)
