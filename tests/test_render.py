"""The song loop on the tiny model: decode spans, the window chain, resume, --only-windows, pixel context,
bounded memory, seams and failures. Renders are 64×64 with 89-frame windows (12 latents, 6 of overlap)."""

from __future__ import annotations

import dataclasses
import itertools
import math
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import av
import numpy as np
import pytest
import torch
from hypothesis import given, reject, settings
from hypothesis import strategies as st

from audioloop import demo
from audioloop.config import Settings
from audioloop.decode import (
    STREAM_REACH,
    TAIL_PIECE,
    DecodeSpan,
    LatentStream,
    decode_spans,
    decoded_frames,
    first_frame,
    frame_budget,
    latent_of,
    queue_limit,
    tail_pieces,
    window_ends,
)
from audioloop.errors import InputError, Interrupted, RenderError, SettingsError
from audioloop.job import output_path, prepare, step_sigmas
from audioloop.media.audio import read_source_audio
from audioloop.media.writer import VideoWriter
from audioloop.models import decoder as vae_decoder
from audioloop.models.latents import VideoStream, decode_video, encode_frames
from audioloop.models.tiny import tiny_video_vae
from audioloop.plan import TEMPORAL, Plan, make_plan
from audioloop.render import Clock, render
from audioloop.request import request_for
from audioloop.sampling.layout import unpack_video
from audioloop.workdir import WorkDir
from mediagen import frames_of

pytestmark = pytest.mark.usefixtures("text_cache")
BASE = {
    "width": 64,
    "height": 64,
    "window": 3.56,
    "overlap": 1.64,
    "model": "tiny",
    "device": "cpu",
    "dtype": "float32",
    "preset": "ultrafast",
    "sigmas": (1.0, 0.421875, 0.0),
}
OV_LAT, NEW_LAT, WIN_PX = 6, 6, 89
SCHEDULE = """\
subject: A singer in a green jacket
negative: blurry, flickering
schedule:
  - {at: "0:00", prompt: is singing softly}
  - {at: "0:02", prompt: is raising one hand}
  - {at: "0:03.8", prompt: is turning towards the light}
"""
PROMPTS = [
    "A singer in a green jacket is singing softly",
    "A singer in a green jacket is raising one hand",
    "A singer in a green jacket is turning towards the light",
]


@dataclasses.dataclass(frozen=True)
class Inputs:
    song: Path
    image: Path
    schedule: Path


def make_inputs(folder: Path, seconds: float, schedule: str = SCHEDULE) -> Inputs:
    """A synthetic song of `seconds`, a hero image and a schedule in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    song = demo.write_wav(folder / "song.wav", demo.song(seconds))
    image = folder / "hero.png"
    demo.hero_image(96, 80).save(image)
    (folder / "schedule.yaml").write_text(schedule)
    return Inputs(song, image, folder / "schedule.yaml")


def render_song(
    inputs: Inputs,
    output: Path,
    *,
    on_window: Callable[[int], None] | None = None,
    resume: bool = True,
    only_windows: str | None = None,
    work_dir: Path | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """Plan, prepare and render as `audioloop render` does, with BASE settings plus overrides."""
    settings = Settings(**{**BASE, **overrides})
    request, _ = request_for(
        inputs.song,
        inputs.image,
        inputs.schedule,
        settings,
        output=output,
        work_dir=work_dir,
        resume=resume,
        only_windows=only_windows,
    )
    return render(prepare(request), on_window=on_window)


def window_latents(work: Path) -> list[torch.Tensor]:
    """Every stored window's latents, in order."""
    store = WorkDir(work)
    return [store.load(i) for i in range(store.stored())]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Inputs:
    return make_inputs(tmp_path_factory.mktemp("inputs"), 6.4)


