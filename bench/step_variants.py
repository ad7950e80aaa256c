"""One transformer step: stock diffusers against each variant of `models/accel.py`, same run, same inputs.

Full-size LTX-2.3 transformer with random bf16 weights (`--tiny`: the tiny model on the CPU, to test this
script), the sampler's exact inputs for a window ≥ 1 (context + appended guide). Parts, any subset, in order:

- stock: stock eager alone (the reference for ratios when bf16 does not run).
- errors: the per-block errors alone (bf16 per attention kernel, every FP8 recipe, torchao).
- bf16: stock eager; eager with the cuDNN kernel; regional compile with each attention kernel, and the
  fastest with the FF's GELU as a pass of its own (the form before the epilogue GEMM); the sampler
  (NAG on) compiled; recompiles across the two window layouts; kernel profiles; per-block errors.
- fp8: each FP8 recipe (rebuilt from the same seed), compiled, with its per-block error.
- offload: compiled bf16 and FP8, resident, then streamed from pinned host memory under a memory cap.
- warm: a second process compiles from the persistent cache (both layouts); its warm-up is timed.
- memory: compiled bf16 with each RoPE variant (`ROTARY`), one step under the allocator's history: the
  tensors live at its peak, by origin.

Per-block error: one block's output against the same block in fp32 (bf16 weights upcast, TF32 off), on the
inputs that block 0 receives, ‖out − ref‖ / ‖ref‖ for the video and the audio stream. Everything lands in
`$OUT/step_variants.json` after each measurement, so a run cut short still reports what it finished.

    python bench/step_variants.py --out $OUT --parts bf16,fp8
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import gc
import json
import linecache
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from diffusers.models.activations import GELU
from torch import Tensor, nn

import fullsize
from audioloop.models import accel
from audioloop.models.attention import use_rotary_attention
from audioloop.models.fp8 import use_fused_gelu
from audioloop.models.gelu import FastGELU, gelu_tanh, use_fast_gelu
from audioloop.models.modulation import use_two_level_modulation
from audioloop.models.reductions import ROW_LIMIT, use_persistent_rows
from audioloop.models.tiny import tiny_transformer
from audioloop.sampling.layout import first_window, next_window
from audioloop.sampling.sampler import DISTILLED_SIGMAS
from audioloop.sampling.window import SamplerSettings, sample_window
from timing import Run, peak_gib, summary, wall
from window_step import stock_call

GiB = 2**30
ERROR_BLOCK = 20  # a middle block (any block: weights are random); the last one if there are fewer


class Captured(Exception):
    """Raised by the capture hook to stop the forward once block 0's inputs are in hand."""


class Bench(Run):
    """Shared state of one run: settings, the results written after each step, the deadline."""

    def __init__(self, args: argparse.Namespace) -> None:
        """Start the clock and the results record."""
        super().__init__(args, "step_variants")
        self.results.update(
            shape=f"{args.width}x{args.height}x{args.frames}", variants={}, errors={}, starts={}
        )


def timed(fn: Callable[[], object], repeats: int, device: torch.device) -> list[float]:
    """Seconds per call: CUDA events on the GPU, the host clock on the CPU."""
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize(device)
            times.append(start.elapsed_time(end) / 1000)
        else:
            begin = time.perf_counter()
            fn()
            times.append(time.perf_counter() - begin)
    return times


def warmed(fn: Callable[[], object], repeats: int, device: torch.device, per: int = 1) -> dict[str, float]:
    """One untimed call (compile, autotune), then the summary of `repeats` timed ones, divided by per."""
    fn()
    return summary(timed(fn, repeats, device), per)


def graphs() -> int:
    """Graphs Dynamo has compiled in this process so far."""
    return int(torch._dynamo.utils.counters["stats"]["unique_graphs"])


