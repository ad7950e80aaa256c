"""Stage-2 tile geometry: which latents of a finished render each refinement tile covers, what it freezes and
keeps, which prompt it takes and which low-resolution latents it upsamples — pure arithmetic.

The render's latent timeline is window 0's latents, then each later window's new latents (timeline latent k
of window i is i·new_lat + k). The upscale refines the latents that carry a shown frame, `shown_latents`,
in tiles laid out exactly like render windows: tile t starts at t·(tile_lat − ov_lat), its first ov_lat
latents are frozen context (the previous tile's refined last latents) and the rest are refined, so the kept
latents of all tiles cover the timeline once. The tiles are returned as a `Plan` at twice the render's size,
whose windows are the tiles, so the render's decode spans, LatentStream, audio slicing and sidecar table
apply to them unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from audioloop.decode import decoded_frames, first_frame, latent_of, window_ends
from audioloop.errors import SettingsError
from audioloop.plan import (
    MAX_WINDOW_S,
    MIN_WINDOW_PX,
    TEMPORAL,
    TOKEN_WARN,
    Plan,
    Window,
    audio_tokens,
    latent_frames,
    snap_down_8n1,
)
from audioloop.schedule import WindowPrompt

SCALE = 2  # the LTX-2.3 latent upsampler doubles width and height
UPSAMPLE_MARGIN = 4  # render latents the upsampler sees on each side of the latents a tile keeps


def shown_latents(render: Plan) -> int:
    """Timeline latents that carry an output frame (the render's tail past the song carries none)."""
    return latent_of(render.total_frames - 1) + 1


def timeline_latents(render: Plan) -> int:
    """Every latent of the render's timeline: window 0's, then each later window's new ones."""
    return window_ends(render)[-1]


def window_of(render: Plan, latent: int) -> int:
    """The render window whose kept (new) latents include timeline latent `latent`."""
    return min(len(render.windows) - 1, max(0, (latent - render.ov_lat) // render.new_lat))


def tile_tokens(cells: int, lat_frames: int, fps: float) -> int:
    """Transformer tokens of one tile: its video cells plus the audio tokens of its frames."""
    return cells * lat_frames + audio_tokens(decoded_frames(lat_frames), fps)


def default_tile_latents(cells: int, fps: float, longest: int) -> int:
    """The longest tile, at most `longest` latents and at least 2, whose tokens stay within TOKEN_WARN at
    `cells` latent cells per frame (20 latents = 6.12 s at 1664×960 and 25 fps): memory and time per tile."""
    fitting = [n for n in range(2, longest + 1) if tile_tokens(cells, n, fps) <= TOKEN_WARN]
    return max(fitting, default=2)


def tile_latents(tile_s: float, fps: float) -> int:
    """Latents of a `tile_s`-second tile (snapped down to 8n+1 frames), or SettingsError naming --tile."""
    if not math.isfinite(tile_s) or tile_s > MAX_WINDOW_S:
        raise SettingsError(
            f"--tile {tile_s:g} s is over {MAX_WINDOW_S:g} s (LTX-2 positions are normalised to 20 s); "
            "use a shorter tile, e.g. 6"
        )
    frames = snap_down_8n1(round(tile_s * fps)) if tile_s > 0 else 0
    if frames < MIN_WINDOW_PX:
        raise SettingsError(
            f"--tile {tile_s:g} s is under two latents ({MIN_WINDOW_PX} frames at {fps:g} fps); "
            f"use at least {MIN_WINDOW_PX / fps:.3g} s"
        )
    return latent_frames(frames)


def overlap_latents(overlap_s: float, fps: float, tile_lat: int) -> int:
    """Frozen context latents per tile for `overlap_s` seconds, or SettingsError naming --tile-overlap."""
    overlap = latent_frames(round(overlap_s * fps)) if math.isfinite(overlap_s) else 0
    if overlap < 1:
        raise SettingsError(
            f"--tile-overlap {overlap_s:g} s is under one frame at {fps:g} fps, so tiles would share no "
            "context and seams would show; use at least one frame, e.g. 1 s"
        )
    if overlap >= tile_lat:
        raise SettingsError(
            f"--tile-overlap {overlap_s:g} s is {overlap} latent frames, not fewer than the tile's "
            f"{tile_lat}, so no tile would refine anything; lower --tile-overlap or raise --tile"
        )
    return overlap


def _tile(render: Plan, index: int, start: int, lat: int, context: int, seed: int) -> Window:
    """Tile `index`: `lat` latents from timeline latent `start`, its first `context` frozen."""
    start_px, px = TEMPORAL * start, decoded_frames(lat)
    song_start = render.start + start_px / render.fps
    keep_start = first_frame(start + context)
    return Window(
        index=index,
        seed=seed + index,
        px_frames=px,
        lat_frames=lat,
        start_px=start_px,
        song_start=song_start,
        song_end=song_start + px / render.fps,
        keep_start=keep_start,
        keep_end=min(start_px + px, render.total_frames),
        keep_offset=keep_start - start_px,
    )


def tile_plan(render: Plan, tile_lat: int, ov_lat: int, seed: int) -> Plan:
    """The refinement tiles of a render at twice its size: the fewest tiles of at most tile_lat latents,
    overlapping by ov_lat, that cover its shown latents (the last may be shorter); tile t uses seed + t."""
    if not 0 < ov_lat < tile_lat:
        raise ValueError(f"tile overlap must satisfy 0 < {ov_lat} < {tile_lat}")
    needed, stride = shown_latents(render), tile_lat - ov_lat
    count = 1 if needed <= tile_lat else 1 + -(-(needed - tile_lat) // stride)
    tiles = tuple(
        _tile(render, i, i * stride, min(tile_lat, needed - i * stride), ov_lat if i else 0, seed)
        for i in range(count)
    )
    return Plan(
        width=SCALE * render.width,
        height=SCALE * render.height,
        fps=render.fps,
        start=render.start,
        duration=render.duration,
        total_frames=render.total_frames,
        win_px=decoded_frames(tile_lat),
        win_lat=tile_lat,
        ov_lat=ov_lat,
        new_lat=stride,
        stride_px=TEMPORAL * stride,
        windows=tiles,
        warnings=(),
    )


def refined_range(tiles: Plan, tile: Window) -> tuple[int, int]:
    """Timeline latents [first, end) that tile `tile` refines (the rest of it is frozen context)."""
    start = tile.index * tiles.new_lat
    return start + (tiles.ov_lat if tile.index else 0), start + tile.lat_frames


def upsample_range(
    tiles: Plan, tile: Window, available: int, margin: int = UPSAMPLE_MARGIN
) -> tuple[int, int]:
    """Render latents [lo, hi) the upsampler reads for a tile: its refined latents plus `margin` on each side
    where the render has them, so the upsampler's temporal convolutions see real neighbours at the cuts."""
    first, end = refined_range(tiles, tile)
    return max(0, first - margin), min(available, end + margin)


def tile_prompts(render: Plan, prompts: Sequence[WindowPrompt], tiles: Plan) -> tuple[WindowPrompt, ...]:
    """Each tile's prompt: the one the render used for the middle of the tile's refined latents (the render
    window that produced them), so stage 2 follows the render's own schedule snapping."""
    chosen = []
    for tile in tiles.windows:
        first, end = refined_range(tiles, tile)
        source = prompts[window_of(render, (first + end - 1) // 2)]
        chosen.append(WindowPrompt(tile.index, source.entry, source.prompt))
    return tuple(chosen)