@pytest.fixture(scope="module")
def reference(inputs: Inputs, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """An uninterrupted 3-window render to .mkv (sample-exact audio) and its sidecar."""
    output = tmp_path_factory.mktemp("reference") / "video.mkv"
    return output, render_song(inputs, output)


# Decode spans: pure arithmetic


def plan_of(seconds: float, **geometry: float) -> Plan:
    geometry = {"fps": 25.0, "width": 64, "height": 64, "window_s": 3.56, "overlap_s": 1.64, **geometry}
    return make_plan(seconds, **geometry)


def test_frame_and_latent_mapping_is_causal() -> None:
    assert [latent_of(f) for f in (0, 1, 8, 9, 16, 17)] == [0, 1, 1, 2, 2, 3]
    assert [first_frame(k) for k in (0, 1, 2, 12)] == [0, 1, 9, 89]
    assert decoded_frames(12) == 89


def test_decode_spans_of_a_three_window_render() -> None:
    """Window 0 completes no frame (its 12 latents are within the decoder's reach of its end); window 1
    pushes all 18 so far and emits the frames of its first 4 latents; window 2 pushes the rest."""
    plan = plan_of(6.4)
    assert window_ends(plan) == (12, 18, 24)
    assert decode_spans(plan) == (
        DecodeSpan(window=1, start=0, end=18, emit_start=0, emit_end=25),
        DecodeSpan(window=2, start=18, end=24, emit_start=25, emit_end=160),
    )
    assert frame_budget(plan) == 178
    assert queue_limit(plan, decode_spans(plan)) == 178 - 135


def test_decode_spans_at_the_default_geometry() -> None:
    """832×480, 3:30: each window emits its 448 new frames STREAM_REACH latents late; the last span stops
    STREAM_REACH latents past the song's last frame (latent 657), not at the window's end (679)."""
    plan = plan_of(210.0, width=832, height=480, window_s=19.88, overlap_s=2.0)
    spans = decode_spans(plan)
    assert spans[:2] == (DecodeSpan(0, 0, 63, 0, 385), DecodeSpan(1, 63, 119, 385, 833))
    assert spans[-1] == DecodeSpan(11, 623, 672, 4865, 5250)
    assert {span.frames for span in spans[1:-1]} == {448}
    assert queue_limit(plan, spans) == 2 * 497 - 448


def test_windows_shorter_than_the_reach_keep_at_least_one_queued_frame() -> None:
    """1.32 s windows: nothing completes before the last window, whose span emits all 100 frames, more
    than two windows' 66; the writer's queue still takes one frame."""
    plan = plan_of(4.0, window_s=1.32, overlap_s=0.36)
    assert decode_spans(plan) == (DecodeSpan(3, 0, 14, 0, 100),)
    assert frame_budget(plan) == 66
    assert queue_limit(plan, decode_spans(plan)) == 1


def test_a_single_window_render_is_one_span() -> None:
    plan = plan_of(1.0)
    assert decode_spans(plan) == (DecodeSpan(0, 0, plan.windows[0].lat_frames, 0, 25),)


@settings(max_examples=300, deadline=None)
@given(
    fps=st.sampled_from([8.0, 24.0, 25.0, 30.0, 24000 / 1001]),
    window_s=st.floats(0.4, 20.0),
    overlap_fraction=st.floats(0.01, 0.95),
    seconds=st.floats(0.2, 200.0),
)
def test_decode_spans_push_every_latent_once_and_emit_every_frame_once_its_reach_is_in(
    fps: float, window_s: float, overlap_fraction: float, seconds: float
) -> None:
    try:
        plan = plan_of(seconds, fps=fps, window_s=window_s, overlap_s=window_s * overlap_fraction)
    except (SettingsError, InputError):
        reject()
    ends = window_ends(plan)
    spans = decode_spans(plan)
    emitted = [f for span in spans for f in range(span.emit_start, span.emit_end)]
    assert emitted == list(range(plan.total_frames))
    assert [s.start for s in spans] == [0, *(s.end for s in spans[:-1])]
    needed = min(ends[-1], latent_of(plan.total_frames - 1) + 1 + STREAM_REACH)
    assert spans[-1].window == len(plan.windows) - 1 and spans[-1].end == needed
    for span in spans[:-1]:
        assert span.end == ends[span.window]
        assert span.frames > 0 and latent_of(span.emit_end - 1) + STREAM_REACH < span.end
    assert queue_limit(plan, spans) >= 1
    if min(w.px_frames for w in plan.windows[:-1] or plan.windows) > TEMPORAL * STREAM_REACH + 8:
        assert max(s.frames for s in spans) + queue_limit(plan, spans) == frame_budget(plan)


def test_the_last_span_decodes_in_equal_pieces_that_each_emit_what_they_complete() -> None:
    """The 3:30 render's last span: seven pushes of 7 latents, each emitting its 56 frames (the last: the
    song's final 49), so the writer's last chunk is small."""
    ends = (630, 637, 644, 651, 658, 665, 672)
    emits = (4865, 4921, 4977, 5033, 5089, 5145, 5201, 5250)
    assert tail_pieces(DecodeSpan(11, 623, 672, 4865, 5250)) == tuple(
        DecodeSpan(11, start, end, emits[k], emits[k + 1])
        for k, (start, end) in enumerate(zip((623, *ends[:-1]), ends, strict=True))
    )
    short = DecodeSpan(2, 18, 24, 25, 160)
    assert tail_pieces(short) == (short,)


@settings(max_examples=200, deadline=None)
@given(
    window_s=st.floats(0.4, 20.0),
    overlap_fraction=st.floats(0.01, 0.95),
    seconds=st.floats(0.2, 200.0),
)
def test_tail_pieces_push_the_last_span_once_and_emit_its_frames_once(
    window_s: float, overlap_fraction: float, seconds: float
) -> None:
    try:
        plan = plan_of(seconds, window_s=window_s, overlap_s=window_s * overlap_fraction)
    except (SettingsError, InputError):
        reject()
    span = decode_spans(plan)[-1]
    pieces = tail_pieces(span)
    assert [p.start for p in pieces] == [span.start, *(p.end for p in pieces[:-1])]
    assert [p.emit_start for p in pieces] == [span.emit_start, *(p.emit_end for p in pieces[:-1])]
    assert (pieces[-1].end, pieces[-1].emit_end) == (span.end, span.emit_end)
    assert all(p.frames > 0 and p.window == span.window for p in pieces)
    for piece in pieces[:-1]:  # a piece that completes nothing joins the next (only at the video's start)
        assert piece.start == 0 or piece.end - piece.start <= TAIL_PIECE
        assert piece.emit_end <= first_frame(piece.end - STREAM_REACH)


class PaintingStream:
    """A stand-in streamed decoder: keeps the latents it was given and paints each frame asked for with its
    latent's value, so the timeline index comes out where each latent went."""

    def __init__(self, fail_at: int | None = None, delay: float = 0.0) -> None:
        self.timeline = torch.zeros(0)
        self.pushed: list[int] = []
        self.last: list[bool] = []
        self.fail_at, self.delay = fail_at, delay

    def __call__(self, z: torch.Tensor, frames: tuple[int, int], last: bool = False) -> torch.Tensor:
        if self.fail_at is not None and len(self.pushed) == self.fail_at:
            raise RuntimeError("decoder failed")
        time.sleep(self.delay)
        self.timeline = torch.cat([self.timeline, z[0, 0, :, 0, 0]])
        self.pushed.append(z.shape[2])
        self.last.append(last)
        return self.timeline[[latent_of(f) for f in range(*frames)]]


def stream_frames(
    plan: Plan, background: bool, decode: PaintingStream | None = None
) -> tuple[list[torch.Tensor], float]:
    """Push a timeline of latent indices through a LatentStream whose stand-in decoder (a PaintingStream
    taking 10 ms a call, unless given) paints each frame with its latent; return the emitted chunks and the
    stream's busy seconds."""
    out: list[torch.Tensor] = []
    decode = decode or PaintingStream(delay=0.01)
    stream = LatentStream(plan, decode_spans(plan), decode, out.append, background=background)
    try:
        for window in plan.windows:
            offset = window.index * plan.new_lat
            stream.push(
                window.index, torch.arange(offset, offset + window.lat_frames).float().view(1, 1, -1, 1, 1)
            )
    finally:
        stream.close()
    return out, stream.busy


def test_latent_stream_puts_every_frame_where_its_latent_is() -> None:
    plan = plan_of(12.0)
    spans, decode = decode_spans(plan), PaintingStream()
    out, _ = stream_frames(plan, background=False, decode=decode)
    assert torch.cat(out).tolist() == [latent_of(f) for f in range(plan.total_frames)]
    assert decode.pushed == [s.end - s.start for s in spans]
    assert decode.last == [False] * (len(spans) - 1) + [True]


def test_latent_stream_pushes_the_last_span_in_pieces_the_last_of_them_ending_the_timeline() -> None:
    plan = plan_of(30.0, window_s=10.0, overlap_s=1.0)
    spans, decode = decode_spans(plan), PaintingStream()
    out, _ = stream_frames(plan, background=False, decode=decode)
    pieces = tail_pieces(spans[-1])
    assert len(pieces) > 1
    assert decode.pushed == [s.end - s.start for s in (*spans[:-1], *pieces)]
    assert decode.last == [False] * (len(spans) + len(pieces) - 2) + [True]
    assert [len(f) for f in out[-len(pieces) :]] == [p.frames for p in pieces]
    assert torch.cat(out).tolist() == [latent_of(f) for f in range(plan.total_frames)]


def test_background_decoding_emits_the_same_frames_in_the_same_order() -> None:
    plan = plan_of(12.0)
    inline, inline_busy = stream_frames(plan, background=False)
    background, background_busy = stream_frames(plan, background=True)
    assert [c.tolist() for c in background] == [c.tolist() for c in inline]
    assert torch.cat(background).tolist() == [latent_of(f) for f in range(plan.total_frames)]
    spans = len(decode_spans(plan))
    assert inline_busy >= 0.01 * spans and background_busy >= 0.01 * spans


def test_a_background_decoder_error_reaches_the_caller_and_stops_the_stream() -> None:
    plan = plan_of(12.0)
    with pytest.raises(RuntimeError, match="decoder failed"):
        stream_frames(plan, background=True, decode=PaintingStream(fail_at=1, delay=0.01))
    assert not [t for t in threading.enumerate() if t.name.startswith("decode")]


def test_a_stage_inside_another_pauses_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """Loading Gemma while encoding text counts as load, not text; stages add up to the wall time."""
    now = iter([0.0, 1.0, 4.0, 6.0, 10.0, 11.0, 12.0, 13.0])
    monkeypatch.setattr(time, "perf_counter", lambda: next(now))
    clock = Clock(("load", "text"))
    with clock("text"):  # 0
        with clock("load"):  # 1
            assert clock.current == "load"
        assert clock.current == "text"  # 4
    assert clock.seconds == {"load": 3.0, "text": 3.0}  # 6
    with pytest.raises(MemoryError), clock("text"), clock("load"):  # 10, 11, out at 12, 13
        raise MemoryError
    assert clock.current == "load"


def test_latent_stream_refuses_windows_out_of_order() -> None:
    plan = plan_of(12.0)
    stream = LatentStream(plan, decode_spans(plan), PaintingStream(), lambda f: None)
    with pytest.raises(ValueError, match="gap"):
        stream.push(2, torch.zeros(1, 1, 12, 1, 1))


# Settings and paths


def test_steps_keep_the_first_sigma_and_the_last_ones() -> None:
    distilled = Settings().sigmas
    assert step_sigmas(distilled, 8) == distilled
    assert step_sigmas(distilled, 4) == (1.0, 0.909375, 0.725, 0.421875, 0.0)
    assert step_sigmas(distilled, 1) == (1.0, 0.0)
    for steps in (0, 9):
        with pytest.raises(SettingsError, match="--steps"):
            step_sigmas(distilled, steps)


def test_output_defaults_next_to_the_song_and_never_overwrites_an_input(tmp_path: Path) -> None:
    song = tmp_path / "track.flac"
    assert output_path(song, None, [song]) == tmp_path / "track.mp4"
    assert output_path(song, tmp_path / "x.MKV", [song]) == tmp_path / "x.MKV"
    with pytest.raises(InputError, match=r"unsupported output type '\.avi'"):
        output_path(song, tmp_path / "x.avi", [song])
    video_song = tmp_path / "live.mp4"
    with pytest.raises(InputError, match="would overwrite an input"):
        output_path(video_song, None, [video_song])


def test_not_enough_disk_stops_before_any_model_loads(
    inputs: Inputs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("audioloop.render.load_components", pytest.fail)
    monkeypatch.setattr("audioloop.job.shutil.disk_usage", lambda path: SimpleNamespace(free=1000))
    with pytest.raises(InputError, match="MB free, the render needs about"):
        render_song(inputs, tmp_path / "v.mp4")


# The window chain


def test_three_window_render_has_the_planned_frames_and_the_song_audio(
    inputs: Inputs, reference: tuple[Path, dict[str, Any]]
) -> None:
    output, sidecar = reference
    assert len(sidecar["windows"]) == 3
    total = math.floor(6.4 * 25)
    with av.open(str(output)) as container:
        video = container.streams.video[0]
        assert (video.width, video.height, video.average_rate) == (64, 64, 25)
        audio = np.concatenate([f.to_ndarray().reshape(-1, 2).T for f in container.decode(audio=0)], axis=1)
    assert frames_of(output).shape == (total, 64, 64, 3)
    song = read_source_audio(inputs.song, 0.0, 6.4)
    assert audio.dtype == song.samples.dtype
    np.testing.assert_array_equal(audio, song.samples)


def test_each_window_renders_the_prompt_the_schedule_gives_it(reference: tuple[Path, dict[str, Any]]) -> None:
    output, sidecar = reference
    assert [w["prompt"] for w in sidecar["windows"]] == PROMPTS
    assert [w["schedule_entry"] for w in sidecar["windows"]] == [0, 1, 2]
    manifest = WorkDir(Path(f"{output}.work"))
    assert [manifest._entries[i]["prompt"] for i in range(3)] == PROMPTS


def test_each_windows_frozen_context_is_the_previous_windows_last_latents(
    reference: tuple[Path, dict[str, Any]],
) -> None:
    output, _ = reference
    windows = window_latents(Path(f"{output}.work"))
    assert len(windows) == 3 and all(w.shape == (1, 8, 12, 2, 2) for w in windows)
    for before, after in itertools.pairwise(windows):
        assert torch.equal(after[:, :, :OV_LAT], before[:, :, -OV_LAT:])
        assert not torch.equal(after[:, :, OV_LAT:], before[:, :, OV_LAT:])


def test_an_interrupted_render_resumes_without_sampling_finished_windows_again(
    inputs: Inputs, reference: tuple[Path, dict[str, Any]], tmp_path: Path, sampled: list[int]
) -> None:
    output = tmp_path / "video.mkv"

    def stop_after_window_1(index: int) -> None:
        if index == 1:
            raise KeyboardInterrupt

    with pytest.raises(Interrupted, match=r"windows 0–1 are saved in .*video.mkv.work; no video was written"):
        render_song(inputs, output, on_window=stop_after_window_1)
    assert sampled == [0, 1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["video.mkv.work"]
    assert WorkDir(tmp_path / "video.mkv.work").stored() == 2

    sampled.clear()
    sidecar = render_song(inputs, output)
    assert sampled == [2]
    assert sidecar["resumed_from"] == 2
    assert [w["sampled"] for w in sidecar["windows"]] == [False, False, True]
    np.testing.assert_array_equal(frames_of(output), frames_of(reference[0]))

    sampled.clear()
    render_song(inputs, output)
    assert sampled == []
    np.testing.assert_array_equal(frames_of(output), frames_of(reference[0]))


def test_a_changed_prompt_re_renders_from_its_window(
    inputs: Inputs, reference: tuple[Path, dict[str, Any]], tmp_path: Path, sampled: list[int]
) -> None:
    output, before = reference
    work = shutil.copytree(f"{output}.work", tmp_path / "work")
    edited = make_inputs(tmp_path / "edited", 6.4, SCHEDULE.replace("turning towards", "stepping into"))
    after = render_song(edited, tmp_path / "video.mkv", work_dir=work)
    assert sampled == [2]
    fingerprints = [[w["fingerprint"] for w in s["windows"]] for s in (before, after)]
    assert fingerprints[0][:2] == fingerprints[1][:2] and fingerprints[0][2] != fingerprints[1][2]
    assert after["windows"][2]["prompt"] == PROMPTS[2].replace("turning towards", "stepping into")


def test_only_windows_reuses_earlier_windows_as_they_are_and_re_renders_the_rest(
    inputs: Inputs, reference: tuple[Path, dict[str, Any]], tmp_path: Path, sampled: list[int]
) -> None:
    output, _ = reference
    work = shutil.copytree(f"{output}.work", tmp_path / "work")
    window_0 = WorkDir(work).load(0)
    sidecar = render_song(inputs, tmp_path / "video.mp4", work_dir=work, only_windows="1", seed=7)
    assert sampled == [8, 9]
    assert [w["sampled"] for w in sidecar["windows"]] == [False, True, True]
    assert torch.equal(WorkDir(work).load(0), window_0)

    WorkDir(work).window_path(0).unlink()
    with pytest.raises(InputError, match="window 0 is missing or unreadable"):
        render_song(inputs, tmp_path / "video.mp4", work_dir=work, only_windows="2")
    with pytest.raises(SettingsError, match="window 3 does not exist"):
        render_song(inputs, tmp_path / "video.mp4", work_dir=work, only_windows="3")


def test_pixel_context_re_encodes_the_decoded_tail_of_the_previous_window(
    inputs: Inputs, tmp_path: Path
) -> None:
    render_song(inputs, tmp_path / "video.mp4", context="pixel", adain=0.0)
    windows = window_latents(tmp_path / "video.mp4.work")
    vae = tiny_video_vae()
    vae_decoder.install(vae.decoder)  # as the render decodes
    for before, after in itertools.pairwise(windows):
        tail = decode_video(vae, before)[-(8 * (OV_LAT - 1) + 1) :]
        torch.testing.assert_close(after[:, :, :OV_LAT], encode_frames(vae, tail))
        assert not torch.allclose(after[:, :, :OV_LAT], before[:, :, -OV_LAT:])


# Memory and seams


def test_six_windows_never_hold_more_than_two_windows_of_decoded_frames(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    decoded: list[int] = []
    real_decode, real_encode = VideoStream.__call__, VideoWriter._encode_frames

    def recording(self: VideoStream, *args: Any, **options: Any) -> torch.Tensor:
        frames = real_decode(self, *args, **options)
        decoded.append(len(frames))
        return frames

    def slow(self: VideoWriter, piece: np.ndarray) -> None:
        time.sleep(0.001 * len(piece))
        real_encode(self, piece)

    monkeypatch.setattr(VideoStream, "__call__", recording)
    monkeypatch.setattr(VideoWriter, "_encode_frames", slow)
    sidecar = render_song(make_inputs(tmp_path, 12.0), tmp_path / "video.mp4", sigmas=(1.0, 0.0))
    peak = sidecar["decode"]["writer_peak_queued_frames"]
    spans = sidecar["decode"]["spans"]
    assert len(sidecar["windows"]) == 6 and len(decoded) == len(spans) == 5  # window 0 completes none
    assert decoded == [span["emit_end"] - span["emit_start"] for span in spans]  # only what each emits
    assert sidecar["decode"]["reach"] == STREAM_REACH
    assert 0 < peak <= sidecar["decode"]["writer_max_queued_frames"]
    assert max(decoded) + peak <= 2 * WIN_PX


def smooth_sampler(new_lat: int) -> Callable[..., torch.Tensor]:
    """A stand-in for sample_window: generated latents are a smooth function of their time on the song's
    latent timeline (frozen context stays as given), so any seam in the video comes from the loop itself."""

    def sample(transformer: Any, layout: Any, *args: Any, seed: int, **kwargs: Any) -> torch.Tensor:
        clean = unpack_video(
            layout.clean[:, : layout.n_window_tokens], layout.frames, layout.height, layout.width
        )
        t = (seed * new_lat + torch.arange(layout.frames)).float().view(1, 1, -1, 1, 1)
        channel = torch.arange(clean.shape[1]).float().view(1, -1, 1, 1, 1)
        y = torch.arange(layout.height).float().view(1, 1, 1, -1, 1)
        smooth = 1.5 * torch.sin(2 * math.pi * t / 30 + channel + 0.7 * y)
        smooth = smooth.expand_as(clean)
        frozen = layout.context_frames if seed else 0  # window 0's image latent would be a cut of its own
        return torch.cat([clean[:, :, :frozen], smooth[:, :, frozen:]], dim=2)

    return sample


def seam_ratios(frames: np.ndarray, cuts: list[int]) -> list[float]:
    """Per cut: the largest lag-8 frame difference just after it over the median one nearby, away from cuts.

    Frames eight apart are compared because the VAE turns each latent into eight frames with a pattern of
    their own, which makes even smooth video differ a lot from one frame to the next.
    """
    video = frames.astype(np.float64)
    lag8 = np.full(len(video), np.nan)
    lag8[8:] = np.abs(video[8:] - video[:-8]).mean(axis=(1, 2, 3))
    near = {f for cut in cuts for f in range(cut - 8, cut + 16)}
    ratios = []
    for cut in cuts:
        nearby = [lag8[f] for f in range(max(16, cut - 48), min(len(frames), cut + 56)) if f not in near]
        ratios.append(float(lag8[cut : cut + 8].max() / np.median(nearby)))
    return ratios


def test_window_boundaries_and_decode_cuts_show_no_seam(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The streamed frames are the whole song's decode and no window boundary or decode cut stands out;
    each window decoded on its own (the check's control: no context across a boundary) makes every
    window boundary stand out."""
    import audioloop.render

    streamed: list[np.ndarray] = []
    real_write = VideoWriter.write_yuv420p
    monkeypatch.setattr(
        VideoWriter,
        "write_yuv420p",
        lambda self, f: (streamed.append(f.numpy().copy()), real_write(self, f)),
    )
    monkeypatch.setattr(audioloop.render, "sample_window", smooth_sampler(NEW_LAT))
    output = tmp_path / "video.mkv"
    sidecar = render_song(make_inputs(tmp_path, 12.0), output, adain=0.0, crf=0)
    boundaries = [w["keep_start"] for w in sidecar["windows"][1:]]
    cuts = sorted({*boundaries, *(s["emit_start"] for s in sidecar["decode"]["spans"][1:])})
    assert max(seam_ratios(frames_of(output), cuts)) < 2.0
    windows = window_latents(tmp_path / "video.mkv.work")
    timeline = torch.cat([windows[0], *(w[:, :, OV_LAT:] for w in windows[1:])], dim=2)
    whole = decode_video(tiny_video_vae(), timeline, yuv=True)[: len(np.concatenate(streamed))].numpy()
    assert np.abs(np.concatenate(streamed).astype(int) - whole).max() <= 1
    alone = [decode_video(tiny_video_vae(), w).numpy() for w in windows]
    offsets = [TEMPORAL * NEW_LAT * i for i in range(len(windows))]
    keeps = [(w["keep_start"], w["keep_end"]) for w in sidecar["windows"]]
    control = np.concatenate(
        [a[k0 - o : k1 - o] for a, o, (k0, k1) in zip(alone, offsets, keeps, strict=True)]
    )
    assert min(seam_ratios(control, boundaries)) > 2.0


# Failures


def test_non_finite_latents_stop_at_the_window_and_keep_the_earlier_ones(
    inputs: Inputs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import audioloop.render

    real = audioloop.render.sample_window

    def nan_in_window_1(*args: Any, **kwargs: Any) -> torch.Tensor:
        latents = real(*args, **kwargs)
        return latents.fill_(float("nan")) if kwargs["seed"] == 1 else latents

    monkeypatch.setattr(audioloop.render, "sample_window", nan_in_window_1)
    with pytest.raises(
        RenderError, match=r"window 1: the sampled latents contain NaN or inf \(window 0 is kept"
    ):
        render_song(inputs, tmp_path / "video.mp4")
    assert WorkDir(tmp_path / "video.mp4.work").stored() == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["video.mp4.work"]


def test_out_of_memory_names_the_settings_to_lower(
    inputs: Inputs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def out_of_memory(*args: Any, **kwargs: Any) -> torch.Tensor:
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr("audioloop.render.sample_window", out_of_memory)
    with pytest.raises(
        RenderError, match=r"out of GPU memory during sampling .*lower --width/--height or --window"
    ):
        render_song(inputs, tmp_path / "video.mp4")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["video.mp4.work"]


def test_a_render_decoding_in_the_background_is_the_same_video(inputs: Inputs, tmp_path: Path) -> None:
    inline = render_song(inputs, tmp_path / "inline.mkv", background_decode=False)
    beside = render_song(inputs, tmp_path / "beside.mkv", background_decode=True)
    assert (inline["decode"]["background"], beside["decode"]["background"]) == (False, True)
    assert beside["timings"]["decode_busy"] > 0
    np.testing.assert_array_equal(frames_of(tmp_path / "beside.mkv"), frames_of(tmp_path / "inline.mkv"))


def test_out_of_memory_in_the_background_decoder_names_its_switch(
    inputs: Inputs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def out_of_memory(*args: Any, **kwargs: Any) -> torch.Tensor:
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(VideoStream, "__call__", out_of_memory)
    with pytest.raises(RenderError, match=r"out of GPU memory during decode .*use --no-background-decode or"):
        render_song(inputs, tmp_path / "video.mp4", background_decode=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["video.mp4.work"]
    assert not [t for t in threading.enumerate() if t.name.startswith("decode")]
