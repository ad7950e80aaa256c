"""Media ↔ normalised latents with the LTX-2.3 VAEs, with the statistics and packing diffusers' pipelines use.

Latents leave this module normalised and in float32 (as diffusers keeps them for sampling); the VAEs run under
inference mode in their own device and dtype.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKLLTX2Audio, AutoencoderKLLTX2Video

VIDEO_TEMPORAL_FACTOR = 8
# Decode tiles: 832×480 decodes whole, 1664×960 in two columns. Diffusers' 512-px tiles with a 384-px stride
# cut 832×480 into six (two of them 2 and 3 latents wide) covering 1.5× the frame. The overlap is diffusers'.
DECODE_TILE_PX = 1024
DECODE_TILE_OVERLAP_PX = 128


def normalize_video(z: torch.Tensor, vae: AutoencoderKLLTX2Video) -> torch.Tensor:
    """[B, C, F, h, w] VAE latents → the transformer's space: (z − mean)·scaling_factor/std per channel."""
    mean, std = _channel_stats(vae, z)
    return (z - mean) * vae.config.scaling_factor / std


def denormalize_video(z: torch.Tensor, vae: AutoencoderKLLTX2Video) -> torch.Tensor:
    """The inverse of normalize_video: back to what the VAE decoder reads."""
    mean, std = _channel_stats(vae, z)
    return z * std / vae.config.scaling_factor + mean


def pack_audio(z: torch.Tensor) -> torch.Tensor:
    """[B, C, T, M] audio latents → [B, T, C·M] tokens, channel-major (diffusers' _pack_audio_latents)."""
    return z.transpose(1, 2).flatten(2, 3)


def unpack_audio(tokens: torch.Tensor, channels: int, mel_bins: int) -> torch.Tensor:
    """[B, T, C·M] tokens → [B, C, T, M] audio latents: the inverse of pack_audio."""
    return tokens.unflatten(2, (channels, mel_bins)).transpose(1, 2)


def normalize_audio_tokens(tokens: torch.Tensor, audio_vae: AutoencoderKLLTX2Audio) -> torch.Tensor:
    """Packed audio tokens → the transformer's space, with the audio VAE's per-feature statistics."""
    mean, std = (s.to(tokens) for s in (audio_vae.latents_mean, audio_vae.latents_std))
    return (tokens - mean) / std


def denormalize_audio_tokens(tokens: torch.Tensor, audio_vae: AutoencoderKLLTX2Audio) -> torch.Tensor:
    """The inverse of normalize_audio_tokens."""
    mean, std = (s.to(tokens) for s in (audio_vae.latents_mean, audio_vae.latents_std))
    return tokens * std + mean


def encode_audio(audio_vae: AutoencoderKLLTX2Audio, mel: torch.Tensor, n_latents: int) -> torch.Tensor:
    """Log-mel [1, 2, T, 64] → exactly n_latents packed, normalised tokens [1, n_latents, C·M].

    The causal VAE yields ceil(T/4) latents; extra trailing ones are dropped. If it yields fewer, the tail is
    zero in normalised space (the latent mean): callers that want silence there pad the waveform instead.
    """
    device, dtype = _placement(audio_vae)
    with torch.inference_mode():
        z = audio_vae.encode(mel.to(device=device, dtype=dtype)).latent_dist.mode()
    tokens = normalize_audio_tokens(pack_audio(z.float())[:, :n_latents], audio_vae)
    return F.pad(tokens, (0, 0, 0, n_latents - tokens.shape[1]))


def encode_image(video_vae: AutoencoderKLLTX2Video, image: torch.Tensor) -> torch.Tensor:
    """uint8 [3, H, W] → normalised [1, C, 1, H/32, W/32]: the image latent of window 0 and every guide."""
    return _encode_pixels(video_vae, image[None, :, None])


def encode_frames(video_vae: AutoencoderKLLTX2Video, frames: torch.Tensor) -> torch.Tensor:
    """uint8 [F, H, W, 3] with F = 8n+1 → normalised [1, C, (F−1)//8 + 1, H/32, W/32]."""
    if frames.shape[0] % VIDEO_TEMPORAL_FACTOR != 1:
        raise ValueError(f"encode_frames needs 8n+1 frames, got {frames.shape[0]}")
    return _encode_pixels(video_vae, frames.permute(3, 0, 1, 2)[None])


