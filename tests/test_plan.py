"""Window geometry (DESIGN §2): exact worked values, every error, and properties over any valid settings."""

from __future__ import annotations

import itertools
import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from audioloop.errors import InputError, SettingsError
from audioloop.plan import (
    Plan,
    audio_tokens,
    frame_count,
    latent_frames,
    make_plan,
    snap_down_8n1,
    snap_up_8n1,
    video_tokens,
)

NTSC = 24000 / 1001
BASE = {"fps": 25.0, "width": 832, "height": 480, "window_s": 19.88, "overlap_s": 2.0}


def plan_of(song: float = 210.0, **overrides: object) -> Plan:
    """make_plan with DESIGN's defaults, any of them overridden."""
    return make_plan(song, **{**BASE, **overrides})


@pytest.mark.parametrize(("px", "lat"), [(1, 1), (9, 2), (25, 4), (49, 7), (497, 63)])
def test_latent_frames_uses_causal_formula(px: int, lat: int) -> None:
    assert latent_frames(px) == lat


def test_latent_frames_is_not_px_div_8() -> None:
    assert latent_frames(25) == 4
    assert 25 // 8 == 3


@pytest.mark.parametrize(("frames", "down", "up"), [(0, 1, 1), (1, 1, 1), (8, 1, 9), (9, 9, 9), (75, 73, 81)])
def test_snap_8n1(frames: int, down: int, up: int) -> None:
    assert snap_down_8n1(frames) == down
    assert snap_up_8n1(frames) == up


def test_snap_497_is_fixed_point() -> None:
    assert snap_down_8n1(497) == 497
    assert snap_up_8n1(497) == 497
    assert snap_down_8n1(504) == 497
    assert snap_up_8n1(498) == 505


@pytest.mark.parametrize(
    ("seconds", "fps", "frames"),
    [(0.29, 100.0, 29), (0.57, 100.0, 57), (1.15, 100.0, 115), (4.35, 100.0, 435), (1001.0, NTSC, 24000)],
)
def test_frame_count_does_not_fall_into_the_float_trap(seconds: float, fps: float, frames: int) -> None:
    assert frame_count(seconds, fps) == frames


@pytest.mark.parametrize(("seconds", "frames"), [(1.999, 49), (0.039, 0), (0.04, 1), (210.0, 5250)])
def test_frame_count_floors(seconds: float, frames: int) -> None:
    assert frame_count(seconds, 25.0) == frames


def test_frame_count_ntsc_minute() -> None:
    assert frame_count(60.0, NTSC) == 1438  # 1438.56…


def test_token_helpers() -> None:
    assert video_tokens(832, 480, 63) == 24_570
    assert audio_tokens(497, 25.0) == 497
    assert audio_tokens(473, NTSC) == 493  # 19.728 s → 493.2


def test_design_worked_row_two_second_overlap() -> None:
    plan = plan_of()
    assert (plan.win_px, plan.win_lat, plan.ov_lat, plan.new_lat, plan.stride_px) == (497, 63, 7, 56, 448)
    assert plan.stride_s == pytest.approx(17.92, abs=1e-12)
    assert plan.windows[1].keep_offset == 49


@pytest.mark.parametrize(
    ("overlap", "ov_px", "ov_lat", "new_lat", "stride_px", "stride_s", "offset"),
    [
        (1.0, 25, 4, 59, 472, 18.88, 25),  # (25-1)//8+1 = 4; 63-4 = 59; 8·59 = 472; 497-472 = 25
        (2.0, 50, 7, 56, 448, 17.92, 49),  # (50-1)//8+1 = 7; 63-7 = 56; 8·56 = 448; 497-448 = 49
        (3.0, 75, 10, 53, 424, 16.96, 73),  # (75-1)//8+1 = 10; 63-10 = 53; 8·53 = 424; 497-424 = 73
    ],
)
def test_worked_rows(
    overlap: float, ov_px: int, ov_lat: int, new_lat: int, stride_px: int, stride_s: float, offset: int
) -> None:
    plan = plan_of(overlap_s=overlap)
    assert round(overlap * 25) == ov_px
    assert (plan.win_px, plan.win_lat) == (497, 63)
    assert (plan.ov_lat, plan.new_lat, plan.stride_px) == (ov_lat, new_lat, stride_px)
    assert plan.stride_s == pytest.approx(stride_s, abs=1e-12)
    assert all(w.keep_offset == offset for w in plan.windows[1:])


def test_window_i_keeps_frames_49_to_497() -> None:
    plan = plan_of()
    for w in plan.windows[1:-1]:
        i = w.index
        assert (w.keep_start - w.start_px, w.keep_end - w.start_px) == (49, 497)
        assert (w.keep_start, w.keep_end) == (497 + (i - 1) * 448, 497 + i * 448)


