"""Media ↔ normalised latents with the LTX-2.3 VAEs, with the statistics and packing diffusers' pipelines use.

Latents leave this module normalised and in float32 (as diffusers keeps them for sampling); the VAEs run under
inference mode in their own device and dtype.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKLLTX2Audio, AutoencoderKLLTX2Video

from audioloop.media.yuv import planes_shape, yuv420p
from audioloop.models import decoder as vae_decoder

VIDEO_TEMPORAL_FACTOR = 8
# Decode tiles: equal tiles of at most DECODE_TILE_AREA latents² (the decoder's memory grows with a tile's
# area), the fewest decoded pixels in all: 832×480 decodes whole, 1664×960 in two 896-px columns. Diffusers'
# 512-px tiles with a 384-px stride cut 832×480 into six (two of them 2 and 3 latents wide), 1.5× the frame.
DECODE_TILE_AREA = 32 * 32
DECODE_TILE_OVERLAP_PX = 128
CONVERT_FRAMES = 32  # decoded frames turned into uint8 at a time (~0.6 GB of float32 at 1664×960)


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


def decode_video(
    video_vae: AutoencoderKLLTX2Video,
    z: torch.Tensor,
    tile_area: int = DECODE_TILE_AREA,
    frames: tuple[int, int] | None = None,
    yuv: bool = False,
) -> torch.Tensor:
    """Normalised [1, C, F, h, w] → uint8 RGB [8(F−1)+1, 32h, 32w, 3] on the CPU, or only its frames
    [start, stop) with `frames` (the fused decoder then computes only what they depend on); with `yuv`, the
    frames as the video stores them, yuv420p planes [F', 48h, 32w] (`media.yuv`), converted on the
    decoder's device.

    Frames of more than `tile_area` latents² are decoded in equal spatial tiles (`tile_grid`), blended
    linearly where they overlap. Never in temporal tiles: each blended temporal seam shows as a visible
    pulse, one per tile stride (~2 s in the field report's ComfyUI decodes); a render streams its timeline
    through one decode instead (VideoStream). The decoder runs as it is set up: `decoder.install` makes it
    the fused forward (same function, fewer memory passes).
    """
    device, dtype = _placement(video_vae)
    latents = denormalize_video(z.to(device=device, dtype=torch.float32), video_vae).to(dtype)
    timestep = torch.zeros(1, device=device, dtype=dtype) if video_vae.config.timestep_conditioning else None
    with torch.inference_mode():
        video = _tiled(
            video_vae,
            latents,
            tile_area,
            lambda _, tile: vae_decoder.decode(video_vae.decoder, tile, timestep, frames),
        )
    return _to_uint8([video[0]], yuv)


class VideoStream:
    """decode_video over a timeline of latents that arrives span by span, in order: one fused decoder
    `Stream` per spatial tile, so every frame is the whole timeline's decode (`audioloop.decode`). Each call
    returns exactly the frames it is asked for, in decode_video's layout, and holds the few more that its
    latents completed until the next call asks for them."""

    def __init__(
        self, video_vae: AutoencoderKLLTX2Video, tile_area: int = DECODE_TILE_AREA, yuv: bool = False
    ) -> None:
        self._vae = video_vae
        self._tile_area = tile_area
        self._yuv = yuv
        self._tiles: list[vae_decoder.Stream] = []
        self._held: list[torch.Tensor] = []
        self._emitted = 0

    def __call__(self, z: torch.Tensor, frames: tuple[int, int], last: bool = False) -> torch.Tensor:
        """Normalised latents [1, C, F, h, w] that follow the last call's → uint8 output frames [start, stop)
        of the timeline (start: where the last call stopped), as decode_video lays them out; `last` ends
        the timeline (frames past `stop` are dropped)."""
        start, stop = frames
        if start != self._emitted or stop <= start:
            raise ValueError(f"frames {start}–{stop} do not follow the {self._emitted} already returned")
        device, dtype = _placement(self._vae)
        latents = denormalize_video(z.to(device=device, dtype=torch.float32), self._vae).to(dtype)
        with torch.inference_mode():
            video = _tiled(self._vae, latents, self._tile_area, self._push(last))
        parts = self._held if video is None else [*self._held, video[0]]
        count = sum(part.shape[1] for part in parts)
        if count < stop - start:
            raise ValueError(f"the decode completed frames {start}–{start + count}, not {start}–{stop}")
        emitted, rest = _cut(parts, stop - start)
        self._held = [] if last else [part.clone() for part in rest]
        self._emitted = stop
        return _to_uint8(emitted, self._yuv)

    def _push(self, last: bool) -> Callable[[int, torch.Tensor], torch.Tensor | None]:
        """Tile k's latents → its stream's new frames, the streams made on first use."""

        def push(k: int, latents: torch.Tensor) -> torch.Tensor | None:
            if k == len(self._tiles):
                self._tiles.append(vae_decoder.Stream(self._vae.decoder))
            return self._tiles[k].push(latents, last=last)

        return push


def tile_spans(length: int, count: int, min_overlap: int) -> tuple[tuple[int, int], ...]:
    """[start, stop) of `count` tiles of one width spread evenly over an axis of `length` latents, the
    narrowest whose neighbours overlap by ≥ `min_overlap`. One width means one decoder graph to compile
    (diffusers cuts its last tile short, so a 1664-px frame had 1024- and 832-px tiles, and two graphs)."""
    if not _tiles_fit(length, count, min_overlap):
        raise ValueError(f"{count} tiles overlapping by {min_overlap} do not fit in {length} latents")
    width = _tile_width(length, count, min_overlap)
    starts = [k * (length - width) // (count - 1) for k in range(count)] if count > 1 else [0]
    return tuple((start, start + width) for start in starts)


def tile_grid(
    height: int, width: int, max_area: int, min_overlap: int
) -> tuple[tuple[tuple[int, int], ...], tuple[tuple[int, int], ...]]:
    """(rows, columns) as `tile_spans` of the decode tiles of a height × width latent frame: tiles of at
    most `max_area` latents² that decode the least area in all, then the fewest tiles."""
    best = None
    for rows in filter(lambda n: _tiles_fit(height, n, min_overlap), range(1, height + 1)):
        for cols in filter(lambda n: _tiles_fit(width, n, min_overlap), range(1, width + 1)):
            tile = _tile_width(height, rows, min_overlap) * _tile_width(width, cols, min_overlap)
            key = (rows * cols * tile, rows * cols)
            if tile <= max_area and (best is None or key < best[0]):
                best = key, (rows, cols)
    if best is None:
        raise ValueError(
            f"no tiles of ≤ {max_area} latents² overlapping by {min_overlap} cover {height}×{width}"
        )
    rows, cols = best[1]
    return tile_spans(height, rows, min_overlap), tile_spans(width, cols, min_overlap)


def _tiles_fit(length: int, count: int, min_overlap: int) -> bool:
    """Whether `count` equal tiles overlapping by ≥ `min_overlap` fit an axis of `length`, each starting
    after the one before and none as long as the axis."""
    width = _tile_width(length, count, min_overlap)
    return count == 1 or (width < length and length - width >= count - 1)


def _tile_width(length: int, count: int, min_overlap: int) -> int:
    """The width of `count` equal tiles covering `length` with neighbours overlapping by ≥ `min_overlap`."""
    return length if count == 1 else -(-(length + (count - 1) * min_overlap) // count)


def blend_weights(spans: tuple[tuple[int, int], ...], scale: int) -> list[torch.Tensor]:
    """Per tile of `spans` (in latents), float32 weights over its `scale`× as many pixels: 1 inside, a linear
    ramp across each overlap with a neighbour, so that the weights of all tiles sum to 1 at every pixel."""
    edges = [(a * scale, b * scale) for a, b in spans]
    raw = []
    for k, (a, b) in enumerate(edges):
        p = torch.arange(a, b, dtype=torch.float64) + 0.5
        w = torch.ones(b - a, dtype=torch.float64)
        if k > 0:
            w = torch.minimum(w, (p - a) / (edges[k - 1][1] - a))
        if k + 1 < len(edges):
            w = torch.minimum(w, (b - p) / (b - edges[k + 1][0]))
        raw.append(w)
    total = torch.zeros(edges[-1][1], dtype=torch.float64)
    for (a, b), w in zip(edges, raw, strict=True):
        total[a:b] += w
    return [(w / total[a:b]).float() for (a, b), w in zip(edges, raw, strict=True)]


def _tiled(
    vae: AutoencoderKLLTX2Video,
    latents: torch.Tensor,
    tile_area: int,
    decode: Callable[[int, torch.Tensor], torch.Tensor | None],
) -> torch.Tensor | None:
    """Pixels [1, 3, F', H, W] of `latents` decoded tile by tile (`tile_grid`) when a frame exceeds
    `tile_area`: `decode(k, tile_latents)` gives tile k's pixels (None: no frames yet, alike for every
    tile; each tile is still decoded), each weighted by `blend_weights` into the frame in the decoder's
    dtype."""
    factor = vae.spatial_compression_ratio
    rows, cols = tile_grid(*latents.shape[-2:], tile_area, DECODE_TILE_OVERLAP_PX // factor)
    if len(rows) == len(cols) == 1:
        return decode(0, latents)
    row_weights, col_weights = (blend_weights(spans, factor) for spans in (rows, cols))
    video = None
    tiles = ((y, x) for y in zip(rows, row_weights, strict=True) for x in zip(cols, col_weights, strict=True))
    for k, (((y0, y1), wy), ((x0, x1), wx)) in enumerate(tiles):
        pixels = decode(k, latents[..., y0:y1, x0:x1].contiguous())
        if pixels is None:
            continue
        if video is None:
            video = pixels.new_zeros(*pixels.shape[:3], *(n * factor for n in latents.shape[-2:]))
        pixels.mul_((wy[:, None] * wx).to(pixels))
        video[..., y0 * factor : y1 * factor, x0 * factor : x1 * factor] += pixels
    return video


def _encode_pixels(vae: AutoencoderKLLTX2Video, pixels: torch.Tensor) -> torch.Tensor:
    """uint8 [1, 3, F, H, W] → [-1, 1] → the posterior mode (as the pipelines' "argmax"), normalised."""
    device, dtype = _placement(vae)
    x = pixels.to(device=device, dtype=torch.float32) / 127.5 - 1.0
    with torch.inference_mode():
        z = vae.encode(x.to(dtype)).latent_dist.mode()
    return normalize_video(z.float(), vae)


def _cut(parts: list[torch.Tensor], frames: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Pieces [3, F, H, W] of one run of frames, in order → views of its first `frames` frames, and of the
    rest."""
    first, rest = [], []
    for part in parts:
        take = min(max(frames, 0), part.shape[1])
        first += [part[:, :take]] if take else []
        rest += [part[:, take:]] if take < part.shape[1] else []
        frames -= take
    return first, rest


def _to_uint8(parts: list[torch.Tensor], yuv: bool = False) -> torch.Tensor:
    """Decoder output in pieces [3, F, H, W] in [-1, 1], one run of frames → uint8 RGB [ΣF, H, W, 3] on the
    CPU, rounded as diffusers' VideoProcessor, or with `yuv` those frames' yuv420p planes; the pieces are
    never joined on the device. CONVERT_FRAMES at a time: converting a 1664×960 span whole held two float32
    copies of it beside the decoder's output (~10 GB for 249 frames). From CUDA through page-locked
    memory: a copy to pageable memory ran at 1.6 GB/s on an H200, 20% of a window's decode; torch caches
    page-locked blocks."""
    height, width = parts[0].shape[2:]
    frames = sum(part.shape[1] for part in parts)
    shape = planes_shape(frames, height, width) if yuv else (frames, height, width, 3)
    cuda = parts[0].is_cuda
    host = torch.empty(shape, dtype=torch.uint8, pin_memory=cuda)
    done = 0
    for part in parts:
        for start in range(0, part.shape[1], CONVERT_FRAMES):
            chunk = part[:, start : start + CONVERT_FRAMES]
            pixels = ((chunk.float() / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 3, 0)
            host[done : done + chunk.shape[1]].copy_(yuv420p(pixels) if yuv else pixels, non_blocking=True)
            done += chunk.shape[1]
    if cuda:
        torch.cuda.current_stream(parts[0].device).synchronize()
    return host


def _channel_stats(vae: AutoencoderKLLTX2Video, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The video VAE's per-channel latent mean and std, shaped to broadcast over [B, C, F, h, w]."""
    shape = (1, -1, 1, 1, 1)
    return vae.latents_mean.view(shape).to(like), vae.latents_std.view(shape).to(like)


def _placement(module: torch.nn.Module) -> tuple[torch.device, torch.dtype]:
    """Where a model's weights live and in which dtype: its inputs go there."""
    weight = next(module.parameters())
    return weight.device, weight.dtype
