"""What the user asked for, parsed and planned: the song probed, its windows planned, the schedule's prompts
assigned. No model and no diffusers import, so `audioloop plan` stays light; `job.prepare` takes it from here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from audioloop.config import Settings
from audioloop.errors import InputError
from audioloop.media.audio import probe_audio
from audioloop.plan import Plan, make_plan
from audioloop.schedule import Schedule, WindowPrompt, assign_prompts, load_schedule


@dataclass(frozen=True)
class RenderRequest:
    """What the user asked for: inputs already parsed and planned, settings resolved."""

    song: Path
    image: Path
    schedule: Schedule
    plan: Plan
    prompts: tuple[WindowPrompt, ...]
    settings: Settings
    output: Path | None = None
    work_dir: Path | None = None
    resume: bool = True
    only_windows: str | None = None


def require_file(path: Path, what: str, fix: str) -> Path:
    """A missing input is an input error (exit 1), not a usage error."""
    if not path.is_file():
        raise InputError(f"{path}: {what} not found; {fix}")
    return path


def plan_song(song: Path, schedule_path: Path, settings: Settings) -> dict[str, Any]:
    """Probe the song, plan its windows and assign their prompts; no model is touched."""
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


def request_for(
    song: Path,
    image: Path,
    schedule_path: Path,
    settings: Settings,
    *,
    image_fix: str = "pass the hero image with --image",
    **options: Any,
) -> tuple[RenderRequest, list[str]]:
    """A render request from user inputs (image checked, song planned), with the planning warnings;
    `options` are RenderRequest's output, work_dir, resume and only_windows."""
    require_file(image, "image", image_fix)
    planned = plan_song(song, schedule_path, settings)
    request = RenderRequest(
        song=song,
        image=image,
        schedule=planned["schedule"],
        plan=planned["plan"],
        prompts=planned["prompts"],
        settings=settings,
        **options,
    )
    return request, planned["warnings"]
