"""Prompt schedule (DESIGN §3): time formats, validation messages, snapping to windows, the example files."""

from __future__ import annotations

import itertools
import math
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from audioloop.errors import InputError
from audioloop.plan import Plan, make_plan
from audioloop.schedule import (
    Entry,
    Schedule,
    WindowPrompt,
    assign_prompts,
    format_time,
    join_prompt,
    load_schedule,
    nearest_window,
    parse_time,
)

PROMPTS = Path(__file__).resolve().parents[1] / "prompts"
BASE = {"fps": 25.0, "width": 832, "height": 480, "window_s": 19.88, "overlap_s": 2.0}
# At 32 fps a 448-frame stride is exactly 14 s: window starts 0, 14, 28, … and midpoints 7, 21, … are exact.
DYADIC = {"fps": 32.0, "width": 832, "height": 480, "window_s": 497 / 32, "overlap_s": 49 / 32}


def write(tmp_path: Path, text: str, name: str = "song.yaml") -> Path:
    """Write a schedule file and return its path."""
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def schedule_of(*times: float, subject: str = "", style: str = "") -> Schedule:
    """An in-memory schedule with prompt 'p<i>' at each time."""
    entries = tuple(Entry(i, t, f"p{i}") for i, t in enumerate(times))
    return Schedule(Path("s.yaml"), subject, style, None, entries)


def entries_by_window(schedule: Schedule, plan: Plan) -> list[int]:
    """The entry index each window renders with."""
    prompts, _ = assign_prompts(schedule, plan)
    return [p.entry for p in prompts]


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("1:02.5", 62.5),
        ("1:00:00", 3600.0),
        (90, 90.0),
        ("0:05", 5.0),
        ("0:00", 0.0),
        (0, 0.0),
        (2.5, 2.5),
        ("90", 90.0),
        ("12.25", 12.25),
        ("3:15", 195.0),
        ("0:03:15", 195.0),
        ("1:02:03.5", 3723.5),
        ("12:00", 720.0),
        (" 0:18.5 ", 18.5),
        ("-0", 0.0),
    ],
)
def test_parse_time(value: str | float, seconds: float) -> None:
    parsed = parse_time(value)
    assert parsed == seconds
    assert isinstance(parsed, float)


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("1:5", "is not m:ss"),
        ("1:60", "is not m:ss"),
        ("1:02:60", "is not m:ss"),
        ("1:02:03:04", "is not m:ss"),
        ("1::02", "is not m:ss"),
        ("abc", "is not m:ss"),
        ("", "is not m:ss"),
        ("1:02.", "is not m:ss"),
        ("-0:05", "is negative"),
        (-3, "is negative"),
        (-0.5, "is negative"),
        (math.nan, "not a finite number"),
        (math.inf, "not a finite number"),
        (True, "is not a time"),
        (None, "is not a time"),
        ([1, 2], "is not a time"),
    ],
)
def test_parse_time_rejects(value: object, reason: str) -> None:
    with pytest.raises(ValueError, match=re.escape(reason)):
        parse_time(value)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.0, "0:00"),
        (5.0, "0:05"),
        (62.5, "1:02.50"),
        (195.0, "3:15"),
        (3600.0, "1:00:00"),
        (3723.5, "1:02:03.50"),
    ],
)
def test_format_time(seconds: float, text: str) -> None:
    assert format_time(seconds) == text


@given(st.integers(0, 10 * 3600 * 100))
def test_format_then_parse_round_trips(hundredths: int) -> None:
    assert parse_time(format_time(hundredths / 100)) == pytest.approx(hundredths / 100, abs=1e-9)


@pytest.mark.parametrize(
    ("parts", "text"),
    [
        (
            ("A woman in a red coat,", "is singing.", "Static camera."),
            "A woman in a red coat, is singing. Static camera.",
        ),
        (
            ("A woman in a red coat", "She is singing", "Static camera"),
            "A woman in a red coat. She is singing. Static camera",
        ),
        (("", "is singing.", ""), "is singing."),
        (
            ("A man,\n  smiling,", "  is   humming  ", ".Static camera."),
            "A man, smiling, is humming. Static camera.",
        ),
        (("She is singing.", ". Warm light."), "She is singing. Warm light."),
        (("She is laughing!", "Static camera."), "She is laughing! Static camera."),
        (("   ", "is singing", ""), "is singing"),
    ],
)
def test_join_prompt(parts: tuple[str, ...], text: str) -> None:
    assert join_prompt(*parts) == text
    assert "  " not in join_prompt(*parts) and ".." not in join_prompt(*parts)


