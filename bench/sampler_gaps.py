"""What a sampler step costs beyond its transformer forward: host syncs, and the GPU idle between kernels.

The render's steady FP8 step is 1.63 s of host time while one compiled forward with the same inputs takes
1.52 s of device time (eighth and ninth sessions). This builds the transformer as the render does
(`accel.accelerate`), then for one window ≥ 1 at the render's shape:
- times one forward, a whole window through `sample_window` (NAG on and off, per step) and the host time
  between its step reports;
- runs one window under `torch.cuda.set_sync_debug_mode("warn")` and lists each distinct call site that
  made the host wait for the GPU;
- profiles one window and sums the time the GPU runs no kernel, with the largest gaps and the kernels
  around them.

    python bench/sampler_gaps.py --out $OUT --fp8
    python bench/sampler_gaps.py --out /tmp/g --tiny --width 64 --height 64 --frames 97   # CPU smoke test
"""

from __future__ import annotations

import argparse
import itertools
import os
import time
import traceback
import warnings
from pathlib import Path

import torch

from audioloop.models.accel import AccelSettings, accelerate
from audioloop.sampling.sampler import DISTILLED_SIGMAS
from step_variants import build, sampler, warmed, window, window_options
from timing import Run
from window_step import stock_call


def host_steps(model: torch.nn.Module, x: dict) -> list[float]:
    """Host seconds between the step reports of one window (what the render's progress sees)."""
    marks = [time.perf_counter()]
    sampler(model, x, on_step=lambda *_: marks.append(time.perf_counter()))()
    return [b - a for a, b in itertools.pairwise(marks)]


def sync_sites(model: torch.nn.Module, x: dict) -> dict[str, int]:
    """Each call site (the innermost audioloop, diffusers or bench frames) that synchronised with the GPU
    during one window, with how often."""
    sites: dict[str, int] = {}

    def record(message: object, *_: object, **__: object) -> None:
        frames = [f for f in traceback.extract_stack()[:-1] if "/torch/" not in f.filename]
        where = " < ".join(f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in frames[-4:][::-1])
        key = f"{str(message)[:80]} @ {where}"
        sites[key] = sites.get(key, 0) + 1

    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.showwarning = record  # restored by catch_warnings
            sampler(model, x)()
    finally:
        torch.cuda.set_sync_debug_mode(0)
    return dict(sorted(sites.items(), key=lambda kv: -kv[1]))


def idle(model: torch.nn.Module, x: dict, out: Path) -> dict:
    """One window under the profiler: kernel-busy and idle seconds of the GPU, the 25 largest gaps."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        sampler(model, x)()
        torch.cuda.synchronize()
    kernels = sorted(
        (e.time_range.start, e.time_range.end, e.name)
        for e in prof.events()
        if e.device_type == torch.autograd.DeviceType.CUDA and e.time_range.end > e.time_range.start
    )
    busy, gaps, reach, before = 0.0, [], kernels[0][0], kernels[0][2]
    for start, end, name in kernels:
        if start > reach:
            gaps.append(((start - reach) / 1e6, before, name))
        if end > reach:
            busy += (end - max(start, reach)) / 1e6
            reach, before = end, name
    span = (reach - kernels[0][0]) / 1e6
    gaps.sort(reverse=True)
    lines = [f"{g * 1e3:9.3f} ms  after {a[:70]}  before {b[:70]}" for g, a, b in gaps[:25]]
    (out / "gaps.txt").write_text("\n".join(lines) + "\n")
    small = sum(g for g, _, _ in gaps if g < 1e-4)
    return {
        "span_s": span,
        "busy_s": busy,
        "idle_s": span - busy,
        "gaps": len(gaps),
        "idle_in_gaps_under_100us_s": small,
        "largest_gaps_ms": [round(g * 1e3, 3) for g, _, _ in gaps[:25]],
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--fp8", action="store_true", help="the render's --fp8 (recipe 'all')")
    window_options(parser)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--deadline", type=float, default=300.0)
    args = parser.parse_args()
    os.environ.setdefault("AUDIOLOOP_CACHE_DIR", "/tmp/audioloop-gaps-cache")
    run = Run(args, "sampler_gaps")
    dev, res = run.device, run.results
    model = build(args, dev)
    if not args.tiny:
        accelerate(model, AccelSettings(fp8="all" if args.fp8 else None), dev)
    x = window(model, "next", args, dev)
    calls = {
        "forward": stock_call(model, x),
        "window NAG on": sampler(model, x),
        "window NAG off": sampler(model, x, nag=False),
    }
    steps = len(DISTILLED_SIGMAS) - 1
    res["seconds_per_step"] = {}
    for name, fn in calls.items():
        per = steps if name.startswith("window") else 1
        repeats = args.repeats if per > 1 else args.repeats + 2
        res["seconds_per_step"][name] = run.attempt(name, lambda f=fn, p=per, r=repeats: warmed(f, r, dev, p))
    res["host_steps_s"] = run.attempt("host steps", lambda: host_steps(model, x))
    if dev.type == "cuda":
        res["sync_sites"] = run.attempt("syncs", lambda: sync_sites(model, x))
        res["gpu_idle"] = run.attempt("idle", lambda: idle(model, x, args.out))
    run.save()
    for name, record in res["seconds_per_step"].items():
        if record:
            print(f"{name:<20} {record['median']:.4f} s / step", flush=True)


if __name__ == "__main__":
    main()
