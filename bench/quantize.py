"""The FP8 step's row-quantisation kernels alone: ways to write them, timed side by side on the GPU.

The FP8 step's largest fused elementwise kernels quantise a linear's input per row (`fp8.quantize_rows`):
GELU then quantise before the FF down-projection ([24,960 × 16,384] at 832×480: 1.38 ms a block, 4.4% of
the step), the adaLN norm and modulation then quantise before the projections ([24,960 × 4,096]). Each
variant computes the same function, compiled as a block compiles it: device time (CUDA events, median),
effective bandwidth, error against the unquantised fp32 function, distance from the earlier form's result.
The bf16 step's GELU and norm (no quantisation) are timed too. "Persistent rows": compiled with
`models/reductions.py`'s heuristics, each row reduction held in registers instead of looped over.

    python bench/quantize.py --out $OUT
    python bench/quantize.py --out /tmp/q --tiny     # CPU smoke test: small shapes, eager, no Triton
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from audioloop.models.fp8 import quantize_rows as quantize_divide
from audioloop.models.fp8 import triton_gelu_quantize_rows
from audioloop.models.gelu import gelu_tanh as gelu_sigmoid
from audioloop.models.reductions import ROW_LIMIT, use_persistent_rows
from step_variants import warmed
from timing import Run


def gelu_stock(x: Tensor) -> Tensor:
    """diffusers' FF activation: F.gelu(approximate="tanh")."""
    return F.gelu(x, approximate="tanh")


def modulate(x: Tensor, scale: Tensor, shift: Tensor) -> Tensor:
    """The adaLN input of a projection: RMS norm without weight (eps 1e-6), then ·(1 + scale) + shift."""
    y = x.float()
    y = y * torch.rsqrt(y.square().mean(dim=-1, keepdim=True) + 1e-6)
    return (y * (1.0 + scale.float()) + shift.float()).to(x.dtype)


def stock_gelu_quantized(x: Tensor) -> tuple[Tensor, Tensor]:
    """diffusers' GELU, then the row quantisation: the FP8 FF's middle before the sigmoid form."""
    return quantize_divide(gelu_stock(x))


def gelu_quantized(x: Tensor) -> tuple[Tensor, Tensor]:
    """GELU as x·σ(2u), then the row quantisation: what the render's one-pass kernel computes."""
    return quantize_divide(gelu_sigmoid(x))


def norm_quantized(x: Tensor, scale: Tensor, shift: Tensor) -> tuple[Tensor, Tensor]:
    """The adaLN input of an FP8 projection: norm and modulation, then the row quantisation."""
    return quantize_divide(modulate(x, scale, shift))


def dequantized(pair: tuple[Tensor, Tensor]) -> Tensor:
    """q·scale in fp32."""
    q, s = pair
    return q.float() * s


def compiled(run: Run, fn: Callable) -> Callable:
    """fn compiled as a block's code is on the GPU; eager on the CPU."""
    return torch.compile(fn, fullgraph=True, dynamic=False) if run.device.type == "cuda" else fn


def under_rows(rows: int, measure: Callable[[], None]) -> None:
    """Run `measure` (whose first call compiles) with row reductions of up to `rows` elements persistent
    (0: inductor's own rule), then put inductor's rule back. Dynamo forgets earlier compiles first: the
    same function compiled under other heuristics would otherwise reuse them."""
    torch._dynamo.reset()
    use_persistent_rows(rows)
    try:
        measure()
    finally:
        use_persistent_rows(0)


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


def time_bf16(run: Run, name: str, call: Callable, inputs: tuple, exact: Tensor) -> None:
    """Time a bf16 step's kernel alone (bf16 in, bf16 out, of the first input's size) and record its error
    against fp32."""
    out = call(*inputs).float()
    record = warmed(lambda: call(*inputs), run.args.repeats, run.device)
    record.update(gb_per_s=inputs[0].numel() * 4 / record["median"] / 1e9, error=rel(out, exact))
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
    ref = exact, dequantized(stock_gelu_quantized(hidden))
    traffic = hidden.numel() * 3  # bf16 in, e4m3 out
    ff = {
        "gelu tanh + divide (before)": (stock_gelu_quantized, 0),
        "gelu sigmoid + divide": (gelu_quantized, 0),
        "gelu sigmoid + divide, persistent rows": (gelu_quantized, hidden.shape[1]),
    }
    for name, (fn, rows) in ff.items():
        call = compiled(run, fn)
        measure = partial(compare, run, f"ff {name}", call, (hidden,), ref, traffic)
        run.attempt(f"ff {name}", partial(under_rows, rows, measure))
    if device.type == "cuda":
        kernel = triton_gelu_quantize_rows()
        name = "ff triton one pass (the render's, models/fp8.py)"
        run.attempt("ff triton", lambda: compare(run, name, kernel, (hidden,), ref, traffic))

    for name, fn in {
        "gelu tanh, bf16 (before)": gelu_stock,
        "gelu sigmoid, bf16 (the render's, models/gelu.py)": gelu_sigmoid,
    }.items():
        call = compiled(run, fn)
        run.attempt(name, lambda n=name, c=call: time_bf16(run, n, c, (hidden,), exact))

    x = torch.randn(m, 256 if args.tiny else 4096, device=device, dtype=torch.bfloat16, generator=gen)
    scale, shift = (0.1 * torch.randn(x.shape[1], device=device, generator=gen) for _ in range(2))
    scale, shift = scale.to(torch.bfloat16), shift.to(torch.bfloat16)
    ref = modulate(x.float(), scale, shift), dequantized(norm_quantized(x, scale, shift))
    traffic = x.numel() * 3
    inputs = (x, scale, shift)
    for name, rows in {
        "norm + divide (before)": 0,
        "norm + divide, persistent rows (the render's)": ROW_LIMIT,
    }.items():
        measure = partial(compare, run, f"norm {name}", compiled(run, norm_quantized), inputs, ref, traffic)
        run.attempt(f"norm {name}", partial(under_rows, rows, measure))
    for name, rows in {
        "norm, bf16 (before)": 0,
        "norm, bf16, persistent rows (the render's)": ROW_LIMIT,
    }.items():
        measure = partial(time_bf16, run, name, compiled(run, modulate), inputs, ref[0])
        run.attempt(name, partial(under_rows, rows, measure))


if __name__ == "__main__":
    main()
