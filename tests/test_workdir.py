"""The work dir: fingerprints, resume and --only-windows selection, atomic window storage, the cache dir."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from audioloop.config import Settings
from audioloop.errors import InputError, SettingsError
from audioloop.job import window_inputs
from audioloop.plan import Plan, make_plan
from audioloop.workdir import (
    MANIFEST,
    WorkDir,
    cache_dir,
    chain,
    fingerprint,
    only_windows_start,
    parse_windows,
    resume_start,
    tensor_hash,
)

SETTINGS = Settings(width=64, height=64, window=3.56, overlap=1.64, model="tiny", dtype="float32")
PLAN = make_plan(6.4, fps=25, width=64, height=64, window_s=3.56, overlap_s=1.64)
SHAPE = (1, 8, 12, 2, 2)


def prints(
    settings: Settings = SETTINGS,
    prompts: tuple[str, ...] = ("a", "a", "b"),
    plan: Plan = PLAN,
    **changes: str,
) -> list[str]:
    """The fingerprint chain of a plan's three windows; `changes` override the per-window inputs for all."""
    parts = {"negative": "neg", "audio": "audio", "image": "image", "revision": "tiny-v1", **changes}
    inputs = [
        window_inputs(
            settings,
            plan,
            window,
            prompt,
            parts["negative"],
            parts["audio"],
            parts["image"],
            parts["revision"],
        )
        for window, prompt in zip(plan.windows, prompts, strict=True)
    ]
    return chain(inputs)


def test_fingerprint_is_stable_and_chains_onto_the_previous_window() -> None:
    assert fingerprint("", {"a": 1}) == fingerprint("", {"a": 1})
    assert fingerprint("", {"a": 1}) != fingerprint("", {"a": 2})
    assert fingerprint("x", {"a": 1}) != fingerprint("", {"a": 1})
    assert chain([{"a": 1}, {"b": 2}]) == [
        fingerprint("", {"a": 1}),
        fingerprint(fingerprint("", {"a": 1}), {"b": 2}),
    ]
    assert len(set(prints())) == 3


@pytest.mark.parametrize(
    "change",
    [
        {"sigmas": (1.0, 0.5, 0.0)},
        {"nag": False},
        {"nag_scale": 3.0},
        {"nag_alpha": 0.5},
        {"nag_tau": 2.0},
        {"dtype": "bfloat16"},
    ],
)
def test_a_sampling_setting_invalidates_every_window(change: dict) -> None:
    before, after = prints(), prints(dataclasses.replace(SETTINGS, **change))
    assert all(a != b for a, b in zip(before, after, strict=True))


def test_the_seed_invalidates_every_window() -> None:
    reseeded = make_plan(6.4, fps=25, width=64, height=64, window_s=3.56, overlap_s=1.64, seed=1)
    assert all(a != b for a, b in zip(prints(), prints(plan=reseeded), strict=True))


@pytest.mark.parametrize(
    "change", [{"adain": 0.5}, {"adain_per_frame": True}, {"per_step_adain": (0.3,)}, {"context": "pixel"}]
)
def test_a_setting_of_later_windows_keeps_window_0(change: dict) -> None:
    before, after = prints(), prints(dataclasses.replace(SETTINGS, **change))
    assert before[0] == after[0]
    assert before[1] != after[1] and before[2] != after[2]


@pytest.mark.parametrize(
    "change", [{"crf": 30}, {"preset": "ultrafast"}, {"device": "cuda"}, {"image_crf": 0}, {"model": "/x"}]
)
def test_settings_that_do_not_shape_latents_keep_every_window(change: dict) -> None:
    # the image CRF and the model's location enter through the image hash and the model revision instead
    assert prints() == prints(dataclasses.replace(SETTINGS, **change))


@pytest.mark.parametrize("part", ["negative", "audio", "image", "revision"])
def test_every_content_hash_enters_the_fingerprint(part: str) -> None:
    assert all(a != b for a, b in zip(prints(), prints(**{part: "other"}), strict=True))


def test_a_changed_prompt_invalidates_its_window_and_the_ones_after() -> None:
    before, after = prints(prompts=("a", "a", "b")), prints(prompts=("a", "c", "b"))
    assert before[0] == after[0]
    assert before[1] != after[1] and before[2] != after[2]


def test_tensor_hash_sees_values_shape_and_dtype() -> None:
    x = torch.arange(6, dtype=torch.float32)
    assert tensor_hash(x) == tensor_hash(x.clone())
    assert tensor_hash(x) != tensor_hash(x.reshape(2, 3))
    assert tensor_hash(x) != tensor_hash(x.double())
    assert tensor_hash(x) != tensor_hash(x + 1)


@pytest.mark.parametrize(
    ("valid", "resume", "start"),
    [
        ([True, True, False, True], True, 2),
        ([True, True, True], True, 3),
        ([False, True], True, 0),
        ([True, True, True], False, 0),
        ([], True, 0),
    ],
)
def test_resume_starts_at_the_first_invalid_window(valid: list[bool], resume: bool, start: int) -> None:
    assert resume_start(valid, resume) == start


