"""Prompt schedule: parse and validate the YAML, snap entries to the window grid, pick window prompts."""

from __future__ import annotations

import difflib
import itertools
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from audioloop.errors import InputError
from audioloop.plan import Plan

TOP_KEYS = ("subject", "style", "negative", "schedule")
ENTRY_KEYS = ("at", "prompt")
_SECONDS = re.compile(r"\d+(?:\.\d+)?")
_CLOCK = re.compile(r"(?:(\d+):([0-5]\d)|(\d+)):([0-5]\d(?:\.\d+)?)")
_END_PUNCT = ".!?,;:"


@dataclass(frozen=True)
class Entry:
    """One schedule entry: its position in the list (from 0), song-file time in seconds and prompt."""

    index: int
    at: float
    prompt: str


@dataclass(frozen=True)
class Schedule:
    """A validated schedule: identity anchor, style suffix, optional NAG negative and time-ordered entries."""

    path: Path
    subject: str
    style: str
    negative: str | None
    entries: tuple[Entry, ...]

    def prompt_text(self, entry: Entry) -> str:
        """The full prompt the model sees for entry: subject and the entry's prompt as one sentence, then
        the style as a sentence of its own (capitalised, so join_prompt ends the sentence before it)."""
        style = _clean(self.style)
        return join_prompt(self.subject, entry.prompt, style[:1].upper() + style[1:])


@dataclass(frozen=True)
class WindowPrompt:
    """The schedule entry a window renders with, and its full prompt text."""

    window: int
    entry: int
    prompt: str


def _clean(text: str) -> str:
    """Collapse every whitespace run (YAML block scalars keep newlines) to one space."""
    return " ".join(text.split())


def join_prompt(*parts: str) -> str:
    """Join prompt parts with single spaces, adding a full stop only where a new sentence would run on."""
    text = ""
    for part in (_clean(p) for p in parts):
        if text and part.startswith("."):
            part = part.lstrip(". ")
        if not part:
            continue
        if text and text[-1] not in _END_PUNCT and part[0].isupper():
            text += "."
        text = f"{text} {part}" if text else part
    return text


def format_time(seconds: float) -> str:
    """Seconds as m:ss.ff (h:mm:ss.ff from an hour on), for messages."""
    sign = "-" if seconds < 0 else ""
    hundredths = round(abs(seconds) * 100)
    minutes, centis = divmod(hundredths, 6000)
    hours, minutes = divmod(minutes, 60)
    secs = f"{centis // 100:02d}" + (f".{centis % 100:02d}" if centis % 100 else "")
    return f"{sign}{hours}:{minutes:02d}:{secs}" if hours else f"{sign}{minutes}:{secs}"