def measure(bench: Bench, fn: Callable[[], object], repeats: int, per: int = 1, warm: bool = True) -> dict:
    """First call (compile included), a warm call, timed repeats, peak memory of one call, graphs compiled."""
    before = graphs()
    first = wall(fn, bench.device)
    if warm:
        wall(fn, bench.device)
    step = summary(timed(fn, repeats, bench.device), per)
    record = {"first_call_s": first, "step": step, "graphs_compiled": graphs() - before}
    if bench.device.type == "cuda" and warm:
        record["peak_gib"] = peak_gib(fn, bench.device)
        record["resident_gib"] = torch.cuda.memory_allocated() / GiB
    record["compile_s"] = max(0.0, first - step["median"] * per)
    return record


def window_options(parser: argparse.ArgumentParser) -> None:
    """The options `window` and `build` read: the render's shape, fps and text length, and --tiny."""
    parser.add_argument("--width", type=int, default=832)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--frames", type=int, default=497)
    parser.add_argument("--fps", type=float, default=25.0)
    parser.add_argument("--text-tokens", type=int, default=1024)
    parser.add_argument("--tiny", action="store_true", help="tiny model on the CPU (tests this script)")


def window(model: nn.Module, kind: str, args: argparse.Namespace, device: torch.device) -> dict:
    """Random latents and text of the real shapes for window 0 ("first") or a window ≥ 1 ("next")."""
    cfg = model.config
    gen = torch.Generator(device=device).manual_seed(0 if kind == "next" else 1)
    h, w, lat = args.height // 32, args.width // 32, (args.frames - 1) // 8 + 1

    def randn(*shape: int, dtype: torch.dtype = torch.float32) -> Tensor:
        return torch.randn(*shape, generator=gen, device=device, dtype=dtype)

    image = randn(1, cfg.in_channels, 1, h, w)
    layout = (
        first_window(image, lat, args.fps)
        if kind == "first"
        else next_window(randn(1, cfg.in_channels, 7, h, w), image, lat, args.fps)
    )
    text, bf16 = args.text_tokens, torch.bfloat16
    return {
        "layout": layout,
        "audio": randn(1, round(args.frames / args.fps * 25), cfg.audio_in_channels, dtype=bf16),
        "text_video": randn(1, text, cfg.cross_attention_dim, dtype=bf16),
        "text_audio": randn(1, text, cfg.audio_cross_attention_dim, dtype=bf16),
        "negative_video": randn(1, text, cfg.cross_attention_dim, dtype=bf16),
        "negative_audio": randn(1, text, cfg.audio_cross_attention_dim, dtype=bf16),
    }


def sampler(
    model: nn.Module,
    x: dict,
    sigmas: tuple[float, ...] = DISTILLED_SIGMAS,
    nag: bool = True,
    on_step: Callable[[int, int], None] | None = None,
) -> Callable[[], object]:
    """One whole window through audioloop's sampler, NAG on by default (what the render runs)."""
    settings = SamplerSettings(sigmas=sigmas) if nag else SamplerSettings(sigmas=sigmas, nag=None)
    inputs = tuple(x[k] for k in ("audio", "text_video", "text_audio", "negative_video", "negative_audio"))
    return lambda: sample_window(model, x["layout"], *inputs, seed=0, settings=settings, on_step=on_step)


def build(args: argparse.Namespace, device: torch.device) -> nn.Module:
    """The transformer with seeded random bf16 weights: full size on the GPU, tiny on the CPU."""
    if args.tiny:
        return tiny_transformer().to(device=device, dtype=torch.bfloat16).requires_grad_(False)
    return fullsize.transformer(str(device))


def uncompile(model: nn.Module) -> None:
    """Back to eager blocks and an empty Dynamo cache, so the next variant compiles from scratch."""
    for block in model.transformer_blocks:
        block.__dict__.pop("forward", None)
    torch._dynamo.reset()


def release(device: torch.device) -> None:
    """Free what dropped models held (compiled wrappers form reference cycles): collect, return memory."""
    torch._dynamo.reset()
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


ROTARY = ("stock", "full", "compact")  # diffusers' RoPE; RotaryAttnProcessor with full or compact tables


