"""The video self-attention alone: cuDNN's bf16 SDPA (what the render runs) against audioloop's 8-bit
Triton kernel (`models/quant_attention.py`), for each tile configuration, same inputs, same run.

Shapes [1, S, 32, 128] as diffusers hands them over: S = 24,960 (832×480 window ≥ 1), 24,570 (window 0: a
ragged last tile), 56,320 (1280×704). Q and K are RMS-normalised random rows (as after the blocks' QK
norm) times a score scale, V is random. For each value format ("fp8": int8 Q·Kᵀ and e4m3 P·V; "bf16":
int8 Q·Kᵀ and bf16 P·V) and each tile config: the kernel's time, and over the whole op (quantisation
compiled as the blocks compile it, plus the kernel) its time and its error ‖out − ref‖/‖ref‖ against fp32
attention of the unquantised inputs; bf16 SDPA's error beside it. The kernel is also checked against the
exact attention of its own dequantised inputs, which isolates the kernel from the quantisation.

    python bench/attention.py --out $OUT
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel

from audioloop.models import quant_attention as qa
from audioloop.models import quant_attention_kernel as qk
from timing import Run

HEADS, HEAD_DIM = 32, 128
CONFIGS = [
    qk.KernelConfig(block_m, block_n, warps, stages, tma)
    for block_m, block_n, warps, stages, tma in (
        (128, 128, 8, 2, False),
        (128, 128, 8, 3, False),
        (128, 64, 8, 3, False),
        (128, 64, 4, 3, False),
        (128, 128, 8, 2, True),
        (128, 128, 8, 3, True),
        (128, 64, 8, 3, True),
        (128, 64, 8, 4, True),
        (64, 128, 4, 3, True),
    )
]


def cuda_times(fn: Callable[[], object], repeats: int) -> dict[str, float]:
    """Milliseconds per call (CUDA events, after two warm calls): median, min, max."""
    fn()
    fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return {"median_ms": statistics.median(times), "min_ms": min(times), "max_ms": max(times)}


def inputs(seq: int, score_std: float, seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    """Q, K [1, S, H, D] bf16 with unit-RMS rows times √score_std (scores ~ score_std), V ~ N(0, 1)."""
    gen = torch.Generator(device="cuda").manual_seed(seed)

    def rows() -> Tensor:
        x = torch.randn(1, seq, HEADS, HEAD_DIM, device="cuda", generator=gen)
        return (x * x.pow(2).mean(-1, keepdim=True).rsqrt() * score_std**0.5).bfloat16()

    value = torch.randn(1, seq, HEADS, HEAD_DIM, device="cuda", generator=gen).bfloat16()
    return rows(), rows(), value


def sdpa(query: Tensor, key: Tensor, value: Tensor) -> Tensor:
    """What diffusers' native backend runs: BSHD → BHSD views, SDPA, back."""
    q, k, v = (t.transpose(1, 2) for t in (query, key, value))
    return F.scaled_dot_product_attention(q, k, v).transpose(1, 2)


def rel(out: Tensor, ref: Tensor) -> float:
    """‖out − ref‖ / ‖ref‖."""
    return ((out.double() - ref.double()).norm() / ref.double().norm()).item()