def test_parse_windows() -> None:
    assert parse_windows("3,7", 8) == (3, 7)
    assert parse_windows(" 7, 3,3 ", 8) == (3, 7)
    for text in ("x", "", "1.5"):
        with pytest.raises(SettingsError, match="--only-windows"):
            parse_windows(text, 8)
    with pytest.raises(SettingsError, match="window 8 does not exist; this render has windows 0–7"):
        parse_windows("2,8", 8)


def test_only_windows_starts_at_the_first_listed_and_needs_every_earlier_window() -> None:
    assert only_windows_start((3, 7), [True, True, True, False, False, False, False, False], Path("w")) == 3
    assert only_windows_start((0,), [False, False], Path("w")) == 0
    with pytest.raises(InputError, match="window 1 is missing or unreadable in w"):
        only_windows_start((3,), [True, False, True, True], Path("w"))


def test_cache_dir_precedence(tmp_path: Path) -> None:
    assert cache_dir({"AUDIOLOOP_CACHE_DIR": str(tmp_path), "XDG_CACHE_HOME": "/x"}) == tmp_path
    assert cache_dir({"XDG_CACHE_HOME": str(tmp_path)}) == tmp_path / "audioloop"
    assert cache_dir({}) == Path.home() / ".cache" / "audioloop"


def latents(seed: int = 0) -> torch.Tensor:
    return torch.randn(SHAPE, generator=torch.Generator().manual_seed(seed))


def test_saved_windows_load_back_exactly_and_survive_a_reopen(tmp_path: Path) -> None:
    work = WorkDir(tmp_path / "w")
    work.save(0, latents(0), "fp0", {"prompt": "a"})
    work.save(1, latents(1), "fp1", {"prompt": "b"})
    reopened = WorkDir(tmp_path / "w")
    assert torch.equal(reopened.load(1, SHAPE), latents(1))
    assert reopened.valid(0, "fp0", SHAPE) and reopened.valid(1, "fp1", SHAPE)
    assert reopened.stored() == 2
    manifest = json.loads((tmp_path / "w" / MANIFEST).read_text())
    assert [(e["index"], e["fingerprint"], e["prompt"]) for e in manifest["windows"]] == [
        (0, "fp0", "a"),
        (1, "fp1", "b"),
    ]
    assert sorted(p.name for p in (tmp_path / "w").iterdir()) == [
        MANIFEST,
        "window_000.safetensors",
        "window_001.safetensors",
    ]


def test_a_window_is_invalid_when_missing_stale_unreadable_misshapen_or_not_finite(tmp_path: Path) -> None:
    work = WorkDir(tmp_path)
    assert not work.valid(0, "fp", SHAPE)
    work.save(0, latents(), "fp", {})
    assert work.valid(0, "fp", SHAPE)
    assert not work.valid(0, "other", SHAPE)
    assert not work.valid(0, "fp", (1, 8, 13, 2, 2))
    work.save(1, latents().fill_(float("nan")), "fp", {})
    assert not work.valid(1, "fp", SHAPE)
    work.window_path(0).write_bytes(b"not safetensors")
    assert not work.valid(0, "fp", SHAPE)
    work.save(0, latents(), "fp", {})
    work.window_path(0).unlink()
    assert not work.valid(0, "fp", SHAPE)


def test_an_unreadable_manifest_counts_as_an_empty_work_dir(tmp_path: Path) -> None:
    WorkDir(tmp_path).save(0, latents(), "fp", {})
    (tmp_path / MANIFEST).write_text("{ not json")
    assert WorkDir(tmp_path).stored() == 0


def test_forget_from_drops_later_windows_from_manifest_and_disk(tmp_path: Path) -> None:
    work = WorkDir(tmp_path)
    for index in range(3):
        work.save(index, latents(index), f"fp{index}", {})
    work.forget_from(1)
    assert work.stored() == 1
    assert not work.window_path(1).exists() and not work.window_path(2).exists()
    assert WorkDir(tmp_path).stored() == 1


def test_an_interrupted_save_leaves_the_previous_window_and_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    work = WorkDir(tmp_path)
    work.save(0, latents(0), "fp", {})

    def interrupted(tensors: dict, path: Path) -> None:
        Path(path).write_bytes(b"half a file")
        raise KeyboardInterrupt

    monkeypatch.setattr("audioloop.workdir.save_file", interrupted)
    with pytest.raises(KeyboardInterrupt):
        work.save(0, latents(1), "fp-new", {})
    assert torch.equal(WorkDir(tmp_path).load(0, SHAPE), latents(0))
    assert WorkDir(tmp_path).stored_fingerprint(0) == "fp"
    assert sorted(p.name for p in tmp_path.iterdir()) == [MANIFEST, "window_000.safetensors"]


def test_an_unwritable_work_dir_is_an_input_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(InputError, match="cannot create the work dir"):
        WorkDir(blocker / "work")


def test_fp8_changes_the_fingerprints_and_compile_attention_offload_do_not() -> None:
    assert prints(dataclasses.replace(SETTINGS, fp8=True)) != prints()
    speed_only = dataclasses.replace(SETTINGS, compile=True, attention="flash", offload=True)
    assert prints(speed_only) == prints(dataclasses.replace(SETTINGS, compile=False)) == prints()
