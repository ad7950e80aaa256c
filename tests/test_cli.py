"""`audioloop plan` and `--version` through the real command line: output, JSON schema, exit codes."""

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from audioloop import __version__
from audioloop.cli import app
from mediagen import write_tone

SCHEDULE = """\
subject: A drummer in a white shirt
schedule:
  - at: "0:00"
    prompt: is counting in with the sticks raised
  - at: "0:40"
    prompt: is playing a fast fill, hair flying
"""


@pytest.fixture
def song(tmp_path):
    return write_tone(tmp_path / "song.wav", 70.0, 22_050, channels=2)


@pytest.fixture
def schedule(tmp_path):
    path = tmp_path / "prompts.yaml"
    path.write_text(SCHEDULE)
    return path


def run(*args):
    result = CliRunner().invoke(app, [str(a) for a in args])
    return result.exit_code, result.stdout, result.stderr


def test_version():
    code, out, _ = run("--version")
    assert code == 0 and out.strip() == f"audioloop {__version__}"


def test_plan_prints_the_window_table(song, schedule):
    code, out, err = run("plan", song, "--schedule", schedule)
    assert code == 0, err
    assert "4 windows" in out and "832×480" in out and "1750 frames out" in out
    assert "counting in" in out and "fast fill" in out


def test_plan_json_schema(song, schedule):
    code, out, _ = run("plan", song, "--schedule", schedule, "--json", "--seed", "5")
    assert code == 0
    doc = json.loads(out)
    assert set(doc) == {"version", "song", "schedule", "settings", "plan", "warnings"}
    assert doc["song"]["duration"] == pytest.approx(70.0)
    plan = doc["plan"]
    assert (plan["win_px"], plan["win_lat"], plan["ov_lat"], plan["stride_px"]) == (497, 63, 7, 448)
    assert plan["total_frames"] == 1750
    windows = plan["windows"]
    assert [w["seed"] for w in windows] == [5, 6, 7, 8]
    assert [w["song_start"] for w in windows] == pytest.approx([0.0, 17.92, 35.84, 53.76])
    # 40 s snaps to the nearest window start (35.84 s): window 2 takes entry 1.
    assert [w["schedule_entry"] for w in windows] == [0, 0, 1, 1]
    assert windows[0]["prompt"].startswith("A drummer in a white shirt is counting in")
    assert doc["settings"]["width"] == 832 and doc["warnings"] == []


def test_flags_override_the_config_file(song, schedule, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("width: 640\nheight: 384\nwindow: 10\n")
    code, out, _ = run("plan", song, "--schedule", schedule, "--config", cfg, "--width", "512", "--json")
    doc = json.loads(out)
    assert code == 0 and doc["plan"]["width"] == 512 and doc["plan"]["height"] == 384
    assert doc["plan"]["win_px"] == 249


def test_start_and_duration_select_the_range(song, schedule):
    code, out, _ = run("plan", song, "--schedule", schedule, "--start", "30", "--duration", "10", "--json")
    plan = json.loads(out)["plan"]
    assert code == 0 and plan["total_frames"] == 250 and len(plan["windows"]) == 1
    assert plan["windows"][0]["song_start"] == 30.0


@pytest.mark.parametrize(
    ("args", "code", "needle"),
    [
        (["missing.wav", "--schedule", "{schedule}"], 1, "missing.wav: song not found"),
        (["{song}", "--schedule", "nope.yaml"], 1, "nope.yaml: schedule not found"),
        (["{song}", "--schedule", "{schedule}", "--width", "500"], 2, "--width"),
        (["{song}", "--schedule", "{schedule}", "--overlap", "30"], 2, "--overlap"),
        (["{song}", "--schedule", "{schedule}", "--start", "99"], 1, "--start"),
        (["{song}", "--schedule", "{schedule}", "--frobnicate"], 2, "No such option"),
        (["{song}", "--schedule", "{schedule}", "--width", "wide"], 2, "Invalid value"),
    ],
)
def test_exit_codes(song, schedule, args, code, needle):
    args = [a.format(song=song, schedule=schedule) for a in args]
    exit_code, out, err = run("plan", *args)
    assert exit_code == code
    assert needle in err
    assert "Traceback" not in out + err


def test_bad_schedule_is_one_line_naming_file_and_entry(song, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text('schedule:\n  - {at: "0:00", prompt: a}\n  - {at: "0:05", prompt: ""}\n')
    code, _, err = run("plan", song, "--schedule", bad)
    assert code == 1
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "bad.yaml" in lines[0] and "entry 1" in lines[0]


def test_unsorted_schedule_is_an_input_error(song, tmp_path):
    bad = tmp_path / "unsorted.yaml"
    bad.write_text(
        'schedule:\n  - {at: "0:00", prompt: a}\n  - {at: "0:30", prompt: b}\n  - {at: 10, prompt: c}\n'
    )
    code, _, err = run("plan", song, "--schedule", bad)
    assert code == 1 and "unsorted.yaml" in err and "sort" in err


def test_console_script_exit_codes_without_traceback(tmp_path, schedule):
    """The installed entry point, as a batch script sees it."""
    result = subprocess.run(
        [sys.executable, "-m", "audioloop", "plan", str(tmp_path / "x.wav"), "--schedule", str(schedule)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
