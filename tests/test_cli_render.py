"""`audioloop render` from the command line: output, --json, --quiet, the sidecar and every exit code."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from audioloop import __version__, demo
from audioloop.cli import app
from audioloop.workdir import WorkDir

pytestmark = pytest.mark.usefixtures("text_cache")
CONFIG = """\
width: 64
height: 64
window: 3.56
overlap: 1.64
model: tiny
device: cpu
dtype: float32
preset: ultrafast
"""


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    """A 6.4 s song (three windows), the demo image and schedule, and a small-render config."""
    demo.write_wav(tmp_path / "song.wav", demo.song(6.4))
    demo.hero_image(96, 80).save(tmp_path / "hero.png")
    (tmp_path / "schedule.yaml").write_text(demo.SCHEDULE)
    (tmp_path / "tiny.yaml").write_text(CONFIG)
    return {name: tmp_path / name for name in ("song.wav", "hero.png", "schedule.yaml", "tiny.yaml")}


def run(files: dict[str, Path], *extra: str, song: Path | None = None, **paths: Path) -> Any:
    """Invoke `audioloop render` on the test files (any of them replaced) with `extra` flags."""
    named = {"image": files["hero.png"], "schedule": files["schedule.yaml"], "config": files["tiny.yaml"]}
    named.update(paths)
    args = ["render", str(song or files["song.wav"])]
    for flag, path in named.items():
        args += [f"--{flag}", str(path)]
    return CliRunner().invoke(app, [*args, "--steps", "2", *extra])


@pytest.fixture
def no_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if a render gets as far as loading a model."""
    monkeypatch.setattr("audioloop.render.load_components", lambda *a, **k: pytest.fail("a model was loaded"))


def test_json_prints_the_sidecar_with_every_setting_window_timing_and_version(files: dict[str, Path]) -> None:
    output = files["song.wav"].with_name("out.mkv")
    result = run(files, "-o", str(output), "--seed", "5", "--adain", "0.3", "--json")
    assert result.exit_code == 0, result.output
    sidecar = json.loads(result.stdout)
    assert sidecar == json.loads(Path(f"{output}.json").read_text())
    assert output.is_file() and sidecar["output"] == str(output)
    assert sidecar["work_dir"] == f"{output}.work"

    settings = sidecar["settings"]
    assert (settings["width"], settings["height"], settings["window"], settings["seed"]) == (64, 64, 3.56, 5)
    assert settings["adain"] == 0.3 and settings["sigmas"] == [1.0, 0.421875, 0.0]
    accel = {"compile": False, "attention": "sdpa", "fp8": None, "offload": False}  # compile auto: off on CPU
    assert settings["compile"] == "auto"
    assert sidecar["model"] == {
        "id": "tiny",
        "revision": "tiny-v1",
        "dtype": "float32",
        "device": "cpu",
        "accel": accel,
    }
    assert sidecar["negative"] == "blurry, distorted face, flickering, text, watermark"
    for key, name in (("song", "song.wav"), ("image", "hero.png"), ("schedule", "schedule.yaml")):
        digest = hashlib.sha256(files[name].read_bytes()).hexdigest()
        assert sidecar["inputs"][key] == {"path": str(files[name]), "sha256": digest}

    windows = sidecar["windows"]
    assert [w["seed"] for w in windows] == [5, 6, 7]
    assert [w["schedule_entry"] for w in windows] == [0, 1, 1]
    assert windows[1]["prompt"].startswith("A woman with short red hair and a green jacket is singing louder")
    assert all(w["sampled"] and len(w["fingerprint"]) == 64 for w in windows)
    assert sidecar["plan"]["total_frames"] == 160 and len(sidecar["plan"]["windows"]) == 3

    assert set(sidecar["timings"]) == {
        "load",
        "text",
        "encode",
        "sampling",
        "decode",
        "mux",
        "decode_busy",
        "total",
    }
    assert all(t >= 0 for t in sidecar["timings"].values())
    stages = sum(t for k, t in sidecar["timings"].items() if k not in ("total", "decode_busy"))
    assert sidecar["timings"]["total"] >= stages
    assert sidecar["versions"]["audioloop"] == __version__
    assert set(sidecar["versions"]) == {"audioloop", "python", "torch", "diffusers", "transformers", "av"}
    assert sidecar["decode"]["reach"] == 14 and len(sidecar["decode"]["spans"]) == 2


def test_output_defaults_to_the_song_name_and_only_stderr_is_written(files: dict[str, Path]) -> None:
    result = run(files)
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    assert "wrote" in result.stderr and "window 3/3" in result.stderr
    assert files["song.wav"].with_suffix(".mp4").is_file()
    assert files["song.wav"].with_name("song.mp4.json").is_file()


def test_quiet_prints_nothing(files: dict[str, Path]) -> None:
    result = run(files, "--quiet", "--no-resume")
    assert result.exit_code == 0, result.output
    assert (result.stdout, result.stderr) == ("", "")
    assert files["song.wav"].with_suffix(".mp4").is_file()