def test_three_and_a_half_minute_song() -> None:
    plan = plan_of(210.0)
    assert plan.total_frames == 5250
    assert len(plan.windows) == 12  # 1 + ceil((5250 - 497) / 448) = 1 + 11
    first, second, last = plan.windows[0], plan.windows[1], plan.windows[-1]
    assert (first.keep_start, first.keep_end, first.keep_offset) == (0, 497, 0)
    assert (first.song_start, first.song_end) == (0.0, 19.88)
    assert (second.start_px, second.song_start, second.keep_start, second.keep_end) == (448, 17.92, 497, 945)
    assert (last.index, last.seed, last.start_px) == (11, 11, 4928)
    assert (last.keep_start, last.keep_end) == (4977, 5250)
    assert last.song_start == 4928 / 25
    assert last.song_end == pytest.approx(217.0)  # runs 7 s past the song: padded with silence
    assert plan.warnings == ()


def test_832x480x497_is_24570_video_tokens() -> None:
    plan = plan_of()
    assert plan.video_tokens == 24_570
    assert plan.audio_tokens == 497
    assert plan.tokens == 25_067


def test_start_offsets_song_time_not_frames() -> None:
    plan = plan_of(210.0, start=12.5, duration=60.0, seed=7)
    assert (plan.start, plan.duration, plan.total_frames) == (12.5, 60.0, 1500)
    assert [w.seed for w in plan.windows] == [7, 8, 9, 10]
    assert [w.start_px for w in plan.windows] == [0, 448, 896, 1344]
    assert [w.song_start for w in plan.windows] == [
        12.5 + 0 / 25,
        12.5 + 448 / 25,
        12.5 + 896 / 25,
        12.5 + 1344 / 25,
    ]
    assert plan.windows[-1].keep_end == 1500


def test_duration_is_capped_at_the_song_end() -> None:
    plan = plan_of(100.0, start=90.0, duration=60.0)
    assert plan.duration == 10.0
    assert plan.total_frames == 250


def test_ntsc_fps() -> None:
    plan = plan_of(60.0, fps=NTSC, window_s=20.0, overlap_s=2.0)
    # round(20·23.976) = 480 → 473; round(2·23.976) = 48 → (47)//8+1 = 6 latents
    assert (plan.win_px, plan.win_lat, plan.ov_lat, plan.new_lat, plan.stride_px) == (473, 60, 6, 54, 432)
    assert plan.total_frames == 1438
    assert [(w.keep_start, w.keep_end) for w in plan.windows] == [
        (0, 473),
        (473, 905),
        (905, 1337),
        (1337, 1438),
    ]
    assert plan.windows[3].song_start == 0.0 + 1296 / NTSC
    assert plan.windows[3].song_start == pytest.approx(54.054)


def test_song_exactly_one_window_long_is_one_full_window() -> None:
    plan = plan_of(19.88)
    assert [(w.px_frames, w.keep_start, w.keep_end) for w in plan.windows] == [(497, 0, 497)]


def test_one_frame_over_a_window_adds_a_second_window() -> None:
    plan = plan_of(19.92)
    assert plan.total_frames == 498
    assert [(w.keep_start, w.keep_end) for w in plan.windows] == [(0, 497), (497, 498)]


def test_three_second_clip_shrinks_to_81_frames() -> None:
    plan = plan_of(3.0)
    (only,) = plan.windows
    assert plan.total_frames == 75
    assert (only.px_frames, only.lat_frames) == (81, 11)
    assert (only.keep_start, only.keep_end, only.keep_offset) == (0, 75, 0)
    assert only.song_end == pytest.approx(3.24)
    assert plan.video_tokens == 26 * 15 * 11
    assert plan.audio_tokens == 81
    assert (plan.win_px, plan.ov_lat, plan.stride_px) == (497, 7, 448)  # configured geometry is kept


def test_duration_cap_also_shrinks() -> None:
    plan = plan_of(210.0, start=30.0, duration=3.0)
    assert [(w.px_frames, w.song_start, w.keep_end) for w in plan.windows] == [(81, 30.0, 75)]


def test_clip_of_a_few_frames_gets_the_nine_frame_minimum() -> None:
    plan = plan_of(0.2)
    assert plan.total_frames == 5
    assert [(w.px_frames, w.lat_frames, w.keep_end) for w in plan.windows] == [(9, 2, 5)]


def test_exact_8n1_clip_is_not_padded() -> None:
    assert plan_of(81 / 25).windows[0].px_frames == 81


