"""`audioloop batch`: manifest parsing and checks with exact messages, rows per rank, row status and the exit
code exactly; then tiny batches: 3 songs over 2 torchrun ranks (gloo), a rerun that skips finished rows and
resumes an unfinished one without sampling, and failing rows that the other rows survive."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from audioloop.batch import (
    FAILED,
    FINISHED,
    RENDERED,
    RESUMABLE,
    SKIPPED,
    TO_DO,
    Row,
    RowResult,
    batch_exit_code,
    csv_value,
    load_manifest,
    row_status,
    rows_for_rank,
)
from audioloop.cli import app
from audioloop.config import Settings, read_config
from audioloop.errors import SettingsError
from mediagen import cut_file
from test_render_parallel import TINY, torchrun, write_inputs

SIGMAS = "[1.0, 0.421875, 0.0]"

# --- the manifest -------------------------------------------------------------------------------------------


def write(folder: Path, name: str, text: str) -> Path:
    """A file of `text` in `folder`."""
    path = folder / name
    path.write_text(text)
    return path


def test_yaml_rows_inherit_defaults_and_resolve_paths_against_the_manifest(tmp_path: Path) -> None:
    shutil.copy(TINY, tmp_path / "tiny.yaml")
    manifest = write(
        tmp_path,
        "batch.yaml",
        "defaults: {image: hero.png, schedule: s.yaml, config: tiny.yaml, seed: 3}\n"
        "rows:\n"
        "  - {song: songs/a.wav, output: out/a.mp4}\n"
        "  - {song: /abs/b.wav, output: /abs/b.mkv, image: other.png, seed: 5, nag-scale: 4}\n",
    )
    tiny = Settings(**read_config(TINY))
    first, second = load_manifest(manifest)
    assert first == Row(
        1,
        tmp_path / "songs/a.wav",
        tmp_path / "hero.png",
        tmp_path / "s.yaml",
        tmp_path / "out/a.mp4",
        replace(tiny, seed=3),
    )
    assert second == Row(
        2,
        Path("/abs/b.wav"),
        tmp_path / "other.png",
        tmp_path / "s.yaml",
        Path("/abs/b.mkv"),
        replace(tiny, seed=5, nag_scale=4.0),
    )


def test_a_csv_manifest_means_what_the_same_yaml_manifest_does(tmp_path: Path) -> None:
    yaml_rows = write(
        tmp_path,
        "batch.yaml",
        "- {song: a.wav, image: h.png, schedule: s.yaml, output: a.mp4, seed: 4, sigmas: [1, 0.5, 0], "
        "nag: false, negative: 'blurry, text: none'}\n"
        "- {song: b.wav, image: h.png, schedule: s.yaml, output: b.mp4, duration: 12.5}\n",
    )
    csv_rows = write(
        tmp_path,
        "batch.csv",
        "song, image, schedule, output, seed, sigmas, nag, negative, duration\n"
        'a.wav,h.png,s.yaml,a.mp4,4,"1,0.5,0",false,"blurry, text: none",\n'
        "b.wav,h.png,s.yaml,b.mp4,,,,,12.5\n",
    )
    assert load_manifest(csv_rows) == load_manifest(yaml_rows)


@pytest.mark.parametrize(
    ("name", "cell", "value"),
    [
        ("seed", "5", 5),
        ("adain", " 0.3 ", 0.3),
        ("nag", "false", False),
        ("sigmas", "1,0.5,0", "1,0.5,0"),
        ("negative", "blurry: none", "blurry: none"),
        ("song", "01.wav", "01.wav"),
        ("config", "true", "true"),
    ],
)
def test_csv_cells_read_as_yaml_scalars_except_paths_and_text(name: str, cell: str, value: Any) -> None:
    assert csv_value(name, cell) == value


ROW = "song: a.wav, image: h.png, schedule: s.yaml"
BAD_MANIFESTS = [
    ("m.yaml", None, "{m}: manifest not found; pass a YAML or CSV file"),
    ("m.txt", "", "{m}: unsupported manifest type '.txt'; use .yaml, .yml or .csv"),
    ("m.yaml", "- {song: a\n  -", "{m}: not valid YAML at line 2; fix the syntax"),
    ("m.yaml", "song: a.wav", "{m}: expected a list of rows, or a mapping of rows and defaults"),
    ("m.yaml", "rows: 3", "{m}: expected a list of rows, or a mapping of rows and defaults"),
    ("m.yaml", "[]", "{m}: no rows; list at least one row of song, image, schedule and output"),
    ("m.yaml", "- 5", "{m}: row 1: expected a mapping of field: value, got 5"),
    (
        "m.yaml",
        f"- {{{ROW}, output: a.mp4}}\n- {{{ROW}}}",
        "{m}: row 2: no output; every row needs song, image, schedule and output",
    ),
    ("m.yaml", f"- {{{ROW}, imag: x.png}}", "{m}: row 1: unknown field 'imag' (did you mean 'image'?)"),
    ("m.yaml", f"- {{{ROW}, output: 7}}", "{m}: row 1: output must be a path, got 7"),
    ("m.yaml", f"- {{{ROW}, output: a.mp4, seed: x}}", "{m}: row 1: seed must be a int, got 'x'"),
    (
        "m.yaml",
        f"- {{{ROW}, output: a.mp4, dtype: f64}}",
        "{m}: row 1: dtype must be one of bfloat16, float16, float32, got 'f64'",
    ),
    (
        "m.yaml",
        f"- {{{ROW}, output: a.mp4, config: nope.yaml}}",
        "{m}: row 1: config {d}/nope.yaml not found",
    ),
    (
        "m.yaml",
        f"defaults: {{song: a.wav}}\nrows: [{{{ROW}, output: a.mp4}}]",
        "{m}: defaults: song differs from row to row; give it in each row",
    ),
    (
        "m.yaml",
        f"- {{{ROW}, output: out/a.mp4}}\n- {{{ROW}, output: out/../out/a.mp4}}",
        "{m}: row 2: output {d}/out/../out/a.mp4 is also row 1's; give every row its own output",
    ),
    (
        "m.yaml",
        f"- {{{ROW}, output: a.mp4, model: tiny}}\n- {{{ROW}, output: b.mp4}}",
        "{m}: row 2: model 'diffusers/LTX-2.3-Distilled-Diffusers' differs from row 1's 'tiny'; a batch "
        "renders every row with one model, dtype and device (and one compile, attention, fp8 and offload)",
    ),
    (
        "m.csv",
        "song,image\na.wav,h.png\n",
        "{m}: no schedule, output column; the header names song, image, schedule, output and any settings",
    ),
    (
        "m.csv",
        "song,image,schedule,output\na,b,c,d,e\n",
        "{m}: row 1: more cells than the header has columns",
    ),
    ("m.csv", "song,image,schedule,output,seed\na,b,c,d,x\n", "{m}: row 1: seed must be a int, got 'x'"),
    (
        "m.csv",
        "song,image,schedule,output\na,b,c,d\na,b,c,\n",
        "{m}: row 2: no output; every row needs song, image, schedule and output",
    ),
]


@pytest.mark.parametrize(("name", "text", "message"), BAD_MANIFESTS)
def test_a_bad_manifest_is_one_line_naming_the_manifest_row_and_field(
    tmp_path: Path, name: str, text: str | None, message: str
) -> None:
    path = tmp_path / name if text is None else write(tmp_path, name, text)
    with pytest.raises(SettingsError) as caught:
        load_manifest(path)
    assert str(caught.value) == message.format(m=path, d=tmp_path)


def test_a_bad_manifest_exits_2_with_one_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["batch", str(write(tmp_path, "m.yaml", "[]"))])
    assert result.exit_code == 2
    message = "no rows; list at least one row of song, image, schedule and output"
    assert result.stderr == f"error: {tmp_path}/m.yaml: {message}\n"


# --- rows, ranks and status ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("count", "world", "rank", "rows"),
    [(5, 1, 0, [0, 1, 2, 3, 4]), (5, 2, 0, [0, 2, 4]), (5, 2, 1, [1, 3]), (3, 4, 3, []), (7, 3, 2, [2, 5])],
)
def test_rank_r_renders_the_rows_i_with_i_mod_world_equal_to_r(
    count: int, world: int, rank: int, rows: list[int]
) -> None:
    assert rows_for_rank(count, world, rank) == rows


@pytest.mark.parametrize(("count", "world"), [(0, 2), (9, 2), (10, 3), (2, 8)])
def test_the_ranks_share_out_every_row_once(count: int, world: int) -> None:
    shares = [rows_for_rank(count, world, rank) for rank in range(world)]
    assert sorted(i for share in shares for i in share) == list(range(count))


EXPECTED = {
    "settings": {"seed": 0, "sigmas": [1.0, 0.0]},
    "windows": [{"fingerprint": "f0", "sampled": True}, {"fingerprint": "f1", "sampled": True}],
    "inputs": {"song": {"path": "a.wav", "sha256": "s1"}, "image": {"path": "h.png", "sha256": "s2"}},
    "timings": {"total": 0.0},
}


def _changed(**changes: Any) -> dict[str, Any]:
    return {**EXPECTED, **changes}


MOVED_AND_RETIMED = _changed(
    timings={"total": 9.0},
    windows=[{"fingerprint": f, "sampled": False} for f in ("f0", "f1")],
    inputs={"song": {"path": "/x/a.wav", "sha256": "s1"}, "image": {"path": "/x/h.png", "sha256": "s2"}},
)


@pytest.mark.parametrize(
    ("recorded", "start", "status"),
    [
        (None, 0, TO_DO),
        (None, 1, RESUMABLE),
        (EXPECTED, 0, FINISHED),
        (MOVED_AND_RETIMED, 2, FINISHED),
        (_changed(windows=[{"fingerprint": "f0"}, {"fingerprint": "old"}]), 1, RESUMABLE),
        (_changed(windows=[{"fingerprint": "f0"}]), 1, RESUMABLE),
        (_changed(settings={"seed": 1, "sigmas": [1.0, 0.0]}), 0, TO_DO),
        (_changed(settings={**EXPECTED["settings"], "compile": True, "offload": True}), 2, FINISHED),
        (_changed(settings={**EXPECTED["settings"], "fp8": True}), 2, RESUMABLE),
        (_changed(inputs={"song": {"sha256": "s1"}, "image": {"sha256": "other"}}), 2, RESUMABLE),
        ({"windows": 3}, 0, TO_DO),
        ({}, 0, TO_DO),
    ],
)
def test_a_row_is_finished_only_when_its_sidecar_matches_what_it_would_render(
    recorded: dict[str, Any] | None, start: int, status: str
) -> None:
    assert row_status(recorded, EXPECTED, start) == status


def _result(status: str, code: int = 0) -> RowResult:
    return RowResult(1, "a.wav", "a.mp4", status, 1.0, exit_code=code)


@pytest.mark.parametrize(
    ("statuses", "code"),
    [
        ([], 0),
        ([(RENDERED, 0), (SKIPPED, 0)], 0),
        ([(RENDERED, 0), (FAILED, 3)], 1),
        ([(FAILED, 2), (FAILED, 130)], 1),
    ],
)
def test_the_batch_exits_1_if_any_row_failed_whatever_its_code(statuses: list[Any], code: int) -> None:
    assert batch_exit_code([_result(status, c) for status, c in statuses]) == code


# --- tiny batches -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def outside_torchrun(text_cache: Path) -> Iterator[None]:
    """This module's own text cache, and no torchrun world inherited from the environment."""
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("WORLD_SIZE", raising=False)
        yield


