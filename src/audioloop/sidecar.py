"""The render sidecar `<output>.json`: what was rendered, from what, with which settings, how long it took."""

from __future__ import annotations

import platform
from collections.abc import Sequence
from dataclasses import asdict
from importlib import metadata
from typing import Any

from audioloop import __version__
from audioloop.decode import STREAM_REACH, DecodeSpan, queue_limit
from audioloop.job import Job
from audioloop.models.accel import AccelSettings
from audioloop.plan import Plan
from audioloop.schedule import WindowPrompt

PACKAGES = ("torch", "diffusers", "transformers", "av")


def versions() -> dict[str, str]:
    """audioloop, Python and the versions of the libraries that shape the output."""
    found = {"audioloop": __version__, "python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def window_table(
    plan: Plan, prompts: Sequence[WindowPrompt], fingerprints: Sequence[str], start: int
) -> list[dict[str, Any]]:
    """One row per window: song time, kept frames, seed, schedule entry, prompt, fingerprint, sampled?"""
    return [
        {
            "index": window.index,
            "seed": window.seed,
            "song_start": window.song_start,
            "song_end": window.song_end,
            "keep_start": window.keep_start,
            "keep_end": window.keep_end,
            "schedule_entry": prompt.entry,
            "prompt": prompt.prompt,
            "fingerprint": print_,
            "sampled": window.index >= start,
        }
        for window, prompt, print_ in zip(plan.windows, prompts, fingerprints, strict=True)
    ]


def accel_table(settings: AccelSettings) -> dict[str, Any]:
    """How the transformer ran, as resolved for the device: compile on or off, attention kernel, FP8
    recipe or None, offload."""
    return asdict(settings)


def decode_table(spans: Sequence[DecodeSpan], queue: int, peak: int, background: bool) -> dict[str, Any]:
    """How the video was decoded: beside sampling or not, the latents a frame waits for, every span and
    the writer's queue limit and peak."""
    return {
        "background": background,
        "reach": STREAM_REACH,
        "spans": [asdict(span) | {"frames": span.frames} for span in spans],
        "writer_max_queued_frames": queue,
        "writer_peak_queued_frames": peak,
    }


def sidecar(job: Job, timings: dict[str, float], peak: int) -> dict[str, Any]:
    """The sidecar document: inputs, settings, model, plan, windows, decode, timings and versions."""
    request, plan = job.request, job.request.plan
    return {
        "output": str(job.output),
        "work_dir": str(job.work.path),
        "inputs": {
            name: {"path": str(path), "sha256": job.hashes[name]}
            for name, path in (
                ("song", request.song),
                ("image", request.image),
                ("schedule", request.schedule.path),
            )
        },
        "settings": request.settings.to_dict(),
        "negative": job.negative,
        "model": {
            "id": request.settings.model,
            "revision": job.revision,
            "dtype": request.settings.dtype,
            "device": str(job.device),
            "accel": accel_table(job.accel),
        },
        "plan": plan.to_dict(),
        "windows": window_table(plan, request.prompts, job.fingerprints, job.start),
        "resumed_from": job.start,
        "decode": decode_table(job.spans, queue_limit(plan, job.spans), peak, job.background),
        "timings": timings,
        "versions": versions(),
    }
