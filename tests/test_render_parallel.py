"""`render --sequence-parallel` under torchrun: the launch rules exactly, then 2-rank tiny renders (gloo) that
give the same window latents and video frames as one process, with latent and with pixel context (whose
re-encoded context rank 0 broadcasts); NAG is on and rank 0 alone encodes the prompts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from audioloop import demo
from audioloop.cli import app
from audioloop.errors import SettingsError
from audioloop.parallel import rank_backend, split_ranks, torchrun_world
from audioloop.workdir import WorkDir
from mediagen import frames_of

TINY = Path(__file__).parents[1] / "configs" / "tiny.yaml"
SCHEDULE = """\
subject: A singer in a green jacket
negative: blurry, flickering
schedule:
  - {at: "0:00", prompt: is singing softly}
"""
RANK_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def torchrun(args: list[str], cwd: Path, cache: Path, ranks: int = 2) -> subprocess.CompletedProcess[str]:
    """`torchrun --nproc-per-node RANKS -m audioloop ARGS` in `cwd`; prompts cached in `cache`."""
    env = {k: v for k, v in os.environ.items() if k not in RANK_ENV}
    env.update(AUDIOLOOP_CACHE_DIR=str(cache), OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}"]
    return subprocess.run(
        [*command, "-m", "audioloop", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def write_inputs(folder: Path, songs: dict[str, float]) -> None:
    """Songs of the given lengths, a hero image and a one-entry schedule in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, seconds in songs.items():
        demo.write_wav(folder / name, demo.song(seconds))
    demo.hero_image(96, 80).save(folder / "hero.png")
    (folder / "schedule.yaml").write_text(SCHEDULE)


def test_world_size_comes_from_torchrun() -> None:
    assert torchrun_world({}) == 1
    assert torchrun_world({"WORLD_SIZE": "4"}) == 4
    assert (rank_backend(torch.device("cpu")), rank_backend(torch.device("cuda", 1))) == ("gloo", None)


@pytest.mark.parametrize(
    ("flag", "world", "ranks"), [(False, 1, 1), (True, 1, 1), (True, 2, 2), (True, 8, 8)]
)
def test_every_rank_shares_each_window_only_with_the_flag(flag: bool, world: int, ranks: int) -> None:
    assert split_ranks(flag, world) == ranks


def test_a_multi_rank_launch_without_the_flag_is_refused() -> None:
    with pytest.raises(SettingsError) as caught:
        split_ranks(False, 2)
    assert str(caught.value) == (
        "render runs under torchrun (2 processes) only with --sequence-parallel, which splits every window "
        "over them; to give each GPU its own song, use `audioloop batch`"
    )


def test_render_under_torchrun_without_the_flag_exits_2_before_any_model_loads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_inputs(tmp_path, {"song.wav": 1.2})
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr("audioloop.render.load_components", lambda *a, **k: pytest.fail("a model was loaded"))
    args = ["render", str(tmp_path / "song.wav"), "-i", str(tmp_path / "hero.png")]
    result = CliRunner().invoke(app, [*args, "-s", str(tmp_path / "schedule.yaml"), "-c", str(TINY)])
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1 and "only with --sequence-parallel" in result.stderr


# Pixel context re-encodes decoded uint8 frames: a rounding flip from window 0's float noise (~1e-6) moves
# window 1's context, so later windows and frames agree more loosely than with latent context.
# A pixel one level off before the yuv420p conversion can move its Y, U and V a level each, which decode back
# to up to 3 levels of RGB: the frame tolerances allow that much where the latents agree to 1e-5.
CASES = [("latent", 1e-5, 3, 1e-3), ("pixel", 1e-3, 4, 1e-2)]


@pytest.mark.parametrize(("context", "later_atol", "frame_max", "frame_mean"), CASES)
def test_two_ranks_render_the_same_latents_and_frames_as_one(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    context: str,
    later_atol: float,
    frame_max: int,
    frame_mean: float,
) -> None:
    write_inputs(tmp_path, {"song.wav": 2.3})
    common = ["render", "song.wav", "-i", "hero.png", "-s", "schedule.yaml", "-c", str(TINY), "--steps", "2"]
    common += ["--context", context, "--crf", "0", "--json"]
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("AUDIOLOOP_CACHE_DIR", str(tmp_path / "cache1"))
    one = CliRunner().invoke(app, [*common, "-o", "one.mkv"])
    assert one.exit_code == 0, one.output

    two = torchrun([*common, "-o", "two.mkv", "--sequence-parallel"], tmp_path, tmp_path / "cache2")
    assert two.returncode == 0, two.stderr
    document = json.loads(two.stdout)  # rank 0 alone prints
    assert document == json.loads((tmp_path / "two.mkv.json").read_text())
    assert len(document["windows"]) == 2 and all(w["sampled"] for w in document["windows"])

    ones, twos = WorkDir(tmp_path / "one.mkv.work"), WorkDir(tmp_path / "two.mkv.work")
    assert ones.stored() == twos.stored() == 2
    torch.testing.assert_close(twos.load(0), ones.load(0), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(twos.load(1), ones.load(1), rtol=1e-5, atol=later_atol)
    a, b = frames_of(tmp_path / "one.mkv"), frames_of(tmp_path / "two.mkv")
    assert a.shape == b.shape == (57, 64, 64, 3)
    difference = np.abs(a.astype(np.int16) - b.astype(np.int16))
    assert difference.max() <= frame_max and difference.mean() < frame_mean
