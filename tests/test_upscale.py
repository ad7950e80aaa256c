"""`audioloop upscale` on the tiny model: tile geometry (pure), the upsampler, 2× output with the song's own
audio, frozen context between tiles, resume, sigma names, bad sources and `render --upscale`.

The render is 64×64 over a 4 s song with 89-frame windows (2 windows, 14 shown latents); the upscale is
128×128 in 5-latent tiles overlapping by 2 (4 tiles, 2 refinement steps)."""

from __future__ import annotations

import itertools
import json
import shutil
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
import torch
from diffusers.pipelines.ltx2.pipeline_ltx2_latent_upsample import LTX2LatentUpsamplePipeline
from hypothesis import given, reject, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from audioloop import demo
from audioloop.cli import app
from audioloop.config import Settings
from audioloop.decode import decode_spans, window_ends
from audioloop.errors import InputError, Interrupted, SettingsError
from audioloop.job import prepare
from audioloop.models.accel import DEFAULT_FP8, AccelSettings
from audioloop.models.latents import DECODE_TILE_AREA, tile_grid
from audioloop.models.load import load_latent_upsampler, upsampler_revision
from audioloop.models.tiny import tiny_latent_upsampler, tiny_video_vae
from audioloop.plan import Plan, make_plan
from audioloop.render import render
from audioloop.request import request_for
from audioloop.sampling.layout import refine_window, video_coords
from audioloop.schedule import WindowPrompt
from audioloop.tiles import (
    default_tile_latents,
    overlap_latents,
    refined_range,
    shown_latents,
    tile_latents,
    tile_plan,
    tile_prompts,
    tile_tokens,
    timeline_latents,
    upsample_range,
    window_of,
)
from audioloop.upscale import render_timeline, upsample, upscale
from audioloop.upscale_job import (
    REFINE_SIGMAS,
    UpscaleRequest,
    decode_tile_area,
    prepare_upscale,
    read_render,
    refine_sigmas,
)
from audioloop.workdir import WorkDir
from mediagen import frames_of