def shape_results(bench: Run, seq: int, configs: dict[str, list[qk.KernelConfig]]) -> dict:
    """Every measurement of one sequence length, with the tile configs given per value format."""
    args = bench.args
    flops = 4 * seq * seq * HEAD_DIM * HEADS
    query, key, value = inputs(seq, args.score_std)
    with sdpa_kernel([SDPBackend.EFFICIENT_ATTENTION]):
        ref = sdpa(query.float(), key.float(), value.float())
    record: dict = {"tflop": flops / 1e12}
    with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
        record["cudnn_bf16"] = cuda_times(lambda: sdpa(query, key, value), args.repeats)
        record["cudnn_bf16"]["error"] = rel(sdpa(query, key, value), ref)
    quantize = {
        "fp8": torch.compile(lambda v: qa.quantize_channels(v), fullgraph=True),
        "bf16": torch.compile(lambda v: qa.transpose_values(v), fullgraph=True),
    }
    quantize_qk = torch.compile(
        lambda q, k: (qa.quantize_tokens(q), qa.quantize_tokens(qa.smooth(k))), fullgraph=True
    )
    (q8, q_scale), (k8, k_scale) = quantize_qk(query, key)
    record["quantize_qk"] = cuda_times(lambda: quantize_qk(query, key), args.repeats)
    scale = HEAD_DIM**-0.5
    for values, quantize_v in quantize.items():
        v8, v_scale = quantize_v(value)
        record[f"quantize_v_{values}"] = cuda_times(lambda qv=quantize_v: qv(value), args.repeats)
        exact = qa.dequantized_attention(q8, k8, v8, q_scale, k_scale, v_scale, scale)
        for config in configs[values]:
            name = f"{values} {label(config)}"

            def run(config: qk.KernelConfig = config, v8: Tensor = v8, v_scale: Tensor = v_scale) -> Tensor:
                return qk.quant_flash(q8, k8, v8, q_scale, k_scale, v_scale, scale, torch.bfloat16, config)

            def measure(run: Callable[[], Tensor] = run, exact: Tensor = exact) -> dict:
                out = run()
                times = cuda_times(run, args.repeats)
                times["tflops"] = flops / 1e9 / times["median_ms"]
                times["error_vs_dequantized"] = rel(out, exact)
                times["error"] = rel(out, ref)
                return times

            record[name] = bench.attempt(f"{seq} {name}", measure, need=10)
            bench.results["shapes"][str(seq)] = record
    return record


def label(config: qk.KernelConfig) -> str:
    """'128x64 w8 s3 tma': queries × keys per tile, warps, stages, loads."""
    loads = "tma" if config.tma else "ptr"
    return f"{config.block_m}x{config.block_n} w{config.num_warps} s{config.num_stages} {loads}"


def fastest(record: dict, values: str, count: int) -> list[qk.KernelConfig]:
    """The `count` fastest configs of one value format in a shape's record."""
    timed = {label(c): c for c in CONFIGS}
    ranked = sorted(
        (rec["median_ms"], timed[name.split(" ", 1)[1]])
        for name, rec in record.items()
        if name.startswith(f"{values} ") and isinstance(rec, dict)
    )
    return [config for _, config in ranked[:count]]


def main() -> None:
    """Parse arguments, measure each shape, print the table."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seqs", default="24960,24570,56320")
    parser.add_argument("--score-std", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--deadline", type=float, default=240.0)
    args = parser.parse_args()
    args.tiny = False
    bench = Run(args, "attention")
    bench.results.update(shapes={}, configs=[dataclasses.asdict(c) for c in CONFIGS])
    configs = {values: CONFIGS for values in qa.VALUE_FORMATS}
    for index, seq in enumerate(map(int, args.seqs.split(","))):
        record = bench.attempt(f"shape {seq}", lambda s=seq, c=configs: shape_results(bench, s, c), need=30)
        if index == 0 and record:  # the other shapes time only the two fastest configs of the first
            configs = {values: fastest(record, values, 2) for values in qa.VALUE_FORMATS}
    bench.results["best"] = {values: label(c[0]) for values, c in configs.items() if c}
    bench.results["best_configs"] = {v: dataclasses.asdict(c[0]) for v, c in configs.items() if c}
    bench.save()
    for seq, record in bench.results["shapes"].items():
        cudnn = record["cudnn_bf16"]
        tflops = record["tflop"] / cudnn["median_ms"] * 1e3
        quantize = {k: v["median_ms"] for k, v in record.items() if k.startswith("quantize")}
        print(f"{seq}: cudnn bf16 {cudnn['median_ms']:.2f} ms ({tflops:.0f} TFLOP/s)")
        print(f"  error {100 * cudnn['error']:.2f}%  quantize (ms) {quantize}")
        for name, rec in record.items():
            if isinstance(rec, dict) and "tflops" in rec:
                print(
                    f"  {name:24s} {rec['median_ms']:7.2f} ms {rec['tflops']:6.0f} TFLOP/s  "
                    f"{cudnn['median_ms'] / rec['median_ms']:4.2f}x cudnn  error {100 * rec['error']:.2f}% "
                    f"(vs dequantized {100 * rec['error_vs_dequantized']:.2f}%)"
                )
    print("fastest at the first shape:", bench.results["best"])
    for name, why in bench.results["failures"].items():
        print(f"FAILED {name}: {why[:300]}")


if __name__ == "__main__":
    main()