def compile_variant(bench: Bench, model: nn.Module, attention: str, rotary: str = ROTARY[-1]) -> None:
    """What `accel.accelerate` does for memory and compile, with the benchmark's compile backend; `rotary`
    takes the RoPE back to diffusers' processors or tables, to measure what each part saves."""
    use_two_level_modulation(model)
    use_fast_gelu(model)
    if rotary != "stock":
        use_rotary_attention(model)
    if rotary == "full":
        model.rope, model.cross_attn_rope = model.rope.inner, model.cross_attn_rope.inner
    accel.set_attention(model, attention)
    use_persistent_rows(bench.args.rows)
    accel.compile_blocks(model, backend=bench.args.compile_backend)


def sigmoid_gelu(model: nn.Module) -> None:
    """The FFs back to diffusers' GELU block with x·σ(2u) as its activation, a pass of its own after the
    up-projection: the form before the epilogue GEMM (`models/gelu.py`), to time against it."""
    for module in model.modules():
        if type(module) is FastGELU:
            module.__class__ = GELU
            module.gelu = gelu_tanh


def fp8_model(bench: Bench, recipe: str) -> nn.Module:
    """A fresh model with the recipe's linears in FP8 and its FFs fused (as `accel.accelerate` does, minus
    the device check)."""
    model = build(bench.args, bench.device)
    spec = accel.FP8_RECIPES[recipe]
    accel.quantize_fp8(model, spec, accel.fp8_layer_names(model, spec))
    use_fused_gelu(model, bench.device)
    return model


# --- per-block error ----------------------------------------------------------------------------------------


def error_block(model: nn.Module) -> nn.Module:
    """The block whose error is measured."""
    return model.transformer_blocks[min(ERROR_BLOCK, len(model.transformer_blocks) - 1)]


def capture_block_inputs(model: nn.Module, call: Callable[[], object]) -> dict:
    """The keyword arguments block 0 receives in one forward (the forward stops there)."""
    box: dict = {}

    def hook(_module: nn.Module, _args: tuple, kwargs: dict) -> None:
        box.update(kwargs)
        raise Captured

    handle = model.transformer_blocks[0].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        call()
    except Captured:
        pass
    finally:
        handle.remove()
    return box


def _cast(value: object, dtype: torch.dtype) -> object:
    """Floating tensors (also inside tuples, e.g. RoPE cos/sin) to dtype; everything else as is."""
    if isinstance(value, Tensor) and value.is_floating_point():
        return value.to(dtype)
    if isinstance(value, tuple):
        return tuple(_cast(v, dtype) for v in value)
    return value


def reference(block: nn.Module, inputs: dict) -> tuple[Tensor, Tensor]:
    """The block in fp32 (its bf16 weights upcast), TF32 off, memory-efficient attention (fp32-capable)."""
    ref = copy.deepcopy(block).float()
    for module in ref.modules():
        if hasattr(module, "processor"):
            module.processor._attention_backend = None
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    kernels = [torch.nn.attention.SDPBackend.EFFICIENT_ATTENTION]  # math would need N² memory: fail instead
    if block.scale_shift_table.device.type == "cpu":
        kernels.append(torch.nn.attention.SDPBackend.MATH)
    try:
        with torch.inference_mode(), torch.nn.attention.sdpa_kernel(kernels):
            video, audio = ref(**{k: _cast(v, torch.float32) for k, v in inputs.items()})
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    del ref
    return video.double(), audio.double()


def rel_error(block: nn.Module, inputs: dict, ref: tuple[Tensor, Tensor]) -> dict[str, float]:
    """‖out − ref‖ / ‖ref‖ of the block's video and audio outputs."""
    with torch.inference_mode():
        outputs = block(**inputs)
    return {
        name: ((out.double() - r).norm() / r.norm()).item()
        for name, out, r in zip(("video", "audio"), outputs, ref, strict=True)
    }


