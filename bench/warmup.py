"""Where a process's first steps go, cold and with a warm compile cache: Dynamo, the cache, first runs.

Runs itself twice as a child on one fresh cache dir (the first child fills it, the second starts warm).
Each child builds the transformer as the render does (`accel.accelerate`) and times the sampler's first
one-step call per window layout (window 0, then a window ≥ 1) against a repeat, with the phases Dynamo
times (`dynamo_timed`) during the first call; then the first and a second eager attention call at a
shape no layout uses (what building a cuDNN plan costs); then the fused decoder's first decode of two
latents (its kernels' load), against a repeat. Every inductor kernel that benchmarks its configs (an
autotune cache miss) is listed with its cache state and seconds: a warm process should list none.

    python bench/warmup.py --out $OUT --fp8
    python bench/warmup.py --out /tmp/w --tiny --width 64 --height 64 --frames 97   # CPU smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKLLTX2Video
from torch._inductor.runtime.autotune_cache import AutotuneCache
from torch._inductor.runtime.triton_heuristics import CachingAutotuner, hash_configs

import fullsize
from audioloop.models import decoder as vae_decoder
from audioloop.models.accel import AccelSettings, accelerate
from audioloop.models.configs import VIDEO_VAE_2_3
from audioloop.models.latents import decode_video
from audioloop.models.tiny import tiny_video_vae
from step_variants import build, sampler, window, window_options
from timing import Run, wall

PHASES = 12  # the longest Dynamo phases kept per first call


def phases_of(fn: Callable[[], object], device: torch.device) -> dict:
    """Wall seconds of one call and the Dynamo-timed phases it spent longest in (nested: they overlap)."""
    metrics = torch._dynamo.utils.compilation_time_metrics
    before = {name: sum(times) for name, times in metrics.items()}
    seconds = wall(fn, device)
    grown = {name: sum(times) - before.get(name, 0.0) for name, times in metrics.items()}
    top = sorted(((s, n) for n, s in grown.items() if s > 1e-3), reverse=True)[:PHASES]
    return {"wall_s": seconds, "phases_s": {name: round(s, 3) for s, name in top}}


def record_autotuning(log: list[dict]) -> None:
    """Append each inductor kernel's config benchmark to `log`: its name, autotune cache state, number
    of configs, the seconds, its file; the best-config file its cache saves to (with its content, if it
    exists) and the one a lookup in this process reads, with both configs hashes and the cache key tag:
    what a miss in a warm process differs in."""
    benchmark = CachingAutotuner.benchmark_all_configs

    def timed(self: CachingAutotuner, *args: object, **kwargs: object) -> dict:
        began = time.perf_counter()
        timings = benchmark(self, *args, **kwargs)
        seconds = time.perf_counter() - began
        info = self.autotune_cache_info or {}
        cache = getattr(self.save_cache_hook, "__self__", None)
        best = Path(cache.local_cache[1]) if cache is not None and cache.local_cache else None
        stored = json.loads(best.read_text()) if best is not None and best.exists() else {}
        compiled = hash_configs([result.config for result in self.compile_results])
        lookup = AutotuneCache.create(self.inductor_meta, self.filename, compiled)
        log.append(
            {
                "kernel": self.inductor_meta.get("kernel_name"),
                "state": info.get("autotune_cache_state"),
                "configs": len(timings),
                "s": round(seconds, 4),
                "file": self.filename,
                "best_config": str(best),
                "stored": stored,
                "configs_hash": cache.configs_hash if cache is not None else None,
                "tag": torch.compiler.config.cache_key_tag,
                "compiled_configs_hash": compiled,
                "lookup": lookup.local_cache[1] if lookup is not None and lookup.local_cache else None,
                "meta_local_cache": self.inductor_meta.get("autotune_local_cache"),
            }
        )
        return timings

    CachingAutotuner.benchmark_all_configs = timed


def first_and_repeat(fn: Callable[[], object], device: torch.device) -> dict:
    """The first call's wall and phases, a repeat's wall, and the difference (the first-call cost)."""
    first = phases_of(fn, device)
    repeat = wall(fn, device)
    return {**first, "repeat_s": repeat, "first_cost_s": first["wall_s"] - repeat}


def attention_plan(args: argparse.Namespace, device: torch.device) -> dict:
    """First and second eager SDPA call on video-sized q, k, v at a token count no window has."""
    heads, dim = (32, 128) if not args.tiny else (2, 16)
    tokens = ((args.frames - 1) // 8 + 3) * (args.height // 32) * (args.width // 32)
    q, k, v = (torch.randn(1, heads, tokens, dim, device=device, dtype=torch.bfloat16) for _ in range(3))
    return first_and_repeat(lambda: F.scaled_dot_product_attention(q, k, v), device)


def video_vae(args: argparse.Namespace, device: torch.device) -> AutoencoderKLLTX2Video:
    """The full-size video VAE with random weights (tiny on the CPU)."""
    if args.tiny:
        return tiny_video_vae().to(device)
    return fullsize.build(AutoencoderKLLTX2Video, VIDEO_VAE_2_3, str(device), torch.bfloat16, seed=1)


def child(args: argparse.Namespace) -> None:
    """One process: setup, the first step of each layout, an attention plan, the decoder's warm-up."""
    run = Run(args, f"warmup_{args.child}")
    if args.precompile and hasattr(torch._functorch.config, "bundled_autograd_cache"):
        torch._functorch.config.bundled_autograd_cache = True
    dev, res = run.device, run.results
    res["autotuned"] = []
    record_autotuning(res["autotuned"])
    began = time.perf_counter()
    model = build(args, dev)
    accelerate(model, AccelSettings(fp8="all" if args.fp8 else None, compile=not args.tiny), dev)
    res["setup_s"] = time.perf_counter() - began
    for kind in ("first", "next"):
        call = sampler(model, window(model, kind, args, dev), (1.0, 0.0))
        res[f"step {kind}"] = run.attempt(f"step {kind}", lambda c=call: first_and_repeat(c, dev))
    res["attention plan"] = run.attempt("attention plan", lambda: attention_plan(args, dev))
    del model
    vae = video_vae(args, dev)
    if not args.tiny:
        vae_decoder.install(vae.decoder)
    z = torch.zeros(1, vae.config.latent_channels, 2, args.height // 32, args.width // 32, device=dev)
    warm = partial(decode_video, vae, z)
    res["decoder warm-up"] = run.attempt("decoder warm-up", lambda: first_and_repeat(warm, dev))
    res["best_configs_in_cache"] = len(list(Path(os.environ["AUDIOLOOP_CACHE_DIR"]).rglob("*.best_config")))
    if args.precompile:
        began = time.perf_counter()
        torch.compiler.save_cache_artifacts()
        res["save_cache_artifacts_s"] = time.perf_counter() - began
        res["dynamo_cache"] = dict(torch._dynamo.utils.counters["dynamo_cache"])
    run.save()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--fp8", action="store_true", help="the render's --fp8 (recipe 'all')")
    window_options(parser)
    parser.add_argument("--deadline", type=float, default=400.0)
    parser.add_argument(
        "--precompile", action="store_true", help="Dynamo's caching precompile (experimental)"
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    os.environ["AUDIOLOOP_CACHE_DIR"] = tempfile.mkdtemp(prefix="audioloop-warmup-")
    if args.precompile:  # read when torch._dynamo.config is imported: set for the children
        os.environ["TORCH_CACHING_PRECOMPILE"] = "1"
    summary = {}
    for start in ("cold", "warm"):
        done = subprocess.run(
            [sys.executable, __file__, *sys.argv[1:], "--child", start], timeout=args.deadline
        )
        path = args.out / f"warmup_{start}.json"
        summary[start] = json.loads(path.read_text()) if path.exists() else {"exit": done.returncode}
    for start, res in summary.items():
        steps = {k: round(res[k]["first_cost_s"], 2) for k in ("step first", "step next") if res.get(k)}
        tuned = res.get("autotuned", [])
        tuning = f"{len(tuned)} kernels autotuned, {sum(t['s'] for t in tuned):.2f} s"
        print(start, f"setup {res.get('setup_s', 0):.1f} s", steps, tuning, flush=True)


if __name__ == "__main__":
    main()