def test_token_warning_above_32k() -> None:
    plan = plan_of(width=1280, height=704)
    assert plan.video_tokens == 55_440
    (warning,) = plan.warnings
    assert "55,937 tokens" in warning
    assert "memory" in warning and "time" in warning
    assert "--width/--height" in warning and "--window" in warning


def test_no_token_warning_at_default_size() -> None:
    assert plan_of().warnings == ()


def test_no_token_warning_when_a_large_frame_only_needs_a_short_window() -> None:
    plan = plan_of(3.0, width=1280, height=704)
    assert plan.tokens == 40 * 22 * 11 + 81
    assert plan.warnings == ()


def test_token_warning_threshold_is_strict() -> None:
    # 1024x512: 32·16 = 512 tokens per latent. 61 latents (481 px) → 31,232 + 481 = 31,713 (no warning);
    # 63 latents (497 px) → 32,256 + 497 = 32,753 (warning).
    assert plan_of(width=1024, height=512, window_s=481 / 25).warnings == ()
    assert len(plan_of(width=1024, height=512).warnings) == 1


def test_to_dict_is_json_ready_and_complete() -> None:
    plan = plan_of(40.0, seed=3)
    data = json.loads(json.dumps(plan.to_dict()))
    assert data["win_px"] == 497 and data["stride_px"] == 448 and data["total_frames"] == 1000
    assert data["stride_s"] == pytest.approx(17.92)
    assert (data["video_tokens"], data["audio_tokens"], data["tokens"]) == (24_570, 497, 25_067)
    assert data["warnings"] == []
    assert [w["seed"] for w in data["windows"]] == [3, 4, 5]
    assert data["windows"][2] == {
        "index": 2,
        "seed": 5,
        "px_frames": 497,
        "lat_frames": 63,
        "start_px": 896,
        "song_start": 896 / 25,
        "song_end": 896 / 25 + 497 / 25,
        "keep_start": 945,
        "keep_end": 1000,
        "keep_offset": 49,
    }


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        ({"overlap_s": 19.88}, "--overlap 19.88 s is not shorter than --window"),
        ({"overlap_s": 25.0, "window_s": 20.0}, "--overlap 25 s is not shorter"),
        ({"overlap_s": 0.0}, "--overlap 0 s is under one frame"),
        ({"overlap_s": 0.01}, "under one frame"),
        ({"overlap_s": -1.0}, "--overlap -1 s"),
        ({"window_s": 1.0, "overlap_s": 0.99}, "not fewer than the window's 4"),
        ({"width": 840}, "--width 840 must be a positive multiple of 32"),
        ({"height": 0}, "--height 0 must be a positive multiple of 32"),
        ({"width": -832}, "--width -832"),
        ({"fps": 0.0}, "--fps 0 must be a positive"),
        ({"fps": -25.0}, "--fps -25"),
        ({"fps": math.nan}, "--fps nan"),
        ({"window_s": 20.6}, "--window 20.6 s is over 20.5 s"),
        ({"window_s": math.inf}, "--window inf s"),
        (
            {"window_s": 0.3, "overlap_s": 0.04},
            "--window 0.3 s is 8 frames at 25 fps, under the 9-frame minimum",
        ),
        ({"window_s": -2.0}, "under the 9-frame minimum"),
        ({"start": -1.0}, "--start -1 s is negative"),
        ({"duration": 0.0}, "--duration 0 s must be positive"),
        ({"duration": -5.0}, "--duration -5 s"),
    ],
)
def test_settings_errors(overrides: dict[str, float], needle: str) -> None:
    with pytest.raises(SettingsError) as caught:
        plan_of(**overrides)
    assert needle in str(caught.value)
    assert "\n" not in str(caught.value)
    assert caught.value.exit_code == 2


def test_window_limits_are_inclusive() -> None:
    assert plan_of(window_s=20.5).win_px == 505  # round(512.5) = 512 → 505
    assert plan_of(window_s=0.36, overlap_s=0.04).win_px == 9


@pytest.mark.parametrize("start", [210.0, 250.0])
def test_start_at_or_past_song_end_is_an_input_error(start: float) -> None:
    with pytest.raises(InputError) as caught:
        make_plan(210.0, **BASE, start=start, source="song.flac")
    message = str(caught.value)
    assert message.startswith("song.flac: ")
    assert f"--start {start:g} s is at or past the end of the song (210 s)" in message
    assert caught.value.exit_code == 1


def test_range_under_one_frame_is_an_input_error() -> None:
    with pytest.raises(InputError) as caught:
        make_plan(10.0, **BASE, start=9.99, source="song.mp3")
    assert str(caught.value).startswith("song.mp3: ")
    assert "shorter than one frame at 25 fps" in str(caught.value)