def fp8_block(block: nn.Module, recipe: str) -> nn.Module:
    """A copy of the block with the recipe's linears in FP8 (the recipe's bf16_blocks do not apply)."""
    spec = dataclasses.replace(accel.FP8_RECIPES[recipe], bf16_blocks=())
    holder = nn.Module()
    holder.transformer_blocks = nn.ModuleList([copy.deepcopy(block)])
    accel.quantize_fp8(holder, spec, accel.fp8_layer_names(holder, spec))
    use_fused_gelu(holder, next(block.parameters()).device)
    return holder.transformer_blocks[0]


def torchao_block(block: nn.Module) -> nn.Module:
    """A copy of the block through torchao's row-wise FP8 (dynamic activation + weight), every linear."""
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_

    copy_ = copy.deepcopy(block)
    config = Float8DynamicActivationFloat8WeightConfig(granularity=PerRow(), set_inductor_config=False)
    quantize_(copy_, config, filter_fn=lambda m, _: isinstance(m, nn.Linear) and m.out_features % 16 == 0)
    return copy_


def eager_errors(bench: Bench, model: nn.Module, inputs: dict, ref: tuple[Tensor, Tensor]) -> None:
    """Per-block errors of the eager variants: bf16 with each attention kernel, each FP8 recipe, torchao."""
    block = error_block(model)
    errors = bench.results["errors"]
    for attention in bench.args.attentions:
        accel.set_attention(model, attention)
        errors[f"bf16 eager {attention}"] = bench.attempt(
            f"error bf16 {attention}", lambda: rel_error(block, inputs, ref)
        )
    accel.set_attention(model, "sdpa")
    for recipe in accel.FP8_RECIPES:
        errors[f"fp8 {recipe} eager"] = bench.attempt(
            f"error fp8 {recipe}", lambda r=recipe: rel_error(fp8_block(block, r), inputs, ref)
        )
    if not bench.args.tiny:
        errors["torchao fp8 rowwise eager"] = bench.attempt(
            "error torchao", lambda: rel_error(torchao_block(block), inputs, ref)
        )


# --- profiles -----------------------------------------------------------------------------------------------

KERNEL_KINDS = (  # first match wins: inductor names its kernels after the ops they fuse
    ("triton (fused elementwise)", ("triton",)),
    ("attention", ("flash", "fmha", "cudnn", "attention", "sdpa")),
    ("matmul", ("gemm", "nvjet", "xmma", "cutlass", "sm90")),
)


def kind_of(kernel: str) -> str:
    """Which bucket a CUDA kernel name falls in."""
    name = kernel.lower()
    for kind, keys in KERNEL_KINDS:
        if any(key in name for key in keys):
            return kind
    return "other"


