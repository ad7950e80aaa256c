"""The FP8 step's row-quantisation kernels alone: ways to write them, timed side by side on the GPU.

The FP8 step's largest fused elementwise kernels quantise a linear's input per row (`fp8.quantize_rows`):
GELU then quantise before the FF down-projection ([24,960 × 16,384] at 832×480: 1.38 ms a block, 4.4% of
the step), the adaLN norm and modulation then quantise before the projections ([24,960 × 4,096]). Each
variant computes the same function, compiled as a block compiles it: device time (CUDA events, median),
effective bandwidth, error against the unquantised fp32 function, distance from the earlier form's result.
The bf16 step's GELU (no quantisation) is timed in both forms too.

    python bench/quantize.py --out $OUT
    python bench/quantize.py --out /tmp/q --tiny     # CPU smoke test: small shapes, eager, no Triton
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from audioloop.models.fp8 import FP8_MAX, triton_gelu_quantize_rows
from audioloop.models.fp8 import quantize_rows as quantize_divide
from audioloop.models.gelu import gelu_tanh as gelu_sigmoid
from step_variants import warmed
from timing import Run


def quantize_reciprocal(x: Tensor) -> tuple[Tensor, Tensor]:
    """Row-wise e4m3 with every element multiplied by its row's reciprocal scale: one division a row."""
    amax = x.abs().amax(dim=-1, keepdim=True).float().clamp(min=1e-12)
    return (x.float() * (FP8_MAX / amax)).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn), amax / FP8_MAX


def gelu_stock(x: Tensor) -> Tensor:
    """diffusers' FF activation: F.gelu(approximate="tanh")."""
    return F.gelu(x, approximate="tanh")


def modulate(x: Tensor, scale: Tensor, shift: Tensor) -> Tensor:
    """The adaLN input of a projection: RMS norm without weight (eps 1e-6), then ·(1 + scale) + shift."""
    y = x.float()
    y = y * torch.rsqrt(y.square().mean(dim=-1, keepdim=True) + 1e-6)
    return (y * (1.0 + scale.float()) + shift.float()).to(x.dtype)


def dequantized(pair: tuple[Tensor, Tensor]) -> Tensor:
    """q·scale in fp32."""
    q, s = pair
    return q.float() * s


def compiled(run: Run, fn: Callable) -> Callable:
    """fn compiled as a block's code is on the GPU; eager on the CPU."""
    return torch.compile(fn, fullgraph=True, dynamic=False) if run.device.type == "cuda" else fn


def rel(a: Tensor, b: Tensor) -> float:
    """‖a − b‖ / ‖b‖."""
    return ((a - b).norm() / b.norm()).item()


def compare(
    run: Run, name: str, call: Callable, args: tuple, refs: tuple[Tensor, Tensor], traffic: int
) -> None:
    """Time one variant; record its bandwidth, its error against the unquantised fp32 function and its
    distance from the earlier form's result."""
    exact, before = refs
    out = dequantized(call(*args))
    record = warmed(lambda: call(*args), run.args.repeats, run.device)
    record.update(
        gb_per_s=traffic / record["median"] / 1e9, error=rel(out, exact), from_before=rel(out, before)
    )
    run.results["variants"][name] = record
    print(
        f"{name:<48} {record['median'] * 1e3:8.3f} ms  {record['gb_per_s']:7.0f} GB/s  "
        f"error {record['error']:.3%}  from before {record['from_before']:.2e}",
        flush=True,
    )


def time_gelu(run: Run, name: str, call: Callable, hidden: Tensor, exact: Tensor) -> None:
    """Time GELU alone (bf16 in, bf16 out) and record its error against fp32."""
    out = call(hidden).float()
    record = warmed(lambda: call(hidden), run.args.repeats, run.device)
    record.update(gb_per_s=hidden.numel() * 4 / record["median"] / 1e9, error=rel(out, exact))
    run.results["variants"][name] = record
    print(f"{name:<48} {record['median'] * 1e3:8.3f} ms  error {record['error']:.3%}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--tokens", type=int, default=24960)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--deadline", type=float, default=200.0)
    parser.add_argument("--tiny", action="store_true", help="small shapes on the CPU (tests this script)")
    args = parser.parse_args()
    run = Run(args, "quantize")
    run.results["variants"] = {}
    device = run.device
    m = 64 if args.tiny else args.tokens
    gen = torch.Generator(device=device).manual_seed(0)

    hidden = torch.randn(m, 512 if args.tiny else 16384, device=device, dtype=torch.bfloat16, generator=gen)
    exact = F.gelu(hidden.float(), approximate="tanh")
    ref = exact, dequantized(quantize_divide(gelu_stock(hidden)))
    traffic = hidden.numel() * 3  # bf16 in, e4m3 out
    ff = {
        "gelu tanh + divide (before)": lambda h: quantize_divide(gelu_stock(h)),
        "gelu tanh + reciprocal": lambda h: quantize_reciprocal(gelu_stock(h)),
        "gelu sigmoid + divide": lambda h: quantize_divide(gelu_sigmoid(h)),
        "gelu sigmoid + reciprocal": lambda h: quantize_reciprocal(gelu_sigmoid(h)),
    }
    for name, fn in ff.items():
        call = compiled(run, fn)
        run.attempt(f"ff {name}", lambda n=name, c=call: compare(run, f"ff {n}", c, (hidden,), ref, traffic))
    if device.type == "cuda":
        kernel = triton_gelu_quantize_rows()
        name = "ff triton one pass (the render's, models/fp8.py)"
        run.attempt("ff triton", lambda: compare(run, name, kernel, (hidden,), ref, traffic))

    for name, fn in {
        "gelu tanh, bf16 (before)": gelu_stock,
        "gelu sigmoid, bf16 (the render's, models/gelu.py)": gelu_sigmoid,
    }.items():
        call = compiled(run, fn)
        run.attempt(name, lambda n=name, c=call: time_gelu(run, n, c, hidden, exact))

    x = torch.randn(m, 256 if args.tiny else 4096, device=device, dtype=torch.bfloat16, generator=gen)
    scale, shift = (0.1 * torch.randn(x.shape[1], device=device, generator=gen) for _ in range(2))
    scale, shift = scale.to(torch.bfloat16), shift.to(torch.bfloat16)
    ref = modulate(x.float(), scale, shift), dequantized(quantize_divide(modulate(x, scale, shift)))
    traffic = x.numel() * 3
    norm = {
        "norm + divide (the render's)": lambda a, b, c: quantize_divide(modulate(a, b, c)),
        "norm + reciprocal": lambda a, b, c: quantize_reciprocal(modulate(a, b, c)),
    }
    inputs = (x, scale, shift)
    for name, fn in norm.items():
        call = compiled(run, fn)
        run.attempt(f"norm {name}", lambda n=name, c=call: compare(run, f"norm {n}", c, inputs, ref, traffic))


if __name__ == "__main__":
    main()
