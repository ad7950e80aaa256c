"""Render progress on stderr: one bar for windows (with ETA) and one for the current window's steps."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from types import TracebackType

import diffusers.utils.logging as diffusers_logging
import transformers.utils.logging as transformers_logging
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class RenderProgress:
    """What the song loop reports; this base class shows nothing (--quiet, tests)."""

    def __enter__(self) -> RenderProgress:
        """Start showing progress."""
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Stop showing progress."""

    def status(self, text: str) -> None:
        """A stage outside the window loop (loading the model, encoding prompts)."""

    def start_window(self, index: int, total: int, sampled: bool) -> None:
        """Window `index` of `total` begins; `sampled` is False when it comes from the work dir."""

    def step(self, done: int, total: int) -> None:
        """`done` of `total` sampling steps of the current window are finished."""

    def end_window(self) -> None:
        """The current window is sampled (or loaded), decoded and queued for encoding."""


class RichProgress(RenderProgress):
    """Two rich progress bars on stderr; `unit` names what the outer bar counts (windows, or tiles)."""

    def __init__(self, console: Console | None = None, unit: str = "window") -> None:
        self._unit = unit
        self._progress = Progress(
            TextColumn("{task.description:<22}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=console or Console(stderr=True),
            transient=False,
        )
        self._windows: TaskID | None = None
        self._steps: TaskID | None = None

    def __enter__(self) -> RichProgress:
        """Start the live display."""
        self._progress.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Stop the live display."""
        self._progress.stop()

    def status(self, text: str) -> None:
        """Show a stage on the windows bar before the loop starts."""
        if self._windows is None:
            self._windows = self._progress.add_task(text, total=None)
        else:
            self._progress.update(self._windows, description=text)

    def start_window(self, index: int, total: int, sampled: bool) -> None:
        """Describe the window on both bars and reset the steps bar."""
        if self._windows is None:
            self._windows = self._progress.add_task("", total=total)
        self._progress.update(self._windows, total=total, description=f"{self._unit} {index + 1}/{total}")
        label = "sampling" if sampled else "from work dir"
        if self._steps is None:
            self._steps = self._progress.add_task(label, total=None)
        self._progress.reset(self._steps, description=label, total=None if sampled else 1)

    def step(self, done: int, total: int) -> None:
        """Move the steps bar."""
        if self._steps is not None:
            self._progress.update(self._steps, completed=done, total=total)

    def end_window(self) -> None:
        """Advance the windows bar."""
        if self._windows is not None:
            self._progress.advance(self._windows)
        if self._steps is not None:
            task = self._progress.tasks[self._steps]
            self._progress.update(self._steps, completed=task.total or 0)


@contextmanager
def silent_libraries() -> Iterator[None]:
    """For --quiet: no diffusers/transformers log lines or loading bars, no Python warnings, in the block."""
    modules = (diffusers_logging, transformers_logging)
    saved = [(m.get_verbosity(), m.is_progress_bar_enabled()) for m in modules]
    for module in modules:
        module.set_verbosity(logging.ERROR)
        module.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for module, (verbosity, bars) in zip(modules, saved, strict=True):
            module.set_verbosity(verbosity)
            if bars:
                module.enable_progress_bar()