def profile(bench: Bench, name: str, fn: Callable[[], object]) -> dict:
    """Device time of one call by kernel kind, and the top kernels in a text table under $OUT."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    fn()
    with torch_profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    kinds: dict[str, float] = {}
    events = [e for e in prof.key_averages() if e.device_time_total > 0]
    for event in events:
        kind = kind_of(event.key)
        kinds[kind] = kinds.get(kind, 0.0) + event.device_time_total / 1e6
    table = prof.key_averages().table(sort_by="device_time_total", row_limit=80, max_name_column_width=160)
    bench.args.out.mkdir(parents=True, exist_ok=True)  # a run's first measurement may be this one
    (bench.args.out / f"profile_{name}.txt").write_text(table)
    return {"seconds_by_kind": kinds, "total_s": sum(kinds.values())}


def peak_allocations(trace: list[dict]) -> tuple[int, dict[int, dict]]:
    """Replay an allocator trace: the highest net growth over its start and the allocations live then."""
    live: dict[int, dict] = {}
    total = best = 0
    at_best: dict[int, dict] = {}
    for event in trace:
        if event["action"] == "alloc":
            live[event["addr"]] = event
            total += event["size"]
            if total > best:
                best, at_best = total, dict(live)
        elif event["action"] == "free_completed":
            live.pop(event["addr"], None)
            total -= event["size"]
    return best, at_best


def where(frames: list[dict]) -> str:
    """The innermost frame in generated, diffusers or audioloop code, with its source line."""
    keys = ("torchinductor", "diffusers", "audioloop", "bench")
    frame = next((f for f in frames if any(k in f["filename"] for k in keys)), frames[0] if frames else None)
    if frame is None:
        return "?"
    source = linecache.getline(frame["filename"], frame["line"]).strip()
    return f"{Path(frame['filename']).name}:{frame['line']} {frame['name']}: {source[:120]}"


def memory_at_peak(bench: Bench, fn: Callable[[], object], name: str) -> dict:
    """One call under the allocator's history: the live tensors at its peak, largest first, by origin."""
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    torch.cuda.memory._record_memory_history(stacks="python", max_entries=2_000_000)
    try:
        fn()
        torch.cuda.synchronize()
        trace = torch.cuda.memory._snapshot()["device_traces"][0]
    finally:
        torch.cuda.memory._record_memory_history(enabled=None)
    growth, live = peak_allocations(trace)
    rows = sorted(live.values(), key=lambda e: -e["size"])
    by_origin: dict[str, float] = {}
    for event in rows:
        origin = where(event["frames"])
        by_origin[origin] = by_origin.get(origin, 0.0) + event["size"] / GiB
    lines = [f"{e['size'] / 2**20:10.1f} MiB  {where(e['frames'])}" for e in rows[:60]]
    bench.args.out.mkdir(parents=True, exist_ok=True)
    (bench.args.out / f"memory_at_peak_{name}.txt").write_text("\n".join(lines) + "\n")
    return {
        "before_gib": base / GiB,
        "peak_gib": torch.cuda.max_memory_allocated() / GiB,
        "trace_peak_gib": (base + growth) / GiB,
        "events": len(trace),
        "live_at_peak": len(rows),
        "by_origin_gib": dict(sorted(by_origin.items(), key=lambda kv: -kv[1])[:40]),
    }


# --- parts --------------------------------------------------------------------------------------------------


def part_stock(bench: Bench) -> None:
    """Stock eager alone: the reference for the ratios of a run that skips the bf16 part."""
    release(bench.device)
    model = build(bench.args, bench.device)
    stock = stock_call(model, window(model, "next", bench.args, bench.device))
    bench.results["variants"]["stock eager"] = measure(bench, stock, bench.args.repeats + 2)


def part_errors(bench: Bench) -> None:
    """Per-block errors alone (what part bf16 also measures), for a run that skips the bf16 timings."""
    release(bench.device)
    model = build(bench.args, bench.device)
    inputs = capture_block_inputs(model, stock_call(model, window(model, "next", bench.args, bench.device)))
    eager_errors(bench, model, inputs, reference(error_block(model), inputs))


