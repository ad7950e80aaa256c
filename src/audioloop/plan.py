"""Window geometry: which song seconds and output frames each window covers, in whole latents (DESIGN §2)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any

from audioloop.errors import InputError, SettingsError

MAX_WINDOW_S = 20.5
MIN_WINDOW_PX = 9
TOKEN_WARN = 32_000
AUDIO_LATENTS_PER_S = 25
SPATIAL = 32
TEMPORAL = 8
FRAME_EPS = 1e-6


@dataclass(frozen=True)
class Window:
    """One window: its frames, the song slice it hears and the output frames it contributes."""

    index: int
    seed: int
    px_frames: int
    lat_frames: int
    start_px: int
    song_start: float
    song_end: float
    keep_start: int
    keep_end: int
    keep_offset: int


@dataclass(frozen=True)
class Plan:
    """Every window of a render of the song range [start, start + duration), plus non-fatal warnings."""

    width: int
    height: int
    fps: float
    start: float
    duration: float
    total_frames: int
    win_px: int
    win_lat: int
    ov_lat: int
    new_lat: int
    stride_px: int
    windows: tuple[Window, ...]
    warnings: tuple[str, ...]

    @property
    def stride_s(self) -> float:
        """Seconds between window starts (a whole number of latents, so it never drifts)."""
        return self.stride_px / self.fps

    @property
    def video_tokens(self) -> int:
        """Video tokens of the largest window in this plan (what memory and time scale with)."""
        return video_tokens(self.width, self.height, max(w.lat_frames for w in self.windows))

    @property
    def audio_tokens(self) -> int:
        """Audio tokens of the largest window in this plan (25 latents per second)."""
        return audio_tokens(max(w.px_frames for w in self.windows), self.fps)

    @property
    def tokens(self) -> int:
        """Video plus audio tokens per window."""
        return self.video_tokens + self.audio_tokens

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready view for `audioloop plan --json` and the render sidecar."""
        data = asdict(self)
        data["windows"] = [asdict(w) for w in self.windows]
        data["warnings"] = list(self.warnings)
        data.update(
            stride_s=self.stride_s,
            video_tokens=self.video_tokens,
            audio_tokens=self.audio_tokens,
            tokens=self.tokens,
        )
        return data


def latent_frames(px_frames: int) -> int:
    """Latent frames of a causal-VAE clip of px_frames pixel frames (the first frame has its own latent)."""
    return (px_frames - 1) // TEMPORAL + 1


def snap_down_8n1(frames: int) -> int:
    """The largest 8n+1 frame count not above frames (1 for anything below 9)."""
    return max(0, frames - 1) // TEMPORAL * TEMPORAL + 1


