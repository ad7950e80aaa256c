"""RGB frames → the yuv420p planes H.264 stores, as tensor math, so it runs where the frames are (the GPU).

BT.709 coefficients, limited range (Y 16–235, U and V 16–240), as the writer tags the stream. Chroma is
sited as swscale's RGB → yuv420p path sites it, so the output matches swscale's within a level of rounding:
each chroma column the mean of its two pixels, each chroma row the bilinear [1, 3, 3, 1] / 8 of the four
pixel rows around it (the edge rows repeated). On the GPU this takes the writer's swscale work (~5 ms a
frame at 832×480 on one core) off the CPU, which encodes the render's last span alone after sampling
ends, and halves the bytes that cross to the host.
"""

from __future__ import annotations

import torch
from torch import Tensor

KR, KB = 0.2126, 0.0722  # BT.709 luma weights of red and blue; green's is 1 − KR − KB
LUMA = torch.tensor([KR, 1 - KR - KB, KB])
Y_SCALE, C_SCALE = 219 / 255, 224 / 255  # full-range 0–255 onto limited 219 and 224 steps


def planes_shape(frames: int, height: int, width: int) -> tuple[int, int, int]:
    """The shape of `frames` yuv420p frames as `yuv420p` returns them (PyAV's ndarray layout)."""
    return frames, height * 3 // 2, width


def yuv420p(rgb: Tensor) -> Tensor:
    """uint8 RGB [F, H, W, 3] (H, W even) → uint8 [F, 3H/2, W]: per frame the Y plane, then the U and V
    planes at half height and width, back to back in memory (the layout PyAV's `from_ndarray` reads)."""
    count, height, width, _ = rgb.shape
    if height % 2 or width % 2:
        raise ValueError(f"yuv420p needs an even frame size, got {width}x{height}")
    pixels = rgb.to(torch.float32, memory_format=torch.contiguous_format)
    weights = LUMA.to(pixels.device)
    luma = pixels @ weights
    mean = chroma_rows(pixels.view(count, height, width // 2, 2, 3).mean(dim=3))
    mean_luma = mean @ weights
    u = 128 + C_SCALE * (mean[..., 2] - mean_luma) / (2 * (1 - KB))
    v = 128 + C_SCALE * (mean[..., 0] - mean_luma) / (2 * (1 - KR))
    y = 16 + Y_SCALE * luma
    planes = torch.cat([y.flatten(1), u.flatten(1), v.flatten(1)], dim=1)
    return planes.round_().clamp_(0, 255).to(torch.uint8).view(planes_shape(count, height, width))


def chroma_rows(pixels: Tensor) -> Tensor:
    """[F, H, W', 3] → [F, H/2, W', 3]: row k is (p[2k−1] + 3·p[2k] + 3·p[2k+1] + p[2k+2]) / 8, rows
    outside the frame taken as its first or last row."""
    padded = torch.cat([pixels[:, :1], pixels, pixels[:, -1:]], dim=1)
    outer, inner = padded[:, 0:-2:2] + padded[:, 3::2], padded[:, 1:-1:2] + padded[:, 2:-1:2]
    return (outer + 3 * inner) / 8