pytestmark = pytest.mark.usefixtures("text_cache")
RENDER = {
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
TILES = {"tile": 1.32, "tile_overlap": 0.36, "sigmas": "0.85,0.4,0"}
SONG_S = 4.0


# Tile geometry: pure arithmetic


def plan_of(seconds: float, **geometry: float) -> Plan:
    geometry = {"fps": 25.0, "width": 64, "height": 64, "window_s": 3.56, "overlap_s": 1.64, **geometry}
    return make_plan(seconds, **geometry)


def test_the_tiles_of_a_two_window_render() -> None:
    render_plan = plan_of(SONG_S)
    assert (len(render_plan.windows), render_plan.total_frames, shown_latents(render_plan)) == (2, 100, 14)
    assert timeline_latents(render_plan) == 18
    tiles = tile_plan(render_plan, 5, 2, seed=3)
    assert (tiles.width, tiles.height, tiles.fps, tiles.total_frames) == (128, 128, 25.0, 100)
    assert (tiles.win_lat, tiles.ov_lat, tiles.new_lat, tiles.win_px, tiles.stride_px) == (5, 2, 3, 33, 24)
    assert [(t.start_px, t.lat_frames, t.px_frames, t.seed) for t in tiles.windows] == [
        (0, 5, 33, 3),
        (24, 5, 33, 4),
        (48, 5, 33, 5),
        (72, 5, 33, 6),
    ]
    assert [(t.keep_start, t.keep_end, t.keep_offset) for t in tiles.windows] == [
        (0, 33, 0),
        (33, 57, 9),
        (57, 81, 9),
        (81, 100, 9),
    ]
    assert [refined_range(tiles, t) for t in tiles.windows] == [(0, 5), (5, 8), (8, 11), (11, 14)]
    assert [upsample_range(tiles, t, 18) for t in tiles.windows] == [(0, 9), (1, 12), (4, 15), (7, 18)]
    assert tiles.windows[1].song_start == pytest.approx(24 / 25)
    assert window_ends(tiles) == (5, 8, 11, 14)


def test_a_render_shorter_than_one_tile_is_one_tile() -> None:
    tiles = tile_plan(plan_of(0.5), 20, 4, seed=0)
    assert [(t.lat_frames, t.keep_start, t.keep_end) for t in tiles.windows] == [(3, 0, 12)]


@settings(max_examples=300, deadline=None)
@given(
    fps=st.sampled_from([8.0, 24.0, 25.0, 30.0, 24000 / 1001]),
    window_s=st.floats(0.4, 20.0),
    overlap_fraction=st.floats(0.01, 0.95),
    seconds=st.floats(0.2, 240.0),
    tile_lat=st.integers(2, 40),
    ov_fraction=st.floats(0.0, 0.99),
)
def test_tiles_keep_every_latent_and_frame_once_and_freeze_the_previous_tiles_end(
    fps: float, window_s: float, overlap_fraction: float, seconds: float, tile_lat: int, ov_fraction: float
) -> None:
    try:
        render_plan = plan_of(seconds, fps=fps, window_s=window_s, overlap_s=window_s * overlap_fraction)
    except (SettingsError, InputError):
        reject()
    ov_lat = 1 + int(ov_fraction * (tile_lat - 1))
    tiles = tile_plan(render_plan, tile_lat, ov_lat, seed=0)
    ranges = [refined_range(tiles, t) for t in tiles.windows]
    kept = [k for first, end in ranges for k in range(first, end)]
    assert kept == list(range(shown_latents(render_plan)))
    frames = [f for t in tiles.windows for f in range(t.keep_start, t.keep_end)]
    assert frames == list(range(render_plan.total_frames))
    for before, after in itertools.pairwise(tiles.windows):
        frozen = range(after.index * tiles.new_lat, refined_range(tiles, after)[0])
        assert list(frozen) == list(
            range(window_ends(tiles)[before.index] - ov_lat, window_ends(tiles)[before.index])
        )
        assert ov_lat < after.lat_frames <= tile_lat
    for tile in tiles.windows:
        lo, hi = upsample_range(tiles, tile, timeline_latents(render_plan))
        first, end = refined_range(tiles, tile)
        assert 0 <= lo <= first < end <= hi <= timeline_latents(render_plan)
    emitted = [f for s in decode_spans(tiles) for f in range(s.emit_start, s.emit_end)]
    assert emitted == list(range(render_plan.total_frames))


def test_the_default_tile_is_the_longest_within_32k_tokens() -> None:
    cells = 52 * 30  # 1664×960
    assert default_tile_latents(cells, 25.0, 63) == 20
    assert tile_tokens(cells, 20, 25.0) == 31_200 + 153 <= 32_000 < tile_tokens(cells, 21, 25.0)
    assert default_tile_latents(4 * 4, 25.0, 12) == 12  # the tiny render: capped at the render's window
    assert default_tile_latents(120 * 68 * 4, 25.0, 63) == 2


def test_tile_and_overlap_seconds_snap_to_whole_latents_or_name_the_flag() -> None:
    assert (tile_latents(6.12, 25.0), overlap_latents(1.0, 25.0, 20)) == (20, 4)
    assert (tile_latents(1.32, 25.0), overlap_latents(0.36, 25.0, 5)) == (5, 2)
    for tile_s, message in ((25.0, "over 20.5 s"), (0.2, "under two latents"), (float("nan"), "over")):
        with pytest.raises(SettingsError, match=f"--tile {tile_s:g} s is {message}"):
            tile_latents(tile_s, 25.0)
    with pytest.raises(SettingsError, match="--tile-overlap 0 s is under one frame"):
        overlap_latents(0.0, 25.0, 20)
    with pytest.raises(
        SettingsError, match="--tile-overlap 7 s is 22 latent frames, not fewer than the tile's 20"
    ):
        overlap_latents(7.0, 25.0, 20)


def test_each_tile_takes_the_prompt_of_the_render_window_that_made_its_middle() -> None:
    render_plan = plan_of(6.4)  # windows keep latents [0, 12), [12, 18), [18, 24)
    assert [window_of(render_plan, k) for k in (0, 11, 12, 17, 18, 40)] == [0, 0, 1, 1, 2, 2]
    prompts = [WindowPrompt(i, 10 + i, f"prompt {i}") for i in range(3)]
    tiles = tile_plan(render_plan, 6, 2, seed=0)  # refines [0, 6), [6, 10), [10, 14), [14, 18), [18, 21)
    assert [refined_range(tiles, t) for t in tiles.windows] == [(0, 6), (6, 10), (10, 14), (14, 18), (18, 21)]
    assert tile_prompts(render_plan, prompts, tiles) == tuple(
        WindowPrompt(t, 10 + w, f"prompt {w}") for t, w in enumerate([0, 0, 0, 1, 2])
    )


def test_refinement_sigmas_by_name_or_list() -> None:
    assert refine_sigmas("seed") == (0.85, 0.725, 0.4219, 0.0)
    assert refine_sigmas("distilled") == (0.909375, 0.725, 0.421875, 0.0)
    assert refine_sigmas("0.9, 0.5,0") == (0.9, 0.5, 0.0)
    for text, message in (
        ("fast", "not a name or a list"),
        ("0.5,0.7,0", "strictly decreasing"),
        ("0.5", "2 values"),
    ):
        with pytest.raises(
            SettingsError, match=f"--sigmas {text}: .*{message}.*use seed, distilled or a list"
        ):
            refine_sigmas(text)


# The upsampler and the refinement layout


def test_upsampling_matches_diffusers_upsample_pipeline_on_normalised_latents() -> None:
    vae, upsampler = tiny_video_vae(), load_latent_upsampler("tiny")
    latents = torch.randn(1, 8, 5, 2, 3, generator=torch.Generator().manual_seed(0))
    ours = upsample(upsampler, vae, latents)
    pipeline = LTX2LatentUpsamplePipeline(vae=vae, latent_upsampler=upsampler)
    raw = pipeline(latents=latents, latents_normalized=True, output_type="latent", return_dict=False)[0]
    expected = (raw - vae.latents_mean.view(1, -1, 1, 1, 1)) / vae.latents_std.view(1, -1, 1, 1, 1)
    assert ours.shape == (1, 8, 5, 4, 6) and ours.dtype == torch.float32
    torch.testing.assert_close(ours, expected)


def test_the_upsampler_loads_from_a_model_directorys_latent_upsampler_folder(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"has no latent_upsampler/; the upscale needs LTX-2.3's"):
        upsampler_revision(str(tmp_path))
    tiny_latent_upsampler().save_pretrained(tmp_path / "latent_upsampler")
    loaded, built = load_latent_upsampler(str(tmp_path)), load_latent_upsampler("tiny")
    assert loaded.state_dict().keys() == built.state_dict().keys()
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in built.state_dict().items())
    assert upsampler_revision(str(tmp_path)).startswith("sha256-") and upsampler_revision("tiny") == "tiny-v1"