def test_empty_song_is_an_input_error() -> None:
    with pytest.raises(InputError, match=r"^silent\.wav: the song has no audio"):
        make_plan(0.0, **BASE, source="silent.wav")


FPS = st.one_of(
    st.sampled_from([12.5, 24.0, 25.0, 30.0, 50.0, 60.0, NTSC, 30000 / 1001]), st.floats(8.0, 60.0)
)


@st.composite
def valid_settings(draw: st.DrawFn) -> dict[str, object]:
    """Settings that make a valid plan: windows and overlaps drawn as whole latents, plus any song range."""
    fps = draw(FPS)
    max_lat = latent_frames(snap_down_8n1(math.floor(20.5 * fps)))
    win_lat = draw(st.integers(2, max_lat))
    ov_lat = draw(st.integers(1, win_lat - 1))
    song = draw(st.floats(0.5, 900.0))
    start = draw(st.one_of(st.just(0.0), st.floats(0.0, song - 0.4)))
    duration = draw(st.one_of(st.none(), st.floats(0.2, 900.0)))
    return {
        "song_duration": song,
        "fps": fps,
        "width": 32 * draw(st.integers(1, 60)),
        "height": 32 * draw(st.integers(1, 60)),
        "window_s": (8 * (win_lat - 1) + 1) / fps,
        "overlap_s": (8 * (ov_lat - 1) + 1) / fps,
        "start": start,
        "duration": duration,
        "seed": draw(st.integers(0, 2**31)),
    }


@settings(max_examples=150, deadline=None)
@given(valid_settings())
def test_kept_frames_tile_the_range_exactly(args: dict[str, object]) -> None:
    plan = make_plan(**args)
    assert plan.total_frames == frame_count(plan.duration, plan.fps) >= 1
    assert plan.windows[0].keep_start == 0
    for before, after in itertools.pairwise(plan.windows):
        assert before.keep_end == after.keep_start
    assert plan.windows[-1].keep_end == plan.total_frames
    assert all(w.keep_start < w.keep_end for w in plan.windows)
    assert sum(w.keep_end - w.keep_start for w in plan.windows) == plan.total_frames


@settings(max_examples=150, deadline=None)
@given(valid_settings())
def test_window_shape_stride_seeds_and_song_times(args: dict[str, object]) -> None:
    plan = make_plan(**args)
    assert plan.stride_px == 8 * plan.new_lat and plan.new_lat == plan.win_lat - plan.ov_lat > 0
    for i, w in enumerate(plan.windows):
        assert w.index == i and w.seed == args["seed"] + i
        assert (w.px_frames - 1) % 8 == 0 and w.lat_frames == (w.px_frames - 1) // 8 + 1
        assert w.start_px == i * plan.stride_px
        assert w.song_start == plan.start + i * plan.stride_px / plan.fps
        assert w.song_end == w.song_start + w.px_frames / plan.fps
        assert w.keep_offset == w.keep_start - w.start_px
        assert w.keep_offset == (0 if i == 0 else 8 * plan.ov_lat - 7)
        assert w.keep_end - w.start_px <= w.px_frames


@settings(max_examples=150, deadline=None)
@given(valid_settings())
def test_fewest_windows_and_shrink(args: dict[str, object]) -> None:
    plan = make_plan(**args)
    if len(plan.windows) == 1:
        (only,) = plan.windows
        assert only.px_frames == max(9, snap_up_8n1(plan.total_frames)) <= max(9, plan.win_px)
        assert plan.total_frames <= plan.win_px
    else:
        assert all(w.px_frames == plan.win_px for w in plan.windows)
        assert plan.windows[-2].start_px + plan.win_px < plan.total_frames  # one fewer would not cover it


@settings(max_examples=200, deadline=None)
@given(FPS, st.floats(0.2, 20.5), st.floats(0.0, 1.0))
def test_any_window_seconds_snaps_down_to_8n1_or_is_refused(
    fps: float, window_s: float, ratio: float
) -> None:
    overlap_s = window_s * ratio
    win_px = snap_down_8n1(round(window_s * fps))
    ov_lat = latent_frames(round(overlap_s * fps))
    args = {"fps": fps, "width": 64, "height": 64, "window_s": window_s, "overlap_s": overlap_s}
    if win_px < 9 or overlap_s >= window_s or not 1 <= ov_lat < latent_frames(win_px):
        with pytest.raises(SettingsError):
            make_plan(600.0, **args)
        return
    plan = make_plan(600.0, **args)
    assert (plan.win_px - 1) % 8 == 0
    assert round(window_s * fps) - 8 < plan.win_px <= round(window_s * fps)
    assert plan.ov_lat == ov_lat
