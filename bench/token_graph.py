"""One compiled block graph for every window layout against one graph per layout, on the same weights.

`accel.compile_blocks` marks the video token dims symbolic, so window 0 (no guide frame) and windows ≥ 1
share one graph, traced once a process. This runs both that and static shapes (the previous code: the
same `torch.compile` without the marks) in one process: each variant's first one-step sampler call per
layout (the compile, cold unless --cache-dir is warm), then timed one-step calls alternating between the
variants and layouts (median of --repeats), the peak of one call, and how far apart their latents are.

    python bench/token_graph.py --out $OUT --fp8
    python bench/token_graph.py --out /tmp/t --tiny --width 64 --height 64 --frames 97   # CPU smoke test
"""

from __future__ import annotations

import argparse
import os
import tempfile
from functools import partial
from pathlib import Path

import torch
from torch import nn

from audioloop.models import accel
from audioloop.models.accel import AccelSettings, accelerate
from audioloop.models.rope import CompactRope
from step_variants import build, graphs, sampler, timed, window, window_options
from timing import Run, peak_gib, summary, wall

# Static shapes as the previous compile_blocks had them, with a default inductor option spelt out: a backend
# unequal to the symbolic one, so Dynamo keeps each variant's graphs apart on the one block code object.
STATIC = {"fullgraph": True, "dynamic": False, "options": {"triton.cudagraphs": False}}
KINDS = ("first", "next")  # window 0's layout, a window ≥ 1's
VARIANTS = ("symbolic", "static")  # first calls in this order: the first pays the lazy imports


class Variants:
    """Switches a compiled transformer's blocks between the render's symbolic-token graphs and static ones
    over the same block code: each block's compiled forward, and its marking pre-hook on or off."""

    def __init__(self, model: nn.Module) -> None:
        """Take the render's compiled blocks (accelerate has run) and compile static twins beside them."""
        self.ropes = [m for m in model.modules() if isinstance(m, CompactRope)]
        self.blocks = list(model.transformer_blocks)
        self.forwards = {
            "symbolic": [block.forward for block in self.blocks],
            "static": [torch.compile(type(block).forward.__get__(block), **STATIC) for block in self.blocks],
        }
        self.marks = [
            {key: hook for key, hook in block._forward_pre_hooks.items() if _marks(hook)}
            for block in self.blocks
        ]

    def use(self, name: str) -> None:
        """Make every block run variant `name`, with the RoPE tables built again (a symbolic call's marks
        stay on the tables the RoPE modules keep, and a static graph must not see them)."""
        for rope in self.ropes:
            rope._last = None
        for block, forward, marks in zip(self.blocks, self.forwards[name], self.marks, strict=True):
            block.forward = forward
            for key, hook in marks.items():
                if name == "symbolic":
                    block._forward_pre_hooks[key] = hook
                else:
                    block._forward_pre_hooks.pop(key, None)


def _marks(hook: object) -> bool:
    """Whether a pre-hook is compile_blocks' token marking."""
    return isinstance(hook, partial) and hook.func is accel.mark_video_tokens


def first_calls(run: Run, variants: Variants, calls: dict, name: str) -> dict:
    """A variant's first call per layout (compile included) against its second, and the graphs built."""
    variants.use(name)
    before, record = graphs(), {}
    for kind in KINDS:
        first = wall(calls[kind], run.device)
        record[kind] = {"first_s": first, "second_s": wall(calls[kind], run.device)}
        record[kind]["first_cost_s"] = first - record[kind]["second_s"]
    record["graphs"] = graphs() - before
    return record


def alternating(run: Run, variants: Variants, calls: dict) -> dict:
    """Seconds a step per variant and layout, the variants taking turns each round."""
    times = {f"{name} {kind}": [] for name in VARIANTS for kind in KINDS}
    for _ in range(run.args.repeats):
        for name in VARIANTS:
            variants.use(name)
            for kind in KINDS:
                times[f"{name} {kind}"] += timed(calls[kind], 1, run.device)
    steps = {key: summary(values) for key, values in times.items()}
    for kind in KINDS:
        steps[f"ratio {kind}"] = steps[f"symbolic {kind}"]["median"] / steps[f"static {kind}"]["median"]
    return steps


def agreement(variants: Variants, calls: dict, device: torch.device) -> dict:
    """Per layout: the latents' relative L2 distance and max difference between the variants, and each
    variant's peak memory for one call."""
    record = {}
    for kind in KINDS:
        out, peaks = {}, {}
        for name in VARIANTS:
            variants.use(name)
            out[name] = calls[kind]().float()
            peaks[name] = peak_gib(calls[kind], device)
        diff = out["symbolic"] - out["static"]
        record[kind] = {
            "rel_l2": (diff.norm() / out["static"].norm()).item(),
            "max_abs": diff.abs().max().item(),
            "peak_gib": peaks,
        }
    return record


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--fp8", action="store_true", help="the render's --fp8 (recipe 'all')")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--cache-dir", type=Path, help="audioloop cache dir (default: fresh, cold compiles)")
    window_options(parser)
    parser.add_argument("--deadline", type=float, default=300.0)
    args = parser.parse_args()
    run = Run(args, f"token_graph_{'fp8' if args.fp8 else 'bf16'}")
    cache = args.cache_dir or Path(tempfile.mkdtemp(prefix="audioloop-token-graph-"))
    os.environ["AUDIOLOOP_CACHE_DIR"] = str(cache)  # accelerate puts the compile cache under it
    model = build(args, run.device)
    accelerate(model, AccelSettings(fp8="all" if args.fp8 else None), run.device)
    variants = Variants(model)
    calls = {kind: sampler(model, window(model, kind, args, run.device), (1.0, 0.0)) for kind in KINDS}
    res = run.results
    res.update(shape=f"{args.width}x{args.height}x{args.frames}", fp8=args.fp8, cache=str(cache))
    for name in VARIANTS:
        first = partial(first_calls, run, variants, calls, name)
        res[f"first {name}"] = run.attempt(f"first {name}", first)
    res["steps"] = run.attempt("steps", lambda: alternating(run, variants, calls))
    res["agreement"] = run.attempt("agreement", lambda: agreement(variants, calls, run.device))
    run.save()
    for name in VARIANTS:
        first = res[f"first {name}"] or {}
        costs = {kind: round(first[kind]["first_cost_s"], 2) for kind in KINDS if kind in first}
        print(name, "first-call cost", costs, "graphs", first.get("graphs"), flush=True)
    for key, value in (res["steps"] or {}).items():
        print(key, round(value["median"], 4) if isinstance(value, dict) else round(value, 4))
    print("agreement", res["agreement"])


if __name__ == "__main__":
    main()