def test_a_refinement_tile_freezes_its_context_and_generates_the_rest_from_its_own_latents() -> None:
    latents = torch.randn(1, 8, 4, 2, 3)
    layout = refine_window(latents, 1, 25.0)
    assert torch.equal(layout.clean, latents.permute(0, 2, 3, 4, 1).reshape(1, 24, 8))
    assert layout.mask.tolist() == [[0.0] * 6 + [1.0] * 18]
    assert layout.n_guide_tokens == 0 and layout.context_frames == 1
    torch.testing.assert_close(layout.video_coords, video_coords(4, 2, 3, 25.0))
    assert refine_window(latents, 0, 25.0).mask.all()
    with pytest.raises(ValueError, match="frozen frames"):
        refine_window(latents, 4, 25.0)


# A whole upscale


def render_song(folder: Path, seconds: float = SONG_S) -> Path:
    """A finished 2-window tiny render to .mkv (sample-exact audio) in `folder`; returns its output path."""
    folder.mkdir(parents=True, exist_ok=True)
    song = demo.write_wav(folder / "song.wav", demo.song(seconds))
    demo.hero_image(96, 80).save(folder / "hero.png")
    (folder / "schedule.yaml").write_text(demo.SCHEDULE)
    settings = Settings(**RENDER)
    schedule, output = folder / "schedule.yaml", folder / "video.mkv"
    request, _ = request_for(song, folder / "hero.png", schedule, settings, output=output)
    render(prepare(request))
    return folder / "video.mkv"


