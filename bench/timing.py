"""Shared by the benchmark scripts: how repeated timings are summarised in their JSON, and a run that
saves as it goes under a deadline."""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import time
from collections.abc import Callable

import torch


def summary(times: list[float], per: int = 1) -> dict[str, float]:
    """Median, min and max over repeats, divided by per (steps per call), and the count."""
    return {
        "median": statistics.median(times) / per,
        "min": min(times) / per,
        "max": max(times) / per,
        "n": len(times),
    }


class Run:
    """One benchmark run under a deadline (args.deadline seconds, args.out, args.tiny, optional args.skip):
    the results are saved to OUT/<name>.json after every measurement, and a failed or skipped one is
    recorded instead of ending the run, so a device call never loses what it already measured."""

    def __init__(self, args: argparse.Namespace, name: str) -> None:
        """Start the clock and the results record."""
        self.args, self.name, self.start = args, name, time.monotonic()
        self.device = torch.device("cpu" if args.tiny else "cuda")
        self.results: dict = {
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "gpu": torch.cuda.get_device_name() if self.device.type == "cuda" else "cpu",
            "torch": torch.__version__,
            "command": " ".join(sys.argv),
            "failures": {},
        }

    def left(self) -> float:
        """Seconds left before the deadline."""
        return self.args.deadline - (time.monotonic() - self.start)

    def save(self) -> None:
        """Write everything measured so far."""
        self.args.out.mkdir(parents=True, exist_ok=True)
        (self.args.out / f"{self.name}.json").write_text(json.dumps(self.results, indent=2))

    def attempt(self, name: str, fn: Callable[[], object], need: float = 0.0) -> object:
        """Run one measurement; record a failure (or a skip: asked for, or no time left) instead of ending."""
        if name in getattr(self.args, "skip", ()):
            self.results["failures"][name] = "skipped: --skip"
            return None
        if self.left() < need:
            self.results["failures"][name] = f"skipped: {self.left():.0f} s left, needs ~{need:.0f}"
            self.save()
            return None
        print(f"[{time.monotonic() - self.start:6.0f} s] {name}", flush=True)
        try:
            return fn()
        except Exception as exc:  # one broken measurement must not cost the others their device time
            why = f"{type(exc).__name__}: {exc}"
            self.results["failures"][name] = why if len(why) < 3000 else f"{why[:1000]} … {why[-2000:]}"
            print(f"  FAILED {name}: {type(exc).__name__}: {str(exc)[:500]}", flush=True)
            return None
        finally:
            self.save()


def sync(device: torch.device) -> None:
    """Wait for the device (no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_gib(fn: Callable[[], object], device: torch.device) -> float:
    """Peak GPU memory (GiB) allocated during one call of fn (0 off CUDA)."""
    if device.type != "cuda":
        return 0.0
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) / 2**30


def wall(fn: Callable[[], object], device: torch.device) -> float:
    """Host seconds of one call until the device is done (includes any compile it triggers)."""
    sync(device)
    begin = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - begin