def test_load_full_schedule(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
subject: >-
  A young man with curly black hair and a green corduroy jacket,
style: "Static camera. Style: cinematic."
negative: "blurry, distorted face"
schedule:
  - at: "0:00"
    prompt: is tapping his foot.
  - at: 1:30            # unquoted: YAML itself reads this as 90
    prompt: |
      is singing the chorus,
      eyes closed.
  - {at: 120.5, prompt: is smiling.}
  - at: "0:03:15"
    prompt: "is bowing his head."
""",
    )
    schedule = load_schedule(str(path))
    assert schedule.path == path
    assert schedule.subject == "A young man with curly black hair and a green corduroy jacket,"
    assert schedule.style == "Static camera. Style: cinematic."
    assert schedule.negative == "blurry, distorted face"
    assert schedule.entries == (
        Entry(0, 0.0, "is tapping his foot."),
        Entry(1, 90.0, "is singing the chorus, eyes closed."),
        Entry(2, 120.5, "is smiling."),
        Entry(3, 195.0, "is bowing his head."),
    )
    assert schedule.prompt_text(schedule.entries[1]) == (
        "A young man with curly black hair and a green corduroy jacket, is singing the chorus, eyes closed. "
        "Static camera. Style: cinematic."
    )


def test_lowercase_style_is_its_own_sentence(tmp_path: Path) -> None:
    text = "subject: A woman\nstyle: warm stage light, static camera\n"
    text += "schedule:\n  - {at: 0, prompt: is swaying}\n"
    schedule = load_schedule(write(tmp_path, text))
    assert schedule.prompt_text(schedule.entries[0]) == "A woman is swaying. Warm stage light, static camera"


def test_minimal_schedule_has_no_subject_style_or_negative(tmp_path: Path) -> None:
    schedule = load_schedule(write(tmp_path, "schedule:\n  - {at: 0, prompt: She is singing.}\n"))
    assert (schedule.subject, schedule.style, schedule.negative) == ("", "", None)
    assert schedule.prompt_text(schedule.entries[0]) == "She is singing."


def test_null_fields_count_as_absent(tmp_path: Path) -> None:
    schedule = load_schedule(write(tmp_path, "subject:\nnegative:\nschedule:\n  - {at: 0, prompt: x}\n"))
    assert (schedule.subject, schedule.negative) == ("", None)


@pytest.mark.parametrize("name", ["indie_ballad.yaml", "synth_pop.yaml"])
def test_example_schedules_follow_the_prompting_rules(name: str) -> None:
    schedule = load_schedule(PROMPTS / name)
    assert len(schedule.entries) >= 6
    assert schedule.entries[0].at == 0.0
    assert schedule.subject and schedule.negative
    assert "Static camera" in schedule.style
    for entry in schedule.entries:
        text = schedule.prompt_text(entry).lower()
        assert re.match(r"(is|are) \w+ing\b", entry.prompt), entry.prompt
        for meta in ("scene", "video shows", "cut to", "the shot", "dolly out", "zoom"):
            assert meta not in text, (entry.index, meta)
        assert "light" in text


@pytest.mark.parametrize(("name", "song"), [("indie_ballad.yaml", 210.0), ("synth_pop.yaml", 180.0)])
def test_example_schedules_use_every_entry_without_warnings(name: str, song: float) -> None:
    schedule = load_schedule(PROMPTS / name)
    prompts, warnings = assign_prompts(schedule, make_plan(song, **BASE))
    assert warnings == ()
    assert {p.entry for p in prompts} == {e.index for e in schedule.entries}


def test_example_schedules_use_mixed_time_formats() -> None:
    raw = (PROMPTS / "indie_ballad.yaml").read_text() + (PROMPTS / "synth_pop.yaml").read_text()
    assert re.search(r'at: "\d+:\d\d"', raw)
    assert re.search(r'at: "\d+:\d\d\.\d+"', raw)
    assert re.search(r'at: "\d+:\d\d:\d\d"', raw)
    assert re.search(r"at: \d+\n", raw)


ERRORS = [
    ("[1, 2]", "expected a mapping with a 'schedule:' list"),
    ("", "expected a mapping with a 'schedule:' list"),
    ("just text", "expected a mapping"),
    ("schedul:\n  - {at: 0, prompt: x}\n", "unknown key 'schedul' (did you mean 'schedule'?)"),
    ("Subject: x\nschedule:\n  - {at: 0, prompt: x}\n", "unknown key 'Subject' (did you mean 'subject'?)"),
    ("colour: red\nschedule:\n  - {at: 0, prompt: x}\n", "unknown key 'colour' (allowed keys are subject"),
    ("subject: x\n", "schedule: expected a non-empty list"),
    ("schedule: []\n", "schedule: expected a non-empty list"),
    ("schedule: {at: 0, prompt: x}\n", "schedule: expected a non-empty list"),
    ("subject: [a, b]\nschedule:\n  - {at: 0, prompt: x}\n", "subject: expected text"),
    ("negative: 3\nschedule:\n  - {at: 0, prompt: x}\n", "negative: expected text"),
]


@pytest.mark.parametrize(("text", "needle"), ERRORS)
def test_file_level_errors(tmp_path: Path, text: str, needle: str) -> None:
    path = write(tmp_path, text, "broken.yaml")
    with pytest.raises(InputError) as caught:
        load_schedule(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: ")
    assert needle in message
    assert "\n" not in message


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputError) as caught:
        load_schedule(tmp_path / "nope.yaml")
    assert str(caught.value) == (
        f"{tmp_path / 'nope.yaml'}: schedule file not found (pass an existing YAML file to --schedule)"
    )


def test_directory_is_not_a_schedule(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="cannot read the schedule"):
        load_schedule(tmp_path)


def test_invalid_yaml_names_the_line(tmp_path: Path) -> None:
    path = write(
        tmp_path, "schedule:\n  - at: 0\n    prompt: is singing\n  - at: 1:00\n   prompt: bad indent\n"
    )
    with pytest.raises(InputError) as caught:
        load_schedule(path)
    assert str(caught.value).startswith(f"{path}: line 5, column ")
    assert "invalid YAML" in str(caught.value)


def test_unquoted_colon_in_text_is_explained(tmp_path: Path) -> None:
    path = write(tmp_path, "style: Static camera. Style: cinematic\nschedule:\n  - {at: 0, prompt: x}\n")
    with pytest.raises(InputError, match=r"line 1, column 28: invalid YAML: mapping values .*quote text"):
        load_schedule(path)


def test_duplicate_key_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, "schedule:\n  - at: 0\n    prompt: one\n    prompt: two\n")
    with pytest.raises(InputError, match=r"line 4, column 5: invalid YAML: duplicate key 'prompt'"):
        load_schedule(path)


ENTRY_ERRORS = [
    ("- {at: 0, prompt: x}\n  - just text\n", 1, 3, "expected a mapping like"),
    ("- {at: 0, promt: x}\n", 0, 2, "unknown key 'promt' (did you mean 'prompt'?)"),
    (
        "- {at: 0, prompt: x}\n  - {time: 5, prompt: y}\n",
        1,
        3,
        "unknown key 'time' (allowed keys are at, prompt)",
    ),
    ("- {at: 0, prompt: x}\n  - {prompt: y}\n", 1, 3, "missing 'at'"),
    ("- {at: 0}\n", 0, 2, "missing 'prompt'"),
    ("- {at: 0, prompt: x}\n  - {at: '1:5', prompt: y}\n", 1, 3, "time '1:5' is not m:ss"),
    ("- {at: 0, prompt: x}\n  - {at: soon, prompt: y}\n", 1, 3, "time 'soon' is not m:ss"),
    ("- {at: 0, prompt: x}\n  - {at: -4, prompt: y}\n", 1, 3, "time -4 is negative"),
    ("- {at: 0, prompt: x}\n  - {at: '-0:04', prompt: y}\n", 1, 3, "time '-0:04' is negative"),
    ("- {at: 0, prompt: x}\n  - {at: yes, prompt: y}\n", 1, 3, "time True is not a time"),
    ("- {at: 0, prompt: ''}\n", 0, 2, "prompt '' is empty or not text"),
    ("- {at: 0, prompt: '   '}\n", 0, 2, "is empty or not text"),
    ("- {at: 0, prompt: 42}\n", 0, 2, "prompt 42 is empty or not text"),
    ("- {at: 0, prompt: }\n", 0, 2, "prompt None is empty or not text"),
    ("- {at: '0:05', prompt: x}\n", 0, 2, "the first entry is at 0:05, not 0:00; add an entry at 0:00"),
    (
        "- {at: 0, prompt: x}\n  - {at: 30, prompt: y}\n  - {at: 20, prompt: z}\n",
        2,
        4,
        "time 0:20 is not after entry 1 at 0:30; sort the entries by time",
    ),
    (
        "- {at: 0, prompt: x}\n  - {at: '0:30', prompt: y}\n  - {at: 30, prompt: z}\n",
        2,
        4,
        "time 0:30 is not after entry 1 at 0:30",
    ),
]


@pytest.mark.parametrize(("items", "index", "line", "reason"), ENTRY_ERRORS)
def test_entry_errors(tmp_path: Path, items: str, index: int, line: int, reason: str) -> None:
    path = write(tmp_path, "schedule:\n  " + items, "clip.yaml")
    with pytest.raises(InputError) as caught:
        load_schedule(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: entry {index} (line {line}): ")
    assert reason in message
    assert "\n" not in message
    assert caught.value.exit_code == 1


def test_assign_over_a_real_plan() -> None:
    plan = make_plan(210.0, **BASE)  # windows start at 0, 17.92, 35.84, 53.76, 71.68, 89.6, 107.52, …
    schedule = schedule_of(0, 18.5, 55, 80, 110, subject="A woman,", style="Static camera.")
    prompts, warnings = assign_prompts(schedule, plan)
    # 80 is 8.32 s after 71.68 and 9.6 s before 89.6: it snaps to window 4
    assert [p.entry for p in prompts] == [0, 1, 1, 2, 3, 3, 4, 4, 4, 4, 4, 4]
    assert prompts[4] == WindowPrompt(4, 3, "A woman, p3. Static camera.")
    assert [p.window for p in prompts] == list(range(12))
    assert warnings == ()


def test_exact_midpoint_snaps_to_the_later_window() -> None:
    plan = make_plan(56.0, **DYADIC)
    assert [w.song_start for w in plan.windows] == [0.0, 14.0, 28.0, 42.0]
    assert entries_by_window(schedule_of(0, 7.0), plan) == [0, 1, 1, 1]
    assert entries_by_window(schedule_of(0, 21.0), plan) == [0, 0, 1, 1]
    assert entries_by_window(schedule_of(0, 20.999), plan) == [0, 1, 1, 1]
    assert entries_by_window(schedule_of(0, 14.0, 35.0), plan) == [0, 1, 1, 2]


def test_midpoint_at_25_fps() -> None:
    plan = make_plan(60.0, **BASE)
    assert entries_by_window(schedule_of(0, 8.96), plan) == [0, 1, 1, 1]


def test_nearest_window() -> None:
    starts = (0.0, 14.0, 28.0)
    assert [nearest_window(t, starts) for t in (-5.0, 6.99, 7.0, 20.9, 21.0, 99.0)] == [0, 0, 1, 1, 2, 2]


def test_shadowed_entry_warns_with_window_and_time() -> None:
    plan = make_plan(56.0, **DYADIC)
    prompts, warnings = assign_prompts(schedule_of(0, 12.0, 16.0), plan)
    assert [p.entry for p in prompts] == [0, 2, 2, 2]
    assert warnings == (
        "s.yaml: entry 1 at 0:12 is never used: entry 2 at 0:16 snaps to the same window 1 (starts 0:14); "
        "a window renders one prompt: drop one or move it to another window",
    )


def test_entry_near_zero_shadows_the_first_entry() -> None:
    plan = make_plan(56.0, **DYADIC)
    prompts, warnings = assign_prompts(schedule_of(0, 3.0), plan)
    assert [p.entry for p in prompts] == [1, 1, 1, 1]
    assert len(warnings) == 1 and "entry 0 at 0:00 is never used" in warnings[0] and "window 0" in warnings[0]


def test_entries_at_or_after_the_range_end_warn_and_are_ignored() -> None:
    plan = make_plan(56.0, **DYADIC)
    prompts, warnings = assign_prompts(schedule_of(0, 30.0, 55.99, 56.0, 75.0), plan)
    assert [p.entry for p in prompts] == [
        0,
        0,
        1,
        2,
    ]  # 55.99 is past the last window start: it takes window 3
    assert warnings == (
        "s.yaml: entry 3 at 0:56 is at or after the end of the rendered range (0:56) and is never used; "
        "remove it, or raise --duration if the song goes on",
        "s.yaml: entry 4 at 1:15 is at or after the end of the rendered range (0:56) and is never used; "
        "remove it, or raise --duration if the song goes on",
    )


def test_range_end_uses_start_plus_duration() -> None:
    plan = make_plan(200.0, **DYADIC, start=10.0, duration=20.0)
    _, warnings = assign_prompts(schedule_of(0, 29.0, 30.0), plan)
    assert [w.song_start for w in plan.windows] == [10.0, 24.0]
    assert len(warnings) == 1
    assert "entry 2 at 0:30 is at or after the end of the rendered range (0:30)" in warnings[0]


def test_start_after_zero_takes_the_entry_in_force_at_start() -> None:
    plan = make_plan(200.0, **DYADIC, start=30.0)  # windows start 30, 44, 58, …
    prompts, warnings = assign_prompts(schedule_of(0, 20.0, 45.0), plan)
    assert [p.entry for p in prompts[:4]] == [1, 2, 2, 2]
    assert warnings == ()  # entry 0 was replaced before --start: the skipped intro, not a conflict


def test_entry_after_start_that_snaps_to_window_0_warns() -> None:
    plan = make_plan(200.0, **DYADIC, start=30.0)
    prompts, warnings = assign_prompts(schedule_of(0, 20.0, 35.0), plan)
    assert [p.entry for p in prompts[:2]] == [2, 2]
    assert warnings == (
        "s.yaml: entry 1 at 0:20 is never used: entry 2 at 0:35 snaps to the same window 0 (starts 0:30); "
        "a window renders one prompt: drop one or move it to another window",
    )


def test_single_window_plan_takes_the_last_entry_before_its_end() -> None:
    plan = make_plan(3.0, **BASE)
    prompts, warnings = assign_prompts(schedule_of(0, 1.0, 2.0), plan)
    assert prompts == (WindowPrompt(0, 2, "p2"),)
    assert len(warnings) == 2


TIMES = st.lists(st.floats(0.01, 400.0), max_size=12, unique=True).map(lambda ts: [0.0, *sorted(ts)])
PLANS = st.builds(
    lambda song, start, overlap: make_plan(
        song, **{**DYADIC, "overlap_s": overlap}, start=min(start, song / 2)
    ),
    st.floats(1.0, 360.0),
    st.one_of(st.just(0.0), st.floats(0.0, 120.0)),
    st.sampled_from([1 / 32, 49 / 32, 97 / 32, 145 / 32]),
)


def reference_entries(times: list[float], plan: Plan) -> list[int]:
    """Brute force: snap each usable entry to the closest window start (later on ties), take the latest."""
    starts = [w.song_start for w in plan.windows]
    end = plan.start + plan.duration
    snapped = {
        i: min(range(len(starts)), key=lambda w, t=t: (abs(t - starts[w]), -w))
        for i, t in enumerate(times)
        if t < end
    }
    return [max(i for i, w in snapped.items() if w <= window) for window in range(len(starts))]


@settings(max_examples=200, deadline=None)
@given(TIMES, PLANS)
def test_every_window_gets_exactly_one_prompt(times: list[float], plan: Plan) -> None:
    schedule = schedule_of(*times)
    prompts, warnings = assign_prompts(schedule, plan)
    assert [p.window for p in prompts] == [w.index for w in plan.windows]
    assert [p.entry for p in prompts] == reference_entries(times, plan)
    assert all(p.prompt == schedule.prompt_text(schedule.entries[p.entry]) for p in prompts)
    used = [p.entry for p in prompts]
    assert used == sorted(used)
    assert all(isinstance(w, str) and "\n" not in w for w in warnings)


@settings(max_examples=200, deadline=None)
@given(TIMES, PLANS)
def test_prompts_change_only_at_window_starts_nearest_to_the_entry(times: list[float], plan: Plan) -> None:
    prompts, _ = assign_prompts(schedule_of(*times), plan)
    half_stride = plan.stride_s / 2 + 1e-9
    for before, after in itertools.pairwise(prompts):
        if after.entry != before.entry:
            at = times[after.entry]
            starts = [w.song_start for w in plan.windows]
            start = starts[after.window]
            assert abs(at - start) <= half_stride or at > starts[-1]
            assert all(abs(at - start) <= abs(at - other) for other in starts)
