"""Shared by the benchmark scripts: how repeated timings are summarised in their JSON."""

from __future__ import annotations

import statistics


def summary(times: list[float], per: int = 1) -> dict[str, float]:
    """Median, min and max over repeats, divided by per (steps per call), and the count."""
    return {
        "median": statistics.median(times) / per,
        "min": min(times) / per,
        "max": max(times) / per,
        "n": len(times),
    }