def part_bf16(bench: Bench) -> None:
    """Stock, attention kernels eager and compiled, the sampler compiled, recompiles, profiles, errors."""
    args, dev, res = bench.args, bench.device, bench.results
    release(dev)
    model = build(args, dev)
    res["weights_gib"] = torch.cuda.memory_allocated() / GiB if dev.type == "cuda" else 0.0
    x, x0 = window(model, "next", args, dev), window(model, "first", args, dev)
    res["video_tokens"] = {"next": x["layout"].clean.shape[1], "first": x0["layout"].clean.shape[1]}
    res["audio_tokens"] = x["audio"].shape[1]
    stock = stock_call(model, x)
    variants = res["variants"]
    variants["stock eager"] = bench.attempt("stock eager", lambda: measure(bench, stock, args.repeats + 2))
    if dev.type == "cuda":
        res["profile_stock"] = bench.attempt("profile stock", lambda: profile(bench, "stock", stock))

    inputs = capture_block_inputs(model, stock)
    ref = reference(error_block(model), inputs)
    eager_errors(bench, model, inputs, ref)

    if dev.type == "cuda":
        accel.set_attention(model, "cudnn")
        variants["eager cudnn"] = bench.attempt("eager cudnn", lambda: measure(bench, stock, args.repeats))
    for attention in args.attentions:

        def run(attention: str = attention) -> dict:
            uncompile(model)
            compile_variant(bench, model, attention)
            record = measure(bench, stock, args.repeats)
            own = capture_block_inputs(model, stock)  # the variant's own (two-level, compact RoPE)
            bench.results["errors"][f"bf16 compiled {attention}"] = rel_error(error_block(model), own, ref)
            return record

        variants[f"compiled {attention}"] = bench.attempt(f"compiled {attention}", run, need=60)
    timed_ok = {a: variants.get(f"compiled {a}") for a in args.attentions}
    best = min(
        (a for a, r in timed_ok.items() if r), key=lambda a: timed_ok[a]["step"]["median"], default=None
    )
    res["best_attention"] = best
    if best is None:
        return

    def sigmoid_pass() -> dict:
        uncompile(model)
        compile_variant(bench, model, best)
        sigmoid_gelu(model)
        return measure(bench, stock, args.repeats)

    variants[f"compiled {best}, GELU as a x·σ(2u) pass"] = bench.attempt("gelu pass", sigmoid_pass, need=60)
    uncompile(model)
    compile_variant(bench, model, best)
    if dev.type == "cuda":
        res["profile_compiled_bf16"] = bench.attempt(
            "profile compiled", lambda: profile(bench, "compiled_bf16", stock), need=30
        )
    res["recompiles"] = bench.attempt("recompiles", lambda: recompiles(bench, model, x, x0), need=90)
    steps = len(DISTILLED_SIGMAS) - 1
    variants[f"sampler NAG compiled {best}"] = bench.attempt(
        "sampler compiled", lambda: measure(bench, sampler(model, x), 1, steps, warm=False), need=60
    )


def recompiles(bench: Bench, model: nn.Module, x: dict, x0: dict) -> dict:
    """Graphs compiled while the sampler (NAG on) alternates window layouts: first pass vs. later passes."""
    one_step = (1.0, 0.0)
    before = graphs()
    for data in (x0, x):
        sampler(model, data, one_step)()
    first_pass = graphs() - before
    for _ in range(2):
        for data in (x0, x):
            sampler(model, data, one_step)()
    return {"first_pass_graphs": first_pass, "later_graphs": graphs() - before - first_pass}


def part_fp8(bench: Bench) -> None:
    """Each FP8 recipe compiled with the best attention kernel."""
    args, dev, res = bench.args, bench.device, bench.results
    release(dev)
    attention = res.get("best_attention") or args.attention
    for recipe in args.recipes:

        def run(recipe: str = recipe) -> dict:
            model = fp8_model(bench, recipe)
            x = window(model, "next", args, dev)
            stock = stock_call(model, x)
            compile_variant(bench, model, attention)
            record = measure(bench, stock, args.repeats)
            if recipe == args.recipes[0] and dev.type == "cuda":
                res[f"profile_fp8_{recipe}"] = profile(bench, f"fp8_{recipe}", stock)
            return record

        release(dev)

        res["variants"][f"fp8 {recipe} compiled {attention}"] = bench.attempt(f"fp8 {recipe}", run, need=70)