def snap_up_8n1(frames: int) -> int:
    """The smallest 8n+1 frame count not below frames."""
    return -(-max(0, frames - 1) // TEMPORAL) * TEMPORAL + 1


def video_tokens(width: int, height: int, lat_frames: int) -> int:
    """Transformer video tokens for one window: (W/32)(H/32) per latent frame."""
    return (width // SPATIAL) * (height // SPATIAL) * lat_frames


def audio_tokens(px_frames: int, fps: float) -> int:
    """Transformer audio tokens for a window of px_frames at fps (25 audio latents per second)."""
    return round(px_frames / fps * AUDIO_LATENTS_PER_S)


def frame_count(seconds: float, fps: float) -> int:
    """floor(seconds·fps), but a product a rounding error below an integer (24.999999…) counts as it."""
    exact = seconds * fps
    nearest = round(exact)
    return nearest if abs(exact - nearest) < FRAME_EPS else math.floor(exact)


def _check_frame(fps: float, width: int, height: int) -> None:
    """Raise SettingsError unless fps is positive and the frame is made of whole 32-px VAE blocks."""
    if not math.isfinite(fps) or fps <= 0:
        raise SettingsError(f"--fps {fps:g} must be a positive number of frames per second; use e.g. 25")
    for name, value in (("--width", width), ("--height", height)):
        if value <= 0 or value % SPATIAL:
            raise SettingsError(
                f"{name} {value} must be a positive multiple of {SPATIAL} (the VAE works on 32-px blocks); "
                f"use e.g. {max(SPATIAL, round(value / SPATIAL) * SPATIAL)}"
            )


def _geometry(fps: float, window_s: float, overlap_s: float) -> tuple[int, int, int]:
    """(win_px, win_lat, ov_lat) for valid settings, or SettingsError naming the setting to change."""
    if not math.isfinite(window_s) or window_s > MAX_WINDOW_S:
        raise SettingsError(
            f"--window {window_s:g} s is over {MAX_WINDOW_S:g} s (LTX-2 positions are normalised to 20 s); "
            "use at most 20 s, e.g. 19.88"
        )
    win_px = snap_down_8n1(round(window_s * fps))
    if win_px < MIN_WINDOW_PX:
        raise SettingsError(
            f"--window {window_s:g} s is {round(window_s * fps)} frames at {fps:g} fps, under the "
            f"{MIN_WINDOW_PX}-frame minimum; use a window of at least {MIN_WINDOW_PX / fps:.3g} s"
        )
    if not math.isfinite(overlap_s) or overlap_s >= window_s:
        raise SettingsError(
            f"--overlap {overlap_s:g} s is not shorter than --window {window_s:g} s; "
            "use an overlap well below the window, e.g. 2 s"
        )
    win_lat = latent_frames(win_px)
    ov_lat = latent_frames(round(overlap_s * fps))
    if ov_lat < 1:
        raise SettingsError(
            f"--overlap {overlap_s:g} s is under one frame at {fps:g} fps, so no context carries over; "
            "use at least one frame, e.g. 2 s"
        )
    if ov_lat >= win_lat:
        raise SettingsError(
            f"--overlap {overlap_s:g} s is {ov_lat} latent frames, not fewer than the window's {win_lat}, "
            "so no window would add new frames; lower --overlap or raise --window"
        )
    return win_px, win_lat, ov_lat


def _song_range(song_duration: float, start: float, duration: float | None, source: str) -> float:
    """The rendered duration: --duration capped at the song's end, or an error naming the fix."""
    if not math.isfinite(song_duration) or song_duration <= 0:
        raise InputError(f"{source}: the song has no audio (duration {song_duration:g} s); use another file")
    if not math.isfinite(start) or start < 0:
        raise SettingsError(f"--start {start:g} s is negative; use 0 or a position in the song, in seconds")
    if start >= song_duration:
        raise InputError(
            f"{source}: --start {start:g} s is at or past the end of the song ({song_duration:g} s); "
            "use a smaller --start"
        )
    if duration is not None and (not math.isfinite(duration) or duration <= 0):
        raise SettingsError(f"--duration {duration:g} s must be positive; omit it to render to the song end")
    available = song_duration - start
    return available if duration is None else min(duration, available)


def _token_warning(plan: Plan) -> tuple[str, ...]:
    """A warning when one window needs more tokens than the model comfortably handles."""
    if plan.tokens <= TOKEN_WARN:
        return ()
    return (
        f"{plan.width}×{plan.height} with {max(w.px_frames for w in plan.windows)}-frame windows is "
        f"{plan.tokens:,} tokens per window ({plan.video_tokens:,} video + {plan.audio_tokens:,} audio), "
        f"over ~{TOKEN_WARN:,}: it costs GPU memory and time; lower --width/--height or shorten --window",
    )


def _window(
    index: int, px: int, lead: int, stride_px: int, total: int, fps: float, start: float, seed: int
) -> Window:
    """Window index of px frames; lead is how many of its frames precede its first kept one."""
    start_px = index * stride_px
    song_start = start + start_px / fps
    keep_start = start_px + lead
    return Window(
        index=index,
        seed=seed + index,
        px_frames=px,
        lat_frames=latent_frames(px),
        start_px=start_px,
        song_start=song_start,
        song_end=song_start + px / fps,
        keep_start=keep_start,
        keep_end=min(start_px + px, total),
        keep_offset=lead,
    )


def make_plan(
    song_duration: float,
    *,
    fps: float,
    width: int,
    height: int,
    window_s: float,
    overlap_s: float,
    start: float = 0.0,
    duration: float | None = None,
    seed: int = 0,
    source: str = "song",
) -> Plan:
    """Plan the fewest overlapping windows that cover [start, start + duration) of a song of song_duration s.

    Window 0 keeps all its frames; window i ≥ 1 starts i·stride_px frames in, spends its first ov_lat latents
    (8·ov_lat − 7 frames) on context from window i − 1 and keeps the rest; the last window's kept range is
    clamped to floor(duration·fps) and its audio may run past the song (padded with silence). When the whole
    range fits in one window, that window shrinks to the smallest 8n+1 frame count (at least 9) that covers
    it, so a short clip does not pay for a full window; the plan's win_px/win_lat/ov_lat/stride_px still
    describe the configured geometry. duration None means to the end of the song; a longer one is capped.
    """
    _check_frame(fps, width, height)
    win_px, win_lat, ov_lat = _geometry(fps, window_s, overlap_s)
    duration = _song_range(song_duration, start, duration, source)
    total = frame_count(duration, fps)
    if total < 1:
        raise InputError(
            f"{source}: the range from --start {start:g} s is {duration:g} s, shorter than one frame at "
            f"{fps:g} fps; use a smaller --start or a longer --duration"
        )
    new_lat = win_lat - ov_lat
    stride_px = TEMPORAL * new_lat
    if total <= win_px:
        windows = (_window(0, max(MIN_WINDOW_PX, snap_up_8n1(total)), 0, stride_px, total, fps, start, seed),)
    else:
        count = 1 + -(-(total - win_px) // stride_px)
        lead = win_px - stride_px
        windows = tuple(
            _window(i, win_px, lead if i else 0, stride_px, total, fps, start, seed) for i in range(count)
        )
    plan = Plan(
        width=width,
        height=height,
        fps=fps,
        start=start,
        duration=duration,
        total_frames=total,
        win_px=win_px,
        win_lat=win_lat,
        ov_lat=ov_lat,
        new_lat=new_lat,
        stride_px=stride_px,
        windows=windows,
        warnings=(),
    )
    return replace(plan, warnings=_token_warning(plan))
