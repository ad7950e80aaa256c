"""A block's video-token projections alone: what fusing them would save, timed side by side on the GPU.

Two questions, at the block's shapes (24,960 video tokens at 832×480, width 4,096, FF 16,384), each compiled
as a block compiles it (CUDA events, median of repeats):

- ff: the bf16 FF up-projection and its tanh GELU as inductor runs them (cuBLAS addmm, then a Triton GELU
  pass over [N, 16384]) against cuBLASLt's GELU epilogue (`torch._addmm_activation`, one write), with both
  errors against the fp32 function.
- qkv: the self-attention's three projections of one input as three GEMMs against one GEMM of the three
  weights stacked, in bf16 and in FP8 (row-wise scales, `torch._scaled_mm`).

    python bench/projections.py --out $OUT
    python bench/projections.py --out /tmp/p --tiny     # CPU smoke test: small shapes, eager
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from audioloop.models.fp8 import quantize_rows
from audioloop.models.gelu import gelu_tanh
from step_variants import warmed
from timing import Run


def relative(out: Tensor, ref: Tensor) -> float:
    """‖out − ref‖ / ‖ref‖ in fp32."""
    return float((out.float() - ref).norm() / ref.norm())


def matmul_flops(m: int, k: int, n: int) -> float:
    """Multiply-adds of an [m, k] × [k, n] product, counted as two FLOPs."""
    return 2.0 * m * k * n


def ff_up(run: Run, tokens: int, width: int, inner: int, repeats: int) -> dict:
    """The FF up-projection with its GELU: compiled addmm + GELU pass, against the fused epilogue."""
    gen = torch.Generator(run.device).manual_seed(0)
    dtype = torch.bfloat16 if run.device.type == "cuda" else torch.float32
    x = torch.randn(tokens, width, device=run.device, generator=gen).to(dtype)
    w = (torch.randn(inner, width, device=run.device, generator=gen) / width**0.5).to(dtype)
    b = (torch.randn(inner, device=run.device, generator=gen) * 0.1).to(dtype)
    ref = F.gelu(F.linear(x.float(), w.float(), b.float()), approximate="tanh")

    def unfused(x: Tensor) -> Tensor:
        return gelu_tanh(F.linear(x, w, b))

    def epilogue(x: Tensor) -> Tensor:
        return torch._addmm_activation(b, x, w.t(), use_gelu=True)

    flops = matmul_flops(tokens, width, inner)
    result = {}
    for name, fn in (("addmm + GELU pass", unfused), ("cuBLASLt GELU epilogue", epilogue)):
        if run.device.type == "cuda":
            fn = torch.compile(fn, fullgraph=True, dynamic=False)
        step = warmed(lambda fn=fn: fn(x), repeats, run.device)
        out = fn(x)
        result[name] = {
            "seconds": step,
            "tflops": flops / step["median"] / 1e12,
            "error_vs_fp32": relative(out, ref),
        }
    result["epilogue_vs_unfused_max_abs"] = float((epilogue(x).float() - unfused(x).float()).abs().max())
    return result


def qkv(run: Run, tokens: int, width: int, repeats: int) -> dict:
    """Three projections of one input: three GEMMs against one of the stacked weights, bf16 and FP8."""
    gen = torch.Generator(run.device).manual_seed(1)
    dtype = torch.bfloat16 if run.device.type == "cuda" else torch.float32
    x = torch.randn(tokens, width, device=run.device, generator=gen).to(dtype)
    ws = [
        (torch.randn(width, width, device=run.device, generator=gen) / width**0.5).to(dtype) for _ in range(3)
    ]
    bs = [(torch.randn(width, device=run.device, generator=gen) * 0.1).to(dtype) for _ in range(3)]
    w3, b3 = torch.cat(ws), torch.cat(bs)

    def three(x: Tensor) -> list[Tensor]:
        return [F.linear(x, w, b) for w, b in zip(ws, bs, strict=True)]

    def one(x: Tensor) -> list[Tensor]:
        return list(F.linear(x, w3, b3).chunk(3, dim=-1))

    variants = {"bf16 three GEMMs": three, "bf16 one stacked GEMM": one}
    if run.device.type == "cuda":
        q8 = [quantize_rows(w) for w in ws]
        q3 = quantize_rows(w3)

        def three_fp8(x: Tensor) -> list[Tensor]:
            rows, scale = quantize_rows(x)
            return [
                torch._scaled_mm(
                    rows, q.t(), scale_a=scale, scale_b=s.t(), bias=b, out_dtype=dtype, use_fast_accum=True
                )
                for (q, s), b in zip(q8, bs, strict=True)
            ]

        def one_fp8(x: Tensor) -> list[Tensor]:
            rows, scale = quantize_rows(x)
            out = torch._scaled_mm(
                rows,
                q3[0].t(),
                scale_a=scale,
                scale_b=q3[1].t(),
                bias=b3,
                out_dtype=dtype,
                use_fast_accum=True,
            )
            return list(out.chunk(3, dim=-1))

        variants |= {"fp8 three GEMMs": three_fp8, "fp8 one stacked GEMM": one_fp8}
    flops = 3 * matmul_flops(tokens, width, width)
    result = {}
    for name, fn in variants.items():
        if run.device.type == "cuda":
            fn = torch.compile(fn, fullgraph=True, dynamic=False)
        step = warmed(lambda fn=fn: fn(x), repeats, run.device)
        result[name] = {"seconds": step, "tflops": flops / step["median"] / 1e12}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--tokens", type=int, default=24_960)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--deadline", type=float, default=300.0)
    parser.add_argument("--tiny", action="store_true", help="CPU, small shapes: tests this script")
    args = parser.parse_args()
    run = Run(args, "projections")
    tokens, width = (96, 64) if args.tiny else (args.tokens, 4096)
    run.results["shape"] = {"tokens": tokens, "width": width, "ff_inner": 4 * width}
    run.results["ff"] = run.attempt("ff", lambda: ff_up(run, tokens, width, 4 * width, args.repeats))
    run.results["qkv"] = run.attempt("qkv", lambda: qkv(run, tokens, width, args.repeats))
    run.save()


if __name__ == "__main__":
    main()
