"""FlashAttention-4's Hopper forward (flash-attn-4, CuTe DSL, from the registry) against PyTorch's SDPA
(cuDNN's bf16 kernel) at the video self-attention's shapes: time per call, TFLOP/s, error against fp32,
its tile configurations, the first call's JIT compile, and audioloop's custom op (`models/flash4.py`)
inside `torch.compile(fullgraph=True)`, as the compiled blocks call it.

Errors are ‖out − ref‖/‖ref‖ over the first 1,024 query rows against fp32 attention, for unit-RMS q, k
(flat attention) and q ×4 (peaked). flash-attn-4 is not an audioloop dependency: its wheels and the
CuTe DSL's (92 MB, over one call's 64 MiB) travel as `bench/fa4_wheels.sh` says.

    python bench/attention_fa4.py --out $OUT
"""

from __future__ import annotations

import argparse
import importlib
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from attention_fp8 import bf16, reference, rel
from audioloop.models.flash4 import flash4
from step_variants import timed
from timing import Run, summary, wall

HEADS, DIM = 32, 128
# (tile_m, tile_n, P·V from registers, intra-warpgroup overlap); None: the library's own choice.
TILES = (
    None,
    (128, 176, True, True),
    (128, 192, True, True),
    (128, 160, True, True),
    (192, 128, False, True),
)


def fa4(q: Tensor, k: Tensor, v: Tensor, tile: tuple | None = None) -> Tensor:
    """FA4's forward with an optional tile configuration (the library's private entry: the public one
    takes none)."""
    from flash_attn.cute.interface import _flash_attn_fwd

    if tile is None:
        return _flash_attn_fwd(q, k, v)[0]
    m, n, rs, overlap = tile
    return _flash_attn_fwd(q, k, v, tile_mn=(m, n), mma_pv_is_rs=rs, intra_wg_overlap=overlap)[0]


def random_qkv(tokens: int) -> tuple[Tensor, Tensor, Tensor]:
    """Unit-normal bf16 q, k, v [1, tokens, 32, 128] on the GPU, seeded by the token count."""
    gen = torch.Generator(device="cuda").manual_seed(tokens)
    return tuple(
        torch.randn(1, tokens, HEADS, DIM, generator=gen, device="cuda", dtype=torch.bfloat16)
        for _ in range(3)
    )


def timer(run: Run, tokens: int, repeats: int, out: dict) -> Callable[[str, Callable], None]:
    """`time_it(name, fn)`: fn's first call and median of `repeats` into out[name], with its TFLOP/s."""
    flops = 4 * tokens * tokens * HEADS * DIM

    def time_it(name: str, fn: Callable) -> None:
        first = wall(fn, run.device)
        t = summary(timed(fn, repeats, run.device))
        out[name] = {**t, "tflops": flops / t["median"] / 1e12, "first call s": first}
        print(f"  {name}: {t['median'] * 1e3:.2f} ms, {out[name]['tflops']:.0f} TFLOP/s", flush=True)

    return time_it


def case(run: Run, tokens: int, repeats: int) -> dict:
    """Both kernels at one token count: first calls, timings per tile, compiled op, errors."""
    q, k, v = random_qkv(tokens)
    out: dict = {}
    time_it = timer(run, tokens, repeats, out)
    time_it("cudnn bf16 (torch sdpa)", lambda: bf16(q, k, v))
    for tile in TILES:
        try:
            time_it(f"fa4 {tile or 'default'}", lambda t=tile: fa4(q, k, v, t))
        except Exception as exc:  # a tile the kernel rejects is a result, not the end of the run
            out[f"fa4 {tile}"] = f"{type(exc).__name__}: {str(exc)[:300]}"
    compiled = torch.compile(lambda a, b, c: flash4(a * 1.0, b, c), fullgraph=True)
    time_it("fa4 custom op in torch.compile (q·1 fused before)", lambda: compiled(q, k, v))
    for label, scale in (("flat", 1.0), ("peaked", 4.0)):
        qs = (q.float() * scale).to(torch.bfloat16)
        ref = reference(qs, k, v)
        out[f"error {label}"] = {"cudnn bf16": rel(bf16(qs, k, v), ref), "fa4": rel(fa4(qs, k, v), ref)}
    out["max |fa4 − cudnn|"] = float((fa4(q, k, v).float() - bf16(q, k, v).float()).abs().max())
    return out


def run_cases(name: str, modules: tuple[str, ...], case: Callable[[Run, int, int], dict]) -> None:
    """Parse --out/--tokens/--repeats/--deadline, time each module's import, run `case` per token count and
    save the results as `name`."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--tokens", default="24960,56320")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--deadline", type=float, default=300.0)
    parser.add_argument("--name", default=name)
    args = parser.parse_args()
    args.tiny = False
    run = Run(args, args.name)
    for module in modules:  # timed apart: the CuTe DSL's import alone is seconds
        begin = time.perf_counter()
        importlib.import_module(module)
        run.results[f"import {module} s"] = time.perf_counter() - begin
    for tokens in (int(t) for t in args.tokens.split(",")):
        run.results[str(tokens)] = run.attempt(
            f"{tokens} tokens", lambda t=tokens: case(run, t, args.repeats)
        )
    run.save()


def main() -> None:
    run_cases("attention_fa4", ("flash_attn.cute",), case)


if __name__ == "__main__":
    main()