@pytest.fixture
def loads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every model the batch loads; the render must never load one itself."""
    import audioloop.batch

    models: list[str] = []
    real = audioloop.batch.load_components

    def counting(model: str, **kwargs: Any) -> Any:
        models.append(model)
        return real(model, **kwargs)

    monkeypatch.setattr(audioloop.batch, "load_components", counting)
    monkeypatch.setattr("audioloop.render.load_components", lambda *a, **k: pytest.fail("render loaded"))
    return models


def batch(*args: str) -> Any:
    """`audioloop batch ARGS` in this process."""
    return CliRunner().invoke(app, ["batch", *args])


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory: pytest.TempPathFactory, text_cache: Path) -> tuple[Path, Any]:
    """3 songs (2, 1 and 1 windows) rendered by `torchrun --nproc-per-node 2 -m audioloop batch --json`."""
    folder = tmp_path_factory.mktemp("three_songs")
    write_inputs(folder, {"a.wav": 2.3, "b.wav": 1.2, "c.wav": 1.2})
    shutil.copy(TINY, folder / "tiny.yaml")
    write(
        folder,
        "batch.yaml",
        f"defaults: {{image: hero.png, schedule: schedule.yaml, config: tiny.yaml, sigmas: {SIGMAS}}}\n"
        "rows:\n"
        "  - {song: a.wav, output: out/a.mkv}\n"
        "  - {song: b.wav, output: out/b.mkv, seed: 7}\n"
        "  - {song: c.wav, output: out/c.mkv}\n",
    )
    return folder, torchrun(["batch", "batch.yaml", "--json"], folder, text_cache)


def test_three_songs_over_two_ranks_all_render(two_ranks: tuple[Path, Any]) -> None:
    folder, run = two_ranks
    assert run.returncode == 0, run.stderr
    document = json.loads(run.stdout)  # rank 0 alone prints, every row included
    assert document["manifest"] == "batch.yaml" and document["exit_code"] == 0
    rows = document["rows"]
    assert [(r["row"], r["status"], r["rank"], r["resumed_from"], r["error"]) for r in rows] == [
        (1, RENDERED, 0, 0, None),
        (2, RENDERED, 1, 0, None),
        (3, RENDERED, 0, 0, None),
    ]
    assert [r["output"] for r in rows] == ["out/a.mkv", "out/b.mkv", "out/c.mkv"]
    sidecars = [json.loads((folder / f"out/{name}.mkv.json").read_text()) for name in "abc"]
    assert [len(s["windows"]) for s in sidecars] == [2, 1, 1]
    assert [s["windows"][0]["seed"] for s in sidecars] == [0, 7, 0]
    assert all((folder / f"out/{name}.mkv").is_file() for name in "abc")


def test_a_rerun_skips_finished_rows_and_resumes_an_unfinished_one_without_sampling(
    two_ranks: tuple[Path, Any], tmp_path: Path, loads: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = shutil.copytree(two_ranks[0], tmp_path / "copy")  # relative paths: the copy is the same batch
    (folder / "out/b.mkv").unlink()  # its work dir stays
    finished = [folder / f"out/{name}" for name in ("a.mkv", "a.mkv.json", "c.mkv", "c.mkv.json")]
    stamps = [path.stat().st_mtime_ns for path in finished]
    monkeypatch.setattr("audioloop.render.sample_window", lambda *a, **k: pytest.fail("a window was sampled"))

    result = batch(str(folder / "batch.yaml"), "--json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)["rows"]
    assert [(r["status"], r["resumed_from"]) for r in rows] == [
        (SKIPPED, None),
        (RENDERED, 1),
        (SKIPPED, None),
    ]
    assert [path.stat().st_mtime_ns for path in finished] == stamps
    assert (folder / "out/b.mkv").is_file() and loads == ["tiny"]
    assert (
        f"row 2 ({folder}/b.wav): rendering {folder}/out/b.mkv; window 0 is in its work dir" in result.stderr
    )

    again = batch(str(folder / "batch.yaml"))
    assert again.exit_code == 0 and "3 rows: 0 rendered, 3 skipped, 0 failed" in again.stdout
    assert loads == ["tiny"]  # nothing left to render: no model loaded


@pytest.fixture
def mixed(tmp_path: Path) -> Path:
    """A CSV manifest of 4 one-window rows: good, truncated song, missing image, good."""
    write_inputs(tmp_path, {"good.wav": 1.2, "cut.wav": 1.2})
    cut_file(tmp_path / "cut.wav")
    shutil.copy(TINY, tmp_path / "tiny.yaml")
    rows = [("good", "hero"), ("cut", "hero"), ("good", "missing"), ("good", "hero")]
    lines = [
        f'{song}.wav,{image}.png,schedule.yaml,out/{n}.mkv,tiny.yaml,"1,0.421875,0"'
        for n, (song, image) in enumerate(rows, start=1)
    ]
    return write(
        tmp_path, "batch.csv", "\n".join(["song,image,schedule,output,config,sigmas", *lines]) + "\n"
    )


def test_failing_rows_are_reported_and_the_others_render_with_one_model_load(
    mixed: Path, loads: list[str]
) -> None:
    result = batch(str(mixed))
    assert result.exit_code == 1
    assert "4 rows: 2 rendered, 0 skipped, 2 failed" in result.stdout
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        f"error: row 2: {mixed.parent}/cut.wav: the file looks truncated: its WAV header promises 211724 "
        "bytes but it holds 105862; re-export it",
        f"error: row 3: {mixed.parent}/missing.png: image not found; fix the row's image path",
    ]
    assert [(mixed.parent / f"out/{n}.mkv").is_file() for n in range(1, 5)] == [True, False, False, True]
    assert loads == ["tiny"]

    rerun = batch(str(mixed), "--quiet", "--json")  # quiet: the failed rows' errors alone
    assert rerun.exit_code == 1
    document = json.loads(rerun.stdout)
    assert document["exit_code"] == 1
    assert [(r["status"], r["exit_code"]) for r in document["rows"]] == [
        (SKIPPED, 0),
        (FAILED, 1),
        (FAILED, 1),
        (SKIPPED, 0),
    ]
    assert [f"error: row {r['row']}: {r['error']}" for r in document["rows"][1:3]] == errors
    assert rerun.stderr.splitlines() == errors