def part_offload(bench: Bench) -> None:
    """bf16 and FP8 (first recipe), compiled: resident, then streamed from pinned host memory under a cap."""
    args, dev, res = bench.args, bench.device, bench.results
    attention = res.get("best_attention") or args.attention
    total = torch.cuda.get_device_properties(dev).total_memory
    release(dev)
    for mode in ("bf16", f"fp8 {args.recipes[0]}"):

        def run(mode: str = mode) -> dict:
            model = build(args, dev) if mode == "bf16" else fp8_model(bench, args.recipes[0])
            x = window(model, "next", args, dev)
            stock = stock_call(model, x)
            compile_variant(bench, model, attention)
            resident = measure(bench, stock, args.repeats)
            res["variants"][f"{mode} compiled {attention} (resident, for offload)"] = resident
            streamer = accel.BlockStreamer(model.transformer_blocks, dev)
            begin = time.perf_counter()
            for block in model.transformer_blocks:
                streamer.adopt(block)
            streamer.start()
            pin_s = time.perf_counter() - begin
            torch.cuda.empty_cache()
            torch.cuda.set_per_process_memory_fraction(args.offload_cap_gib * GiB / total)
            try:
                record = measure(bench, stock, args.repeats)
            finally:
                torch.cuda.set_per_process_memory_fraction(1.0)
            record["pin_s"] = pin_s
            record["cap_gib"] = args.offload_cap_gib
            record["ratio_to_resident"] = record["step"]["median"] / resident["step"]["median"]
            return record

        release(dev)

        res["variants"][f"{mode} compiled {attention} offload"] = bench.attempt(
            f"offload {mode}", run, need=120
        )


def part_memory(bench: Bench) -> None:
    """Compiled bf16 with each RoPE variant asked for: what is resident before a step (weights, inputs),
    the step's time and per-block error, and what is live at its peak."""
    args, dev, res = bench.args, bench.device, bench.results
    res["memory"] = {}
    for rotary in args.rotary:

        def run(rotary: str = rotary) -> dict:
            model = build(args, dev)
            stock = stock_call(model, window(model, "next", args, dev))
            ref = reference(error_block(model), capture_block_inputs(model, stock))
            ref = tuple(r.cpu() for r in ref)  # off the device while its memory is measured
            compile_variant(bench, model, res.get("best_attention") or args.attention, rotary)
            record = measure(bench, stock, args.repeats)
            weights = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))
            record["weights_gib"] = weights / GiB
            if dev.type == "cuda":
                record.update(memory_at_peak(bench, stock, rotary))
            own = capture_block_inputs(model, stock)
            record["error"] = rel_error(error_block(model), own, tuple(r.to(dev) for r in ref))
            return record

        release(dev)
        res["memory"][f"rope {rotary}"] = bench.attempt(f"memory rope {rotary}", run, need=90)


def part_warm(bench: Bench) -> None:
    """Per mode, two fresh processes on one fresh cache dir: the first compiles (cold), the second loads."""
    args = bench.args
    release(bench.device)
    cache = args.cache_dir.with_name(args.cache_dir.name + "-warm")
    common = [
        "--out",
        str(args.out),
        "--cache-dir",
        str(cache),
        "--attention",
        bench.results.get("best_attention") or args.attention,
        "--width",
        str(args.width),
        "--height",
        str(args.height),
        "--frames",
        str(args.frames),
        *(["--tiny"] if args.tiny else []),
    ]
    for mode in ("bf16", args.recipes[0]):
        for start in ("cold", "warm"):
            command = [sys.executable, __file__, "--warm-child", mode, *common]
            out = bench.attempt(f"{start} start {mode}", lambda c=command: run_child(c), need=120)
            bench.results["starts"][f"{start} {mode}"] = out