@pytest.mark.parametrize(
    ("missing", "what"), [("song", "song not found"), ("image", "image not found"), ("schedule", "not found")]
)
def test_a_missing_input_exits_1_with_one_line_before_any_model_loads(
    files: dict[str, Path], tmp_path: Path, no_model: None, missing: str, what: str
) -> None:
    nowhere = tmp_path / "nowhere.file"
    result = run(
        files,
        song=nowhere if missing == "song" else None,
        **({missing: nowhere} if missing != "song" else {}),
    )
    assert result.exit_code == 1
    assert result.stderr.count("\n") == 1 and what in result.stderr and str(nowhere) in result.stderr
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    ("flags", "code", "message"),
    [
        (["--bogus"], 2, "No such option"),
        (["--width", "100"], 2, "--width 100 must be a positive multiple of 32"),
        (["--overlap", "5"], 2, "--overlap 5 s is not shorter than --window"),
        (["--steps", "9"], 2, "--steps 9: this sigma list has 8 steps"),
        (["--sigmas", "1,0.5,0.7"], 2, "--sigmas: sigmas must be strictly decreasing"),
        (["--nag-scale", "0.5"], 2, "NAG scale must be ≥ 1"),
        (["--adain", "1.5"], 2, "--adain 1.5: factors lie in [0, 1]"),
        (["--context", "pixels"], 2, "context must be one of latent, pixel"),
        (["--dtype", "float64"], 2, "dtype must be one of"),
        (["--device", "cuda:7"], 2, "--device cuda:7"),
        (["--only-windows", "3"], 2, "window 3 does not exist; this render has windows 0–2"),
        (["--only-windows", "1", "--no-resume"], 2, "drop --no-resume"),
        (["--only-windows", "1"], 1, "window 0 is missing or unreadable"),
        (["-o", "video.avi"], 1, "unsupported output type '.avi'"),
        (["--crf", "60"], 2, "--crf: crf 60 is out of range"),
        (["--fp8"], 2, "--fp8 needs an NVIDIA GPU with FP8 (Ada/Hopper), not cpu; drop --fp8"),
        (["--offload"], 2, "--offload needs an NVIDIA GPU, not cpu; drop --offload"),
        (["--fp8", "--offload"], 2, "--fp8 and --offload need an NVIDIA GPU with FP8 (Ada/Hopper), not cpu"),
        (["--attention", "xformers"], 2, "attention must be one of sdpa, cudnn, flash, efficient, fa4, fa3"),
        (["--attention", "fa3"], 2, "--attention fa3 needs a CUDA GPU, not cpu; use --attention sdpa"),
    ],
)
def test_bad_flags_and_impossible_settings_exit_before_any_model_loads(
    files: dict[str, Path], no_model: None, flags: list[str], code: int, message: str
) -> None:
    result = run(files, *flags)
    assert result.exit_code == code, result.output
    assert message in result.output
    assert "Traceback" not in result.output


def test_an_unreadable_song_exits_1(files: dict[str, Path], no_model: None) -> None:
    files["song.wav"].write_bytes(b"RIFF not really a wav")
    result = run(files)
    assert result.exit_code == 1 and "cannot be read as audio" in result.stderr


def test_ctrl_c_exits_130_with_how_to_resume_and_keeps_finished_windows(
    files: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    import audioloop.render

    real = audioloop.render.sample_window

    def interrupt_window_1(*args: Any, **kwargs: Any) -> torch.Tensor:
        if kwargs["seed"] == 1:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(audioloop.render, "sample_window", interrupt_window_1)
    result = run(files, "--quiet")
    assert result.exit_code == 130
    assert result.stderr.count("\n") == 1
    assert "window 0 is saved" in result.stderr and "Run the same command again to resume" in result.stderr
    assert not files["song.wav"].with_suffix(".mp4").exists()
    assert WorkDir(files["song.wav"].with_name("song.mp4.work")).stored() == 1


def test_ctrl_c_before_rendering_exits_130(files: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(request: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("audioloop.job.prepare", interrupted)
    result = run(files)
    assert result.exit_code == 130
    assert result.stderr == "error: interrupted before anything was written\n"


def test_non_finite_latents_exit_3_naming_the_window(
    files: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    import audioloop.render

    real = audioloop.render.sample_window

    def nan_in_window_2(*args: Any, **kwargs: Any) -> torch.Tensor:
        latents = real(*args, **kwargs)
        return latents * float("inf") if kwargs["seed"] == 2 else latents

    monkeypatch.setattr(audioloop.render, "sample_window", nan_in_window_2)
    result = run(files, "--quiet")
    assert result.exit_code == 3
    assert "window 2: the sampled latents contain NaN or inf (windows 0–1 are kept" in result.stderr
    assert WorkDir(files["song.wav"].with_name("song.mp4.work")).stored() == 2
    assert not files["song.wav"].with_suffix(".mp4").exists()


def test_accel_flags_reach_the_accel_settings_before_any_model_loads(
    files: dict[str, Path], no_model: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    from audioloop.models.accel import AccelSettings

    seen = []

    def refuse(settings: AccelSettings, device: torch.device) -> None:
        seen.append(settings)
        raise ValueError("no FP8 here")

    monkeypatch.setattr("audioloop.job.check_modes", refuse)
    result = run(files, "--compile", "--attention", "cudnn", "--fp8", "--offload")
    assert result.exit_code == 2 and result.stderr.count("\n") == 1, result.output
    assert seen == [AccelSettings(compile=True, attention="cudnn", fp8="all", offload=True)]


def test_no_compile_renders_and_accelerates_the_transformer_once(
    files: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    import audioloop.render

    calls = []
    real = audioloop.render.accelerate
    monkeypatch.setattr(audioloop.render, "accelerate", lambda *args: calls.append(args[1]) or real(*args))
    output = files["song.wav"].with_name("out.mkv")
    result = run(files, "-o", str(output), "--no-compile", "--attention", "sdpa", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["model"]["accel"]["compile"] is False
    assert [(c.compile, c.attention) for c in calls] == [(False, "sdpa")]