def upscale_render(source: Path, output: Path, on_tile: Any = None, **overrides: Any) -> dict[str, Any]:
    """Prepare and run an upscale with the test tiles (plus overrides)."""
    return upscale(
        prepare_upscale(UpscaleRequest(source, output=output, **{**TILES, **overrides})), on_tile=on_tile
    )


def audio_of(path: Path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.concatenate([f.to_ndarray().reshape(-1, 2).T for f in container.decode(audio=0)], axis=1)


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return render_song(tmp_path_factory.mktemp("render"))


@pytest.fixture(scope="module")
def upscaled(rendered: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """The uninterrupted upscale of the render, from its work dir."""
    output = tmp_path_factory.mktemp("upscale") / "video.2x.mkv"
    return output, upscale_render(Path(f"{rendered}.work"), output)


def test_the_timeline_is_window_0_then_each_later_windows_new_latents(rendered: Path) -> None:
    source = read_render(Path(f"{rendered}.json"))
    windows = [source.work.load(i) for i in range(2)]
    timeline = render_timeline(source)
    assert timeline.shape == (1, 8, timeline_latents(source.plan), 2, 2) == (1, 8, 18, 2, 2)
    assert torch.equal(timeline[:, :, :12], windows[0]) and torch.equal(
        timeline[:, :, 12:], windows[1][:, :, 6:]
    )


def test_the_upscale_is_twice_the_size_with_the_same_frames_fps_and_audio(
    rendered: Path, upscaled: tuple[Path, dict[str, Any]]
) -> None:
    output, sidecar = upscaled
    with av.open(str(rendered)) as before, av.open(str(output)) as after:
        small, large = before.streams.video[0], after.streams.video[0]
        assert (large.width, large.height) == (2 * small.width, 2 * small.height) == (128, 128)
        assert large.average_rate == small.average_rate == 25
    assert frames_of(output).shape == (len(frames_of(rendered)), 128, 128, 3) == (100, 128, 128, 3)
    np.testing.assert_array_equal(audio_of(output), audio_of(rendered))
    assert sidecar == json.loads(Path(f"{output}.json").read_text())
    assert sidecar["source"]["sidecar"] == f"{rendered}.json" and sidecar["resumed_from"] == 0
    assert sidecar["settings"]["sigmas"] == [0.85, 0.4, 0.0] and sidecar["settings"]["sigmas_name"] is None
    assert (sidecar["settings"]["tile_latents"], sidecar["settings"]["overlap_latents"]) == (5, 2)
    assert [t["keep_start"] for t in sidecar["tiles"]] == [0, 33, 57, 81]
    assert all(
        t["sampled"] and t["prompt"].startswith("A woman with short red hair") for t in sidecar["tiles"]
    )
    assert sidecar["model"]["upsampler_revision"] == "tiny-v1"
    assert set(sidecar["timings"]) == {
        "load",
        "text",
        "upsample",
        "encode",
        "refine",
        "decode",
        "mux",
        "decode_busy",
        "total",
    }


def test_each_tiles_frozen_context_is_the_previous_tiles_last_latents(
    upscaled: tuple[Path, dict[str, Any]],
) -> None:
    output, _ = upscaled
    store = WorkDir(Path(f"{output}.work"))
    tiles = [store.load(i) for i in range(store.stored())]
    assert len(tiles) == 4 and all(t.shape == (1, 8, 5, 4, 4) for t in tiles)
    for before, after in itertools.pairwise(tiles):
        assert torch.equal(after[:, :, :2], before[:, :, -2:])
        assert not torch.equal(after[:, :, 2:], before[:, :, 2:])


def test_an_interrupted_upscale_resumes_without_refining_finished_tiles_again(
    rendered: Path, upscaled: tuple[Path, dict[str, Any]], tmp_path: Path, sampled: list[int]
) -> None:
    output = tmp_path / "video.2x.mkv"

    def stop_after_tile_1(index: int) -> None:
        if index == 1:
            raise KeyboardInterrupt

    with pytest.raises(
        Interrupted, match=r"tiles 0–1 are saved in .*video.2x.mkv.work; no video was written"
    ):
        upscale_render(Path(f"{rendered}.json"), output, on_tile=stop_after_tile_1)
    assert sampled == [0, 1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["video.2x.mkv.work"]

    sampled.clear()
    sidecar = upscale_render(Path(f"{rendered}.json"), output)
    assert sampled == [2, 3]
    assert sidecar["resumed_from"] == 2 and [t["sampled"] for t in sidecar["tiles"]] == [
        False,
        False,
        True,
        True,
    ]
    np.testing.assert_array_equal(frames_of(output), frames_of(upscaled[0]))

    sampled.clear()
    assert upscale_render(Path(f"{rendered}.json"), output)["resumed_from"] == 4
    assert sampled == []
    np.testing.assert_array_equal(frames_of(output), frames_of(upscaled[0]))

    upscale_render(Path(f"{rendered}.json"), output, seed=5)
    assert sampled == [5, 6, 7, 8]


@pytest.mark.parametrize("name", ["seed", "distilled"])
def test_named_sigmas_and_defaults_resolve_before_any_model_loads(
    rendered: Path, tmp_path: Path, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("audioloop.upscale.load_components", pytest.fail)
    job = prepare_upscale(UpscaleRequest(Path(f"{rendered}.json"), sigmas=name))
    assert job.sampler.sigmas == REFINE_SIGMAS[name]
    assert job.sampler.per_step_adain == () and job.sampler.nag is not None
    assert job.output == rendered.with_name("video.2x.mkv") and job.work.path == rendered.with_name(
        "video.2x.mkv.work"
    )
    assert job.tiles.win_lat == 12 and job.tiles.ov_lat == 4  # default tile: the render's window; 1 s overlap


# The command line


def invoke(*args: str) -> Any:
    return CliRunner().invoke(app, ["upscale", *args])


def test_upscale_json_prints_the_sidecar(rendered: Path, tmp_path: Path) -> None:
    output = tmp_path / "big.mkv"
    result = invoke(
        f"{rendered}.json",
        "-o",
        str(output),
        "--tile",
        "1.32",
        "--tile-overlap",
        "0.36",
        "--sigmas",
        "seed",
        "--json",
    )
    assert result.exit_code == 0, result.output
    sidecar = json.loads(result.stdout)
    assert sidecar == json.loads(Path(f"{output}.json").read_text())
    assert sidecar["settings"]["sigmas_name"] == "seed" and sidecar["settings"]["sigmas"] == [
        0.85,
        0.725,
        0.4219,
        0.0,
    ]
    assert output.is_file() and len(sidecar["tiles"]) == 4


def test_a_path_that_is_neither_a_work_dir_nor_a_sidecar_exits_1_with_one_line(
    rendered: Path, tmp_path: Path
) -> None:
    for path, message in (
        (rendered, "not an audioloop render sidecar"),
        (tmp_path, "not a render work dir"),
        (tmp_path / "nowhere", "not found"),
    ):
        result = invoke(str(path))
        assert result.exit_code == 1, result.output
        assert (
            result.stderr.count("\n") == 1 and message in result.stderr and "Traceback" not in result.output
        )


def test_an_unfinished_render_is_refused_with_what_to_do(rendered: Path, tmp_path: Path) -> None:
    unfinished = shutil.copytree(f"{rendered}.work", tmp_path / "cut.mkv.work")
    result = invoke(str(unfinished))
    assert result.exit_code == 1
    assert "the render has not finished (cut.mkv.json is missing" in result.stderr

    shutil.copy(f"{rendered}.json", tmp_path / "cut.mkv.json")
    WorkDir(unfinished).window_path(1).unlink()
    result = invoke(str(unfinished))
    assert result.exit_code == 1 and "window 1 is missing or differs from cut.mkv.json" in result.stderr


@pytest.mark.parametrize(
    ("flags", "code", "message"),
    [
        (["--tile", "30"], 2, "--tile 30 s is over 20.5 s"),
        (["--tile-overlap", "0"], 2, "--tile-overlap 0 s is under one frame"),
        (["--sigmas", "1,2"], 2, "--sigmas 1,2: sigmas must lie in [0, 1]"),
        (["--fp8"], 2, "--fp8 needs an NVIDIA GPU with FP8 (Ada/Hopper), not cpu; drop --fp8"),
        (["--offload"], 2, "--offload needs an NVIDIA GPU, not cpu; drop --offload"),
        (
            ["--attention", "xformers"],
            2,
            "--attention xformers: choose one of sdpa, cudnn, flash, efficient, fa4",
        ),
        (["--dtype", "float64"], 2, "--dtype float64: use one of"),
        (["-o", "big.avi"], 1, "unsupported output type '.avi'"),
    ],
)
def test_bad_flags_exit_before_any_model_loads(
    rendered: Path, monkeypatch: pytest.MonkeyPatch, flags: list[str], code: int, message: str
) -> None:
    monkeypatch.setattr(
        "audioloop.upscale.load_components", lambda *a, **k: pytest.fail("a model was loaded")
    )
    result = invoke(f"{rendered}.json", *flags)
    assert result.exit_code == code, result.output
    assert message in result.stderr and "Traceback" not in result.output


def test_a_changed_song_is_refused(tmp_path: Path) -> None:
    output = render_song(tmp_path, seconds=1.0)
    demo.write_wav(tmp_path / "song.wav", demo.song(1.5))
    result = invoke(str(output.with_name("video.mkv.work")))
    assert result.exit_code == 1 and "the render's song is missing or changed" in result.stderr


def test_render_with_upscale_renders_then_upscales(tmp_path: Path) -> None:
    demo.write_wav(tmp_path / "song.wav", demo.song(1.0))
    demo.hero_image(96, 80).save(tmp_path / "hero.png")
    (tmp_path / "schedule.yaml").write_text(demo.SCHEDULE)
    (tmp_path / "tiny.yaml").write_text("\n".join(f"{k}: {v}" for k, v in RENDER.items() if k != "sigmas"))
    args = [
        "render",
        str(tmp_path / "song.wav"),
        "-i",
        str(tmp_path / "hero.png"),
        "-s",
        str(tmp_path / "schedule.yaml"),
    ]
    args += [
        "-c",
        str(tmp_path / "tiny.yaml"),
        "--steps",
        "1",
        "-o",
        str(tmp_path / "v.mp4"),
        "--upscale",
        "--json",
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    documents = json.loads(result.stdout)
    assert documents["render"]["output"] == str(tmp_path / "v.mp4")
    assert documents["upscale"]["output"] == str(tmp_path / "v.2x.mp4")
    with av.open(str(tmp_path / "v.2x.mp4")) as container:
        assert (container.streams.video[0].width, container.streams.video[0].frames) == (128, 25)


def test_decode_tiles_are_smaller_beside_resident_bf16_weights() -> None:
    roomy = decode_tile_area(AccelSettings(fp8=DEFAULT_FP8))
    assert roomy == decode_tile_area(AccelSettings(offload=True)) == DECODE_TILE_AREA
    assert decode_tile_area(AccelSettings()) == 640
    assert [len(axis) for axis in tile_grid(30, 52, 640, 4)] == [1, 3]  # 1664×960: three columns