def decode_video(video_vae: AutoencoderKLLTX2Video, z: torch.Tensor) -> torch.Tensor:
    """Normalised [1, C, F, h, w] → uint8 [8(F−1)+1, 32h, 32w, 3] on the CPU.

    Frames wider or taller than the VAE's tile are decoded in spatial tiles. Never in temporal tiles: each
    blended temporal seam shows as a visible pulse, one per tile stride (~2 s in the field report's ComfyUI
    decodes); a render window already is the temporal tile and is decoded whole. The decoder runs as it is
    set up: `decoder.install` makes it the fused forward (same function, fewer memory passes).
    """
    device, dtype = _placement(video_vae)
    latents = denormalize_video(z.to(device=device, dtype=torch.float32), video_vae).to(dtype)
    timestep = torch.zeros(1, device=device, dtype=dtype) if video_vae.config.timestep_conditioning else None
    with torch.inference_mode(), _spatial_tiling(video_vae, *z.shape[-2:]):
        video = video_vae.decode(latents, timestep).sample
    return _to_uint8(video[0])


def _encode_pixels(vae: AutoencoderKLLTX2Video, pixels: torch.Tensor) -> torch.Tensor:
    """uint8 [1, 3, F, H, W] → [-1, 1] → the posterior mode (as the pipelines' "argmax"), normalised."""
    device, dtype = _placement(vae)
    x = pixels.to(device=device, dtype=torch.float32) / 127.5 - 1.0
    with torch.inference_mode():
        z = vae.encode(x.to(dtype)).latent_dist.mode()
    return normalize_video(z.float(), vae)


def _to_uint8(video: torch.Tensor) -> torch.Tensor:
    """Decoder output [3, F, H, W] in [-1, 1] → uint8 [F, H, W, 3] on the CPU, rounded as diffusers'
    VideoProcessor. From CUDA through page-locked memory: a plain copy to pageable memory moved 0.68 GB of
    frames at 1.6 GB/s on an H200, 20% of a window's decode; torch caches the page-locked blocks."""
    pixels = ((video.float() / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)
    pixels = pixels.permute(1, 2, 3, 0).contiguous()
    if not pixels.is_cuda:
        return pixels
    host = torch.empty(pixels.shape, dtype=torch.uint8, pin_memory=True)
    host.copy_(pixels, non_blocking=True)
    torch.cuda.current_stream(pixels.device).synchronize()
    return host


def warm_decoder(video_vae: AutoencoderKLLTX2Video, height: int, width: int) -> None:
    """Decode two latents of height × width once, so that an installed fused decoder's kernels for this
    frame size are compiled on this thread: compiling on a decode thread beside a running transformer
    breaks (FX's tracing patches nn.Module.__call__ for every thread)."""
    device, _ = _placement(video_vae)
    decode_video(video_vae, torch.zeros(1, video_vae.config.latent_channels, 2, height, width, device=device))


def tile_stride(latents: int, tile: int, min_overlap: int) -> int:
    """The stride of diffusers' spatial decode tiles along one axis of `latents`: `tile` (one tile) when it
    fits, else the balanced stride of the fewest tiles of `tile` that cover the axis with neighbours
    overlapping by ≥ `min_overlap` (diffusers starts a tile at every multiple of the stride)."""
    if latents <= tile:
        return tile
    count = 2
    while (stride := -(-latents // count)) > tile - min_overlap:
        count += 1
    return stride


@contextmanager
def _spatial_tiling(vae: AutoencoderKLLTX2Video, height: int, width: int) -> Iterator[None]:
    """Spatial tiles of DECODE_TILE_PX for latents of height × width, none when a frame fits one (never
    temporal tiles); restores the VAE's settings."""
    names = ("use_tiling", "use_framewise_decoding", "tile_sample_min_height", "tile_sample_min_width")
    names += ("tile_sample_stride_height", "tile_sample_stride_width")
    saved = {name: getattr(vae, name) for name in names}
    factor = vae.spatial_compression_ratio
    tile, overlap = DECODE_TILE_PX // factor, DECODE_TILE_OVERLAP_PX // factor
    vae.enable_tiling(
        tile_sample_min_height=DECODE_TILE_PX,
        tile_sample_min_width=DECODE_TILE_PX,
        tile_sample_stride_height=tile_stride(height, tile, overlap) * factor,
        tile_sample_stride_width=tile_stride(width, tile, overlap) * factor,
    )
    vae.use_framewise_decoding = False
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(vae, name, value)


def _channel_stats(vae: AutoencoderKLLTX2Video, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The video VAE's per-channel latent mean and std, shaped to broadcast over [B, C, F, h, w]."""
    shape = (1, -1, 1, 1, 1)
    return vae.latents_mean.view(shape).to(like), vae.latents_std.view(shape).to(like)


def _placement(module: torch.nn.Module) -> tuple[torch.device, torch.dtype]:
    """Where a model's weights live and in which dtype: its inputs go there."""
    weight = next(module.parameters())
    return weight.device, weight.dtype