def parse_time(value: str | int | float) -> float:
    """Song position in seconds from "m:ss", "m:ss.ff", "h:mm:ss[.ff]" or a number; ValueError says why."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError(f"time {value!r} is not a time; write it as m:ss or a number of seconds")
    if isinstance(value, str):
        text = value.strip()
        negative = text.startswith("-")
        body = text[1:].strip() if negative else text
        if _SECONDS.fullmatch(body):
            seconds = float(body)
        elif match := _CLOCK.fullmatch(body):
            hours, minutes, lone_minutes, secs = match.groups()
            seconds = int(hours or 0) * 3600 + int(minutes or lone_minutes) * 60 + float(secs)
        else:
            raise ValueError(
                f"time {value!r} is not m:ss, m:ss.ff, h:mm:ss or seconds; write e.g. 1:05 or 65"
            )
        seconds = -seconds if negative else seconds
    else:
        seconds = float(value)
        if not math.isfinite(seconds):
            raise ValueError(f"time {value!r} is not a finite number; write e.g. 1:05 or 65")
    if seconds < 0:
        raise ValueError(f"time {value!r} is negative; times are song positions from 0:00")
    return seconds + 0.0


def _fail(path: Path, where: str, problem: str) -> InputError:
    """One-line InputError 'FILE: where: problem (fix)'."""
    return InputError(f"{path}: {where}: {problem}" if where else f"{path}: {problem}")


def _unknown_key(key: Any, allowed: tuple[str, ...]) -> str:
    """'unknown key X' with the closest allowed key as the fix."""
    close = difflib.get_close_matches(str(key).lower(), allowed, n=1, cutoff=0.5)
    fix = f"did you mean {close[0]!r}?" if close else f"allowed keys are {', '.join(allowed)}"
    return f"unknown key {key!r} ({fix})"


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key repeated in one mapping (PyYAML silently keeps the last one)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        """Construct the mapping after checking that no scalar key appears twice."""
        seen: set[str] = set()
        for key, _ in node.value:
            if isinstance(key, yaml.ScalarNode) and key.value != "<<":
                if key.value in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key.value!r}, keep only one", key.start_mark
                    )
                seen.add(key.value)
        return super().construct_mapping(node, deep=deep)


def _read_yaml(path: Path) -> tuple[Any, list[int]]:
    """The parsed document and the 1-based line of each `schedule:` item (empty where there is none)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise _fail(path, "", "schedule file not found (pass an existing YAML file to --schedule)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise _fail(path, "", f"cannot read the schedule ({exc}); pass a readable UTF-8 YAML file") from None
    loader = _StrictLoader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = _clean(str(getattr(exc, "problem", None) or exc))
        raise _fail(
            path, where, f"invalid YAML: {problem} (fix the syntax; quote text with colons)"
        ) from None
    finally:
        loader.dispose()
    return data, _schedule_lines(node)


def _schedule_lines(node: yaml.Node | None) -> list[int]:
    """1-based source line of each item of the top-level `schedule` sequence, for error messages."""
    if not isinstance(node, yaml.MappingNode):
        return []
    for key, value in node.value:
        if key.value == "schedule" and isinstance(value, yaml.SequenceNode):
            return [item.start_mark.line + 1 for item in value.value]
    return []


def _text(path: Path, data: dict[str, Any], key: str) -> str | None:
    """An optional top-level text field with its whitespace collapsed; None when absent or null."""
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise _fail(path, key, f"expected text, got {value!r} (write it as a quoted string)")
    return _clean(value)


def _where(index: int, lines: list[int]) -> str:
    """'entry N (line L)' for messages; entries count from 0 like windows, the line from 1."""
    return f"entry {index} (line {lines[index]})" if index < len(lines) else f"entry {index}"


def _entry(path: Path, index: int, where: str, raw: Any) -> Entry:
    """Validate one `schedule:` item into an Entry, or InputError naming the entry and the fix."""
    if not isinstance(raw, dict):
        raise _fail(path, where, f"expected a mapping like {{at: '0:00', prompt: ...}}, got {raw!r}")
    for key in raw:
        if key not in ENTRY_KEYS:
            raise _fail(path, where, _unknown_key(key, ENTRY_KEYS))
    for key in ENTRY_KEYS:
        if key not in raw:
            raise _fail(path, where, f"missing '{key}' (every entry needs at: and prompt:)")
    try:
        at = parse_time(raw["at"])
    except ValueError as exc:
        raise _fail(path, where, str(exc)) from None
    prompt = raw["prompt"]
    if not isinstance(prompt, str) or not prompt.strip():
        raise _fail(path, where, f"prompt {prompt!r} is empty or not text (write what is happening, quoted)")
    return Entry(index=index, at=at, prompt=_clean(prompt))


def _check_order(path: Path, entries: tuple[Entry, ...], lines: list[int]) -> None:
    """The first entry is at 0:00 and times strictly increase, or InputError saying how to fix it."""
    first = entries[0]
    if first.at != 0:
        raise _fail(
            path,
            _where(0, lines),
            f"the first entry is at {format_time(first.at)}, not 0:00; add an entry at 0:00 "
            "(window 0 starts from it)",
        )
    for before, entry in itertools.pairwise(entries):
        if entry.at <= before.at:
            raise _fail(
                path,
                _where(entry.index, lines),
                f"time {format_time(entry.at)} is not after entry {before.index} at "
                f"{format_time(before.at)}; sort the entries by time and remove duplicates",
            )


def load_schedule(path: str | Path) -> Schedule:
    """Read and validate a YAML prompt schedule; every problem is an InputError naming file, entry and fix."""
    path = Path(path)
    data, lines = _read_yaml(path)
    if not isinstance(data, dict):
        raise _fail(path, "", "expected a mapping with a 'schedule:' list of {at, prompt} entries")
    for key in data:
        if key not in TOP_KEYS:
            raise _fail(path, "", _unknown_key(key, TOP_KEYS))
    raw_entries = data.get("schedule")
    if not isinstance(raw_entries, list) or not raw_entries:
        raise _fail(path, "schedule", "expected a non-empty list of entries like - {at: '0:00', prompt: ...}")
    entries = tuple(_entry(path, i, _where(i, lines), raw) for i, raw in enumerate(raw_entries))
    _check_order(path, entries, lines)
    return Schedule(
        path=path,
        subject=_text(path, data, "subject") or "",
        style=_text(path, data, "style") or "",
        negative=_text(path, data, "negative"),
        entries=entries,
    )


def nearest_window(at: float, starts: tuple[float, ...]) -> int:
    """Index of the window start nearest to at; an exact midpoint goes to the later window."""
    best = 0
    for i, start in enumerate(starts):
        if abs(at - start) <= abs(at - starts[best]):
            best = i
    return best


def assign_prompts(schedule: Schedule, plan: Plan) -> tuple[tuple[WindowPrompt, ...], tuple[str, ...]]:
    """One prompt per window (the entry in force at its snapped start) and warnings about unused entries.

    Each entry snaps to the nearest window start; a window takes the latest entry that snapped to it or to an
    earlier window. Entries at or after the range end are ignored with a warning; an entry that another entry
    snapped to the same window overrides is a warning too, except entries before --start that a later entry
    still before --start replaces (the skipped intro).
    """
    starts = tuple(w.song_start for w in plan.windows)
    end = plan.start + plan.duration
    warnings: list[str] = []
    chosen: dict[int, Entry] = {}
    for entry in schedule.entries:
        if entry.at >= end:
            warnings.append(
                f"{schedule.path}: entry {entry.index} at {format_time(entry.at)} is at or after the end of "
                f"the rendered range ({format_time(end)}) and is never used; "
                "remove it, or raise --duration if the song goes on"
            )
            continue
        window = nearest_window(entry.at, starts)
        shadowed = chosen.get(window)
        if shadowed is not None and entry.at > plan.start:
            warnings.append(
                f"{schedule.path}: entry {shadowed.index} at {format_time(shadowed.at)} is never used: entry "
                f"{entry.index} at {format_time(entry.at)} snaps to the same window {window} (starts "
                f"{format_time(starts[window])}); a window renders one prompt: "
                "drop one or move it to another window"
            )
        chosen[window] = entry
    prompts = []
    current = schedule.entries[0]
    for window in plan.windows:
        current = chosen.get(window.index, current)
        prompts.append(WindowPrompt(window.index, current.index, schedule.prompt_text(current)))
    return tuple(prompts), tuple(warnings)