def run_child(command: list[str]) -> dict:
    """Run a child benchmark process and return the JSON it prints last (its stderr's end if it fails)."""
    done = subprocess.run(command, capture_output=True, text=True, timeout=400)
    if done.returncode:
        raise RuntimeError(f"child exited {done.returncode}: {done.stderr[-1500:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def warm_child(args: argparse.Namespace) -> None:
    """In a fresh process: build, accelerate as the render will, time the sampler's first step per layout."""
    device = torch.device("cpu" if args.tiny else "cuda")
    begin = time.perf_counter()
    model = build(args, device)
    fp8 = None if args.warm_child == "bf16" else args.warm_child
    accel.accelerate(model, accel.AccelSettings(attention=args.attention, fp8=fp8), device)
    setup = time.perf_counter() - begin
    calls = {
        kind: sampler(model, window(model, kind, args, device), (1.0, 0.0)) for kind in ("next", "first")
    }
    first = {kind: wall(call, device) for kind, call in calls.items()}
    steady = {kind: statistics.median(timed(call, 2, device)) for kind, call in calls.items()}
    warmup = sum(first[kind] - steady[kind] for kind in calls)
    print(json.dumps({"setup_s": setup, "first_step_s": first, "steady_s": steady, "warmup_s": warmup}))


def main() -> None:
    """Parse arguments and run the parts asked for (or one warm-start child)."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--parts", default="bf16,fp8")
    window_options(parser)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--attentions", default="sdpa,cudnn,flash")
    parser.add_argument(
        "--attention", default="sdpa", help="kernel for fp8/offload/warm when bf16 did not run"
    )
    parser.add_argument("--recipes", default="video,video-tensorwise,video-edges")
    parser.add_argument("--rotary", default=",".join(ROTARY), help="RoPE variants of part memory")
    parser.add_argument("--offload-cap-gib", type=float, default=12.0)
    parser.add_argument("--compile-backend", default="inductor")
    parser.add_argument(
        "--rows", type=int, default=ROW_LIMIT, help="persistent row reductions up to this size; 0: inductor's"
    )
    parser.add_argument("--cache-dir", type=Path, default=Path("/tmp/audioloop-bench-cache"))
    parser.add_argument("--deadline", type=float, default=560.0, help="seconds; later parts are skipped")
    parser.add_argument("--skip", default="", help="measurements to leave out, comma-separated names")
    parser.add_argument("--warm-child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.attentions = args.attentions.split(",")
    args.recipes = args.recipes.split(",")
    args.rotary = args.rotary.split(",")
    args.skip = set(filter(None, args.skip.split(",")))
    os.environ["AUDIOLOOP_CACHE_DIR"] = str(args.cache_dir)
    accel.use_compile_cache(accel.compile_cache_dir())
    torch.backends.cuda.matmul.allow_tf32 = True
    if args.warm_child:
        warm_child(args)
        return
    bench = Bench(args)
    parts = {
        "stock": part_stock,
        "errors": part_errors,
        "bf16": part_bf16,
        "fp8": part_fp8,
        "offload": part_offload,
        "warm": part_warm,
        "memory": part_memory,
    }
    for name in args.parts.split(","):
        bench.attempt(f"part {name}", lambda n=name: parts[n](bench))
    bench.save()
    print_table(bench.results)


def print_table(res: dict) -> None:
    """The short table the device reply carries."""
    print(f"\n{res['gpu']}  torch {res['torch']}  {res['shape']}  tokens {res.get('video_tokens')}")
    stock = (res["variants"].get("stock eager") or {}).get("step", {}).get("median")
    for name, rec in res["variants"].items():
        if not rec or "step" not in rec:
            continue
        step = rec["step"]
        ratio = f"{step['median'] / stock:5.3f}x" if stock else "  -   "
        print(
            f"{name:52s} {step['median']:7.3f} s ({step['min']:.3f}-{step['max']:.3f}) {ratio} "
            f"peak {rec.get('peak_gib', 0):5.1f} GiB  first {rec['first_call_s']:6.1f} s  "
            f"graphs {rec['graphs_compiled']}"
        )
    for name, start in res["starts"].items():
        if start:
            print(f"{name:18s} setup {start['setup_s']:6.1f} s  warm-up {start['warmup_s']:6.1f} s  {start}")
    for name, err in res["errors"].items():
        if err:
            print(f"error {name:40s} video {100 * err['video']:6.2f}%  audio {100 * err['audio']:6.2f}%")
    for name, memory in res.get("memory", {}).items():
        if memory:
            print(
                name, {k: v for k, v in memory.items() if k not in ("by_origin_gib", "step")}, memory["step"]
            )
            for origin, gib in list(memory.get("by_origin_gib", {}).items())[:15]:
                print(f"  {gib:6.2f} GiB  {origin}")
    for name, why in res["failures"].items():
        print(f"FAILED {name}: {why[:300]}")


if __name__ == "__main__":
    main()
