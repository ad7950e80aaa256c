"""The `audioloop` command: gathers options, calls one function, prints the result."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from audioloop import __version__
from audioloop.config import Settings, load_settings
from audioloop.errors import AudioloopError, InputError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Render a lip-synced music video from one song, one image and a prompt schedule (LTX-2.3).",
)
err = Console(stderr=True, highlight=False, soft_wrap=True)

ConfigOpt = Annotated[
    Path | None, typer.Option("--config", "-c", help="YAML settings file (flags override it).")
]
WidthOpt = Annotated[int | None, typer.Option(help="Output width in px, a multiple of 32.")]
HeightOpt = Annotated[int | None, typer.Option(help="Output height in px, a multiple of 32.")]
FpsOpt = Annotated[float | None, typer.Option(help="Frames per second.")]
WindowOpt = Annotated[float | None, typer.Option("--window", help="Window length in seconds (≤ 20.5).")]
OverlapOpt = Annotated[float | None, typer.Option("--overlap", help="Overlap between windows in seconds.")]
StartOpt = Annotated[float | None, typer.Option("--start", help="Skip this many seconds of the song.")]
DurationOpt = Annotated[float | None, typer.Option("--duration", help="Render at most this many seconds.")]
SeedOpt = Annotated[int | None, typer.Option("--seed", help="Base seed; window i uses seed + i.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout.")]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"audioloop {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version and exit.")
    ] = False,
) -> None:
    """audioloop: one song, one image and a prompt schedule in; a music video out."""


def run_or_exit(fn: Callable[[], Any]) -> Any:
    """Run a command body; a user-facing error becomes one line on stderr and its exit code."""
    try:
        return fn()
    except AudioloopError as exc:
        err.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(exc.exit_code) from None


def require_file(path: Path, what: str, fix: str) -> Path:
    """A missing input is an input error (exit 1), not a usage error."""
    if not path.is_file():
        raise InputError(f"{path}: {what} not found; {fix}")
    return path


def warn(messages: tuple[str, ...] | list[str], quiet: bool = False) -> None:
    """Warnings go to stderr so that --json output stays clean."""
    if not quiet:
        for message in messages:
            err.print(f"[yellow]warning:[/] {message}")


def _fmt_time(seconds: float) -> str:
    minutes, secs = divmod(seconds, 60)
    return f"{int(minutes)}:{secs:05.2f}"


def _plan_table(plan: Any, prompts: Any) -> Table:
    table = Table(
        title=f"{len(plan.windows)} windows · {plan.width}×{plan.height} @ {plan.fps:g} fps · "
        f"{plan.win_px} frames ({plan.win_lat} latents) per window · stride {plan.stride_px} frames "
        f"({plan.stride_s:.2f} s) · {plan.total_frames} frames out",
    )
    for name in ("win", "song time", "keeps frames", "seed", "prompt"):
        table.add_column(name, overflow="fold")
    for window, prompt in zip(plan.windows, prompts, strict=True):
        table.add_row(
            str(window.index),
            f"{_fmt_time(window.song_start)}–{_fmt_time(window.song_end)}",
            f"{window.keep_start}–{window.keep_end - 1}",
            str(window.seed),
            f"[dim]#{prompt.entry}[/] {prompt.prompt}",
        )
    return table


def plan_song(song: Path, schedule_path: Path, settings: Settings) -> dict[str, Any]:
    """Probe the song, plan its windows and assign their prompts; no model is touched."""
    from audioloop.media.audio import probe_audio
    from audioloop.plan import make_plan
    from audioloop.schedule import assign_prompts, load_schedule

    require_file(song, "song", "pass the path of an audio file")
    require_file(schedule_path, "schedule", "pass a YAML prompt schedule with --schedule")
    schedule = load_schedule(schedule_path)
    info = probe_audio(song)
    plan = make_plan(
        info.duration,
        fps=settings.fps,
        width=settings.width,
        height=settings.height,
        window_s=settings.window,
        overlap_s=settings.overlap,
        start=settings.start,
        duration=settings.duration,
        seed=settings.seed,
        source=str(song),
    )
    prompts, prompt_warnings = assign_prompts(schedule, plan)
    return {
        "plan": plan,
        "prompts": prompts,
        "schedule": schedule,
        "warnings": [*plan.warnings, *prompt_warnings],
        "song": {"path": str(song), "duration": info.duration, "sample_rate": info.sample_rate},
    }


def plan_json(result: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """The `plan --json` document: song, settings, plan and each window's prompt."""
    plan = result["plan"].to_dict()
    for window, prompt in zip(plan["windows"], result["prompts"], strict=True):
        window["schedule_entry"] = prompt.entry
        window["prompt"] = prompt.prompt
    return {
        "version": __version__,
        "song": result["song"],
        "schedule": str(result["schedule"].path),
        "settings": settings.to_dict(),
        "plan": plan,
        "warnings": result["warnings"],
    }


@app.command()
def plan(
    song: Annotated[Path, typer.Argument(help="The song: any audio file PyAV can read.")],
    schedule: Annotated[Path, typer.Option("--schedule", "-s", help="The prompt schedule (YAML).")],
    config: ConfigOpt = None,
    width: WidthOpt = None,
    height: HeightOpt = None,
    fps: FpsOpt = None,
    window: WindowOpt = None,
    overlap: OverlapOpt = None,
    start: StartOpt = None,
    duration: DurationOpt = None,
    seed: SeedOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Show the window plan and each window's prompt, without rendering."""

    def body() -> None:
        flags = dict(width=width, height=height, fps=fps, window=window, overlap=overlap)
        flags.update(start=start, duration=duration, seed=seed)
        settings = load_settings(config, flags)
        result = plan_song(song, schedule, settings)
        warn(result["warnings"])
        if as_json:
            sys.stdout.write(json.dumps(plan_json(result, settings), indent=2) + "\n")
        else:
            Console().print(_plan_table(result["plan"], result["prompts"]))

    run_or_exit(body)
