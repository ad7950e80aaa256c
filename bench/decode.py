"""Making the per-window VAE decode cheaper: stock vs fused decoder, accuracy, profile, overlap, x264.

Full-size LTX-2.3 with random bf16 weights (`--tiny`: the tiny model on the CPU, to test this script). Parts,
in the order given by `--parts`; everything lands in `$OUT/decode.json` after each measurement, and later
measurements are skipped once `--deadline` seconds are near, so a run cut short still reports what it did.

- spans: `decode_video` on each decode span of `--spans` (LATENTSxWIDTHxHEIGHT; default the render's span,
  72 latents = 56 new + 2×8 margin at 832×480, and the upscale's two- and three-tile spans at 1664×960),
  in the render's spatial tiles (`latents.tile_grid`: 832×480 is one), through diffusers' stock
  decoder forward on contiguous weights, through `models/decoder.py` (fused norm/SiLU/padding as Triton
  kernels, channels-last) and, on CUDA, through the same forward with its passes as the torch.compile'd
  helpers it had before ("compiled"), and through `models/decoder.py` asked only for the frames a render span
  between two others emits ("emitted": 56 of 72 latents, each activation cropped in time to what those
  frames depend on). All copy the frames to the host through page-locked memory. Each:
  first-call seconds (the fused ones' include their kernels' loads or compiles), median/min/max of
  `--repeats` after it (host wall, CUDA-synchronised, as the render waits for it), peak GPU memory, and
  the fused frames' max and mean abs difference in uint8 levels against the stock ones.
- stream: the render's decode as it is, one `VideoStream` over the timeline: a steady push and a final one
  against the cropped span a window decoded before it streamed, and a timeline pushed in three pieces
  against its whole decode, in bf16 and in fp32 (`part_stream`).
- accuracy: one short span (17 latents, 832×480, untiled) through the stock and the fused decoder in bf16
  and the stock decoder in fp32 (the same weights upcast, TF32 off): ‖out − ref‖ / ‖ref‖ of each bf16 one.
- profile: one stock, one fused and one fused "emitted" decode of the first span under torch.profiler: CUDA
  time by kernel kind.
- overlap: the transformer compiled as the render does (`accel.accelerate`), one whole window ≥ 1 at
  832×480×497 through `sample_window` (8 steps, NAG on) on the main thread while another thread decodes one
  span on a side CUDA stream (which waits on an event recorded on the main stream). Per repeat, interleaved:
  T_s (sampling alone), T_d (the side-stream decode alone), T_both (both at once, with the sampling's own
  wall inside it); hidden = (T_s + T_d − T_both) / T_d is the fraction of the decode that the overlap hides.
- x264: frames per second of audioloop's VideoWriter (preset medium, CRF 18) on smooth moving frames (like
  footage) at 832×480 and 1664×960, fed yuv420p planes as the render feeds it (converted beforehand).

`--tiny` runs every part at 576×64 on the CPU (compiles skipped: the fused decoder is eager there); its
timings mean nothing, it only checks the script.

    python bench/decode.py --out $OUT --parts spans,accuracy,profile
    python bench/decode.py --out $OUT --parts stream --spans 72x832x480
    python bench/decode.py --out $OUT --parts spans --cache /tmp/c   # twice: the second runs warm
"""

from __future__ import annotations

import argparse
import copy
import functools
import gc
import itertools
import math
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from unittest.mock import patch

import torch
from diffusers import AutoencoderKLLTX2Video
from torch import Tensor, nn

import fullsize
from audioloop.decode import STREAM_REACH, decoded_frames, first_frame
from audioloop.media.writer import VideoWriter
from audioloop.media.yuv import yuv420p
from audioloop.models import accel, decoder
from audioloop.models.latents import VideoStream, decode_video, denormalize_video
from audioloop.models.tiny import tiny_transformer, tiny_video_vae
from audioloop.plan import TEMPORAL
from step_variants import sampler, window
from timing import Run, summary, sync, wall

GiB = 2**30
# --tiny: a geometry the tiny model runs through on two CPU cores; one decode tile, as 832×480 is.
TINY = {"width": 576, "height": 64, "frames": 65, "latents": 5, "text_tokens": 16, "spans": "20x576x64"}
SPANS = "72x832x480,48x1664x960,64x1664x960"  # render span; upscale spans of two and three 16-latent tiles
SPAN_NEED_S = 60.0
MARGIN = 8  # latents each side that a render span decoded before the decode streamed
FINAL_LATENTS = 49  # the 3:30 render's last span: latents 623–672
OVERLAP_NEED_S = 200.0  # build, compile and warm the transformer, one repeat
X264_NEED_S = 60.0


class Bench(Run):
    """Shared state of one run: settings, the VAE and the first span's latents, the results so far."""

    def __init__(self, args: argparse.Namespace) -> None:
        """Start the clock and the results record; build the VAE and the first decode span's latents."""
        super().__init__(args, "decode")
        self.vae = build_vae(self.device, args.tiny)
        self.spans = [tuple(int(v) for v in span.split("x")) for span in args.spans.split(",")]
        self.z = span_latents(self.vae, self.spans[0], self.device)
        self.results.update(spans={})


def timed(fn: Callable[[], Tensor], device: torch.device, repeats: int) -> tuple[dict, Tensor]:
    """First-call seconds, then median/min/max of `repeats` CUDA-synchronised walls and their peak GPU memory
    (GiB); and the last call's result."""
    first = wall(fn, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times, out = [], None
    for _ in range(repeats):
        sync(device)
        begin = time.perf_counter()
        out = fn()
        sync(device)
        times.append(time.perf_counter() - begin)
    record = {"first_call_s": first, **summary(times)}
    if device.type == "cuda":
        record["peak_gib"] = torch.cuda.max_memory_allocated(device) / GiB
    return record, out


def release(device: torch.device) -> None:
    """Free what dropped models held (compiled wrappers form reference cycles): collect, return memory."""
    torch._dynamo.reset()
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def build_vae(device: torch.device, tiny: bool) -> AutoencoderKLLTX2Video:
    """The 2.3 video VAE with seeded random bf16 weights: full size on the GPU, tiny on the CPU."""
    if tiny:
        return tiny_video_vae().to(device=device, dtype=torch.bfloat16).requires_grad_(False)
    return fullsize.build(AutoencoderKLLTX2Video, fullsize.VIDEO_VAE_2_3, str(device), torch.bfloat16, 1)


def span_latents(vae: AutoencoderKLLTX2Video, span: tuple[int, int, int], device: torch.device) -> Tensor:
    """Seeded normalised latents of one decode span (latents, width, height), [1, C, latents, H/32, W/32]."""
    latents, width, height = span
    gen = torch.Generator(device=device).manual_seed(0)
    shape = (1, vae.config.latent_channels, latents, height // 32, width // 32)
    return torch.randn(shape, generator=gen, device=device)


@contextmanager
def stock(vae: AutoencoderKLLTX2Video) -> Iterator[None]:
    """Inside the block the decoder runs diffusers' own forward on contiguous weights, whether or not
    `decoder.install` ran; as it was after."""
    fused = vae.decoder.__dict__.pop("forward", None)
    vae.decoder.to(memory_format=torch.contiguous_format)
    try:
        yield
    finally:
        if fused is not None:
            vae.decoder.forward = fused
            if next(vae.decoder.parameters()).is_cuda:
                vae.decoder.to(memory_format=torch.channels_last_3d)


def frame_difference(frames: Tensor, reference: Tensor) -> dict[str, float]:
    """Max and mean abs difference of two uint8 frame stacks, in uint8 levels."""
    diff = (frames.to(torch.int16) - reference.to(torch.int16)).abs_()
    return {"max_abs": int(diff.max()), "mean_abs": float(diff.sum(dtype=torch.float64)) / diff.numel()}


@functools.cache
def compiled_pass(fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """fn with a channels-last result, torch.compile'd with static shapes but time: the fused decoder's
    passes up to the fifteenth session (one graph per activation shape, traced again in every process)."""
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    return torch.compile(
        lambda x, *args: fn(x, *args).contiguous(memory_format=torch.channels_last_3d),
        fullgraph=True,
        dynamic=False,
    )


def _dynamic_time(x: Tensor) -> Tensor:
    """x with its time axis marked dynamic (a span's length varies), as the compiled passes had it."""
    if x.shape[2] > 1:
        torch._dynamo.mark_dynamic(x, 2)
    return x


@contextmanager
def compiled_passes() -> Iterator[None]:
    """Inside the block the fused decoder runs as it did before its Triton kernels: its passes as the compiled
    helpers, each conv adding its own bias."""

    def conv_with_bias(conv: nn.Module, x: Tensor) -> tuple[Tensor, None]:
        return conv(x), None

    def pad(x: Tensor, conv: nn.Module, causal: bool, norm: bool, bias: None = None) -> Tensor:
        fn = decoder.norm_silu_pad if norm else decoder.pad_time
        return compiled_pass(fn)(_dynamic_time(x), *decoder.time_padding(conv, causal))

    def spread(x: Tensor, stride: tuple[int, int, int], bias: None, drop: bool) -> Tensor:
        return compiled_pass(decoder.depth_to_space)(_dynamic_time(x), stride, drop)

    with (
        patch.object(decoder, "_conv", conv_with_bias),
        patch.object(decoder, "_pad", pad),
        patch.object(decoder, "_spread", spread),
    ):
        yield


def emitted(latents: int) -> tuple[int, int]:
    """The decoded frames [start, stop) that a render span of `latents` between two others emitted before
    the decode streamed: all but MARGIN latents on each side (57–505 of 569 for 72 latents; a short span
    keeps half of it)."""
    margin = min(MARGIN, (latents - 1) // 4)
    return TEMPORAL * margin - (TEMPORAL - 1), decoded_frames(latents) - TEMPORAL * margin


def measure_span(bench: Bench, span: tuple[int, int, int]) -> None:
    """Stock, fused (Triton passes), fused with compiled passes, and fused asked only for the frames a
    render span emits ("emitted", cropped in time): one span each, tiled as the render does; the fused
    frames against the stock ones (the emitted ones also against the whole fused decode's)."""
    vae, repeats = bench.vae, bench.args.repeats
    z = bench.z if span == bench.spans[0] else span_latents(vae, span, bench.device)
    name = "x".join(map(str, span))
    kept = emitted(span[0])
    with stock(vae):
        stock_rec, stock_frames = timed(lambda: decode_video(vae, z), bench.device, repeats)
    decoder.install(vae.decoder)
    records = {"stock": stock_rec}
    whole = None
    for kind, scope, frames in (
        ("fused", nullcontext, None),
        ("emitted", nullcontext, kept),
        ("compiled", compiled_passes, None),
    ):
        if kind == "compiled" and bench.device.type != "cuda":
            continue
        with scope():
            rec, out = timed(lambda f=frames: decode_video(vae, z, frames=f), bench.device, repeats)
        rec["vs_stock"] = frame_difference(
            out, stock_frames if frames is None else stock_frames[slice(*kept)]
        )
        rec["x_stock"] = rec["median"] / stock_rec["median"]
        if kind == "fused":
            whole = out
        elif kind == "emitted":
            rec["frames"] = list(kept)
            rec["vs_fused"] = frame_difference(out, whole[slice(*kept)])
        records[kind] = rec
    bench.results["spans"][name] = records


def part_spans(bench: Bench) -> None:
    """Every span, stock then fused."""
    for span in bench.spans:
        label = "x".join(map(str, span))
        bench.attempt(f"span {label}", lambda s=span: measure_span(bench, s), SPAN_NEED_S)
    release(bench.device)


def part_stream(bench: Bench) -> None:
    """The render's decode as it is now, one VideoStream over the timeline, against the cropped span it
    replaced ("emitted", the first span's middle frames): a steady push (the first span's latents less
    2·MARGIN, after a primer of the first span) and a final push (FINAL_LATENTS more, ending the timeline),
    CUDA-synchronised walls, yuv420p planes out as the render takes them; then the frames of a 40-latent
    timeline pushed in three pieces against its whole decode (the Triton passes' kept frames, on CUDA)."""
    vae, repeats, device, z = bench.vae, bench.args.repeats, bench.device, bench.z
    decoder.install(vae.decoder)
    latents = z.shape[2]
    primed = first_frame(latents - STREAM_REACH)
    new = z[:, :, 2 * MARGIN :]
    stream = VideoStream(vae, yuv=True)
    stream(z, (0, primed))
    done = primed

    def steady() -> Tensor:
        nonlocal done
        done += TEMPORAL * new.shape[2]
        return stream(new, (done - TEMPORAL * new.shape[2], done))

    records = {
        "emitted": timed(lambda: decode_video(vae, z, frames=emitted(latents), yuv=True), device, repeats)[0],
        "steady": timed(steady, device, repeats)[0],
    }
    records["steady"]["x_emitted"] = records["steady"]["median"] / records["emitted"]["median"]
    finals, tail = [], z[:, :, :FINAL_LATENTS]
    for _ in range(repeats):
        flush = VideoStream(vae, yuv=True)
        flush(z, (0, primed))
        sync(device)
        began = time.perf_counter()
        flush(tail, (primed, decoded_frames(latents + tail.shape[2])), last=True)
        sync(device)
        finals.append(time.perf_counter() - began)
    records["final"] = summary(finals) | {"latents": tail.shape[2]}
    timeline = span_latents(vae, (40 if not bench.args.tiny else 20, *bench.spans[0][1:]), device)
    whole = decode_video(vae, timeline)
    pieces, cuts, parts, done = (
        VideoStream(vae),
        [0, 20, 30, 40] if not bench.args.tiny else [0, 15, 17, 20],
        [],
        0,
    )
    for start, end in itertools.pairwise(cuts):
        stop = whole.shape[0] if end == cuts[-1] else first_frame(end - STREAM_REACH)
        parts.append(pieces(timeline[:, :, start:end], (done, stop), last=end == cuts[-1]))
        done = stop
    records["vs_whole"] = frame_difference(torch.cat(parts), whole)
    records["vs_whole_fp32"] = stream_error_fp32(vae, cuts, device)
    bench.results["stream"] = records
    release(device)


def stream_error_fp32(vae: AutoencoderKLLTX2Video, cuts: list[int], device: torch.device) -> dict:
    """The decoder in float32 (TF32 off) at 8×8 latents, streamed in the pieces `cuts` against its whole
    decode: relative L2 error over all frames and per piece's frames. Without bf16's rounding (which random
    weights amplify through ~50 convs, whatever the conv shapes) only a wrong kept frame would show."""
    model = copy.deepcopy(vae.decoder).float()
    z = torch.randn(1, vae.config.latent_channels, cuts[-1], 8, 8, device=device, generator=None)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        with torch.inference_mode():
            whole = decoder.forward(model, z)
            stream = decoder.Stream(model)
            parts = [stream.push(z[:, :, a:b], last=b == cuts[-1]) for a, b in itertools.pairwise(cuts)]
    finally:
        torch.backends.cudnn.allow_tf32 = True
    parts = [p for p in parts if p is not None]
    out, starts = torch.cat(parts, dim=2), itertools.accumulate([0, *(p.shape[2] for p in parts)])

    def rel(a: Tensor, b: Tensor) -> float:
        return float((a.double() - b.double()).norm() / b.double().norm())

    bounds = list(starts)
    return {
        "rel_l2": rel(out, whole),
        "per_piece": [rel(out[:, :, a:b], whole[:, :, a:b]) for a, b in itertools.pairwise(bounds)],
    }


def part_accuracy(bench: Bench) -> None:
    """Stock and fused bf16 decodes of a short span against the stock decoder in fp32 (same weights)."""
    vae = bench.vae
    latents = 17 if not bench.args.tiny else 3
    z = span_latents(vae, (latents, *bench.spans[0][1:]), bench.device)
    z = denormalize_video(z, vae).to(torch.bfloat16)
    reference = copy.deepcopy(vae.decoder).float()
    reference.__dict__.pop("forward", None)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    with torch.inference_mode():
        ref = reference(z.float(), None).double()
        del reference
        release(bench.device)
        with stock(vae):
            ours = {"stock": vae.decoder(z, None)}
        decoder.install(vae.decoder)
        ours["fused"] = vae.decoder(z, None)
    torch.backends.cudnn.allow_tf32 = True
    rec = bench.results["accuracy"] = {"latents": latents}
    for name, out in ours.items():
        rec[f"{name}_rel_err"] = float((out.double() - ref).norm() / ref.norm())


def part_profile(bench: Bench) -> None:
    """CUDA time of one stock and one fused decode of the first span by kernel kind (conv, fused Triton,
    copies, other); the 25 costliest kernels of each to $OUT/decode_profile.txt."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    if bench.device.type != "cuda":
        bench.results["profile"] = "CUDA only"
        return
    vae, z = bench.vae, bench.z
    decoder.install(vae.decoder)
    tables = []
    fused = lambda _vae: nullcontext()  # noqa: E731
    kept = emitted(z.shape[2])
    for name, setup, frames in (("stock", stock, None), ("fused", fused, None), ("emitted", fused, kept)):
        with setup(vae):
            decode_video(vae, z, frames=frames)  # compiled and warm
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                decode_video(vae, z, frames=frames)
                sync(bench.device)
        kinds: dict[str, float] = {}
        for event in prof.key_averages():
            if event.device_type == DeviceType.CUDA:
                kind = kernel_kind(event.key)
                kinds[kind] = kinds.get(kind, 0.0) + event.self_device_time_total / 1e6
        bench.results.setdefault("profile", {})[name] = dict(sorted(kinds.items(), key=lambda kv: -kv[1]))
        tables.append(f"{name}\n" + prof.key_averages().table(sort_by="self_device_time_total", row_limit=25))
    (bench.args.out / "decode_profile.txt").write_text("\n\n".join(tables))


def kernel_kind(name: str) -> str:
    """A kernel's kind from its name: cuDNN/CUTLASS convolution, Triton (fused), copy, or other."""
    low = name.lower()
    if any(key in low for key in ("conv", "cudnn", "sm90_xmma", "implicit", "wgrad", "dgrad", "fprop")):
        return "conv"
    if low.startswith(("triton", "pad_rows", "spread_rows")):  # inductor's kernels, decoder_kernels'
        return "triton (fused)"
    if "memcpy" in low or "copy" in low:
        return "copy"
    return "other"


def accelerated(args: argparse.Namespace, device: torch.device) -> nn.Module:
    """The transformer as the render runs it: blocks compiled (`accel.accelerate`, bf16 or `--fp8`, SDPA);
    tiny on the CPU with Dynamo's tracing alone."""
    if args.tiny:
        model = tiny_transformer().to(device=device, dtype=torch.bfloat16).requires_grad_(False)
        accel.compile_blocks(model, backend="eager")
        return model
    model = fullsize.transformer(str(device))
    accel.accelerate(model, accel.AccelSettings(compile=True, fp8="all" if args.fp8 else None), device)
    return model


def concurrently(
    sample: Callable[[], object] | None,
    decode: Callable[[], object],
    side: torch.cuda.Stream | None,
    device: torch.device,
) -> dict[str, float]:
    """Walls of `decode` on a background thread on stream `side`, and of `sample` run meanwhile on this thread
    and stream (None: the decode alone): each alone, both together (until all work is done), peak memory."""
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    ready = torch.cuda.Event() if side is not None else None
    if ready is not None:
        ready.record()  # in a render: the window's latents are done on the main stream
    box: dict = {}

    def background() -> None:
        """The decode on the side stream once the main stream's latents are ready."""
        begin = time.perf_counter()
        try:
            with torch.cuda.stream(side):
                if ready is not None:
                    side.wait_event(ready)
                decode()  # ends in a blocking copy of the frames to the host, as the render's does
                if side is not None:
                    side.synchronize()
            box["decode_s"] = time.perf_counter() - begin
        except Exception as exc:
            box["error"] = exc

    begin = time.perf_counter()
    thread = threading.Thread(target=background, name="decode")
    thread.start()
    if sample is not None:
        sample()
        if device.type == "cuda":
            torch.cuda.current_stream(device).synchronize()
        box["sample_s"] = time.perf_counter() - begin
    thread.join()
    sync(device)
    box["both_s"] = time.perf_counter() - begin
    if "error" in box:
        raise box["error"]
    if device.type == "cuda":
        box["peak_gib"] = torch.cuda.max_memory_allocated(device) / GiB
    return box


def part_overlap(bench: Bench) -> None:
    """Sampling one window alone, the side-stream decode alone, and both at once: interleaved repeats."""
    args, device = bench.args, bench.device
    rec = bench.results["overlap"] = {"shape": f"{args.width}x{args.height}x{args.frames}", "runs": []}
    begin = time.perf_counter()
    model = accelerated(args, device)
    x = window(model, "next", args, device)
    rec["video_tokens"] = x["layout"].clean.shape[1]
    sample = sampler(model, x)  # 8 distilled steps, NAG on: what the render runs
    side = torch.cuda.Stream(device) if device.type == "cuda" else None
    decoder.install(bench.vae.decoder)  # the render's decoder (its kernels compile in the first decode)

    def decode() -> None:
        """The render's decode of one span, its frames dropped."""
        decode_video(bench.vae, bench.z, frames=emitted(bench.z.shape[2]))

    rec["setup_s"] = time.perf_counter() - begin
    rec["first_sample_s"] = wall(sample, device)  # compiles the blocks for this layout
    rec["first_side_decode_s"] = concurrently(None, decode, side, device)["both_s"]
    bench.save()
    for index in range(args.repeats):
        began = time.perf_counter()
        run = {"sample_s": wall(sample, device)}
        run["decode_s"] = concurrently(None, decode, side, device)["both_s"]
        both = concurrently(sample, decode, side, device)
        run["both_s"] = both.pop("both_s")
        run.update({f"{key}_in_both": value for key, value in both.items()})
        run["hidden"] = (run["sample_s"] + run["decode_s"] - run["both_s"]) / run["decode_s"]
        run["sample_slowdown"] = run["sample_s_in_both"] / run["sample_s"]
        rec["runs"].append(run)
        bench.save()
        if index + 1 < args.repeats and bench.left() < 1.5 * (time.perf_counter() - began):
            rec["stopped"] = f"after {index + 1} repeats: {bench.left():.0f} s left"
            break
    for key in rec["runs"][0]:
        rec[key] = summary([run[key] for run in rec["runs"]])
    del model, x, sample
    release(device)


def encode_fps(frames: Tensor, preset: str) -> float:
    """Frames per second through VideoWriter (H.264 CRF 18, no audio) of yuv420p planes [F, 3H/2, W], wall
    clock."""
    with tempfile.TemporaryDirectory() as folder:
        count = frames.shape[0]
        start = time.perf_counter()
        with VideoWriter(
            Path(folder) / "x.mp4",
            width=frames.shape[2],
            height=frames.shape[1] * 2 // 3,
            fps=25.0,
            audio=None,
            total_frames=count,
            preset=preset,
        ) as video:
            video.write_yuv420p(frames)
        return count / (time.perf_counter() - start)


def smooth_frames(count: int, height: int, width: int) -> Tensor:
    """A moving gradient with a drifting disc: compressible, like footage. Built a frame at a time into
    uint8, so a song-length clip costs its own size in host memory and no more."""
    y = torch.arange(height).view(-1, 1)
    x = torch.arange(width).view(1, -1)
    frames = torch.empty(count, height, width, 3, dtype=torch.uint8)
    for t in range(count):
        disc = (x - width / 2 - 100 * math.sin(t / 20)) ** 2 + (y - height / 2) ** 2 < 80**2
        frames[t, ..., 0] = (x + 2 * t) % 256
        frames[t, ..., 1] = (y + t) % 256
        frames[t, ..., 2] = 128 + 100 * disc
    return frames


def part_x264(bench: Bench) -> None:
    """VideoWriter's frames per second (preset medium, CRF 18) on smooth moving frames at the render's and
    the upscale's size, fed yuv420p planes as the render feeds it."""
    rec = bench.results["x264"] = {}
    for count, height, width in ((250, bench.args.height, bench.args.width), (100, 960, 1664)):
        rec[f"{width}x{height}_fps"] = encode_fps(yuv420p(smooth_frames(count, height, width)), "medium")
        bench.save()


def print_table(res: dict) -> None:
    """The short table the device reply carries."""
    print(f"\n{res['gpu']}  torch {res['torch']}")
    if res["spans"]:
        head = ("span", "forward", "median s", "(min-max)", "peak GiB", "first s")
        print("{:22s} {:7s} {:>9s} {:>17s} {:>8s} {:>8s}".format(*head))
    for name, recs in res["spans"].items():
        for kind, rec in recs.items():
            spread = f"({rec['min']:6.3f}-{rec['max']:6.3f})"
            print(
                f"{name:22s} {kind:7s} {rec['median']:9.3f} {spread:>17s} {rec.get('peak_gib', 0.0):8.1f} "
                f"{rec['first_call_s']:8.1f}"
            )
        for kind in ("fused", "emitted", "compiled"):
            if kind in recs:
                diff = recs[kind]["vs_stock"]
                print(
                    f"{'':22s} {kind} {recs[kind]['x_stock']:.3f}x stock; |Δ| max {diff['max_abs']}", end=""
                )
                print(f", mean {diff['mean_abs']:.4f} levels")
        if "emitted" in recs:
            diff = recs["emitted"]["vs_fused"]
            print(
                f"{'':22s} emitted vs fused frames {recs['emitted']['frames']}: |Δ| max {diff['max_abs']}",
                end="",
            )
            print(f", mean {diff['mean_abs']:.4f} levels")
    for name, rec in res.get("stream", {}).items():
        print(f"stream {name:9s} {rec}")
    for name, value in res.get("accuracy", {}).items():
        print(f"accuracy {name:16s} {value}")
    for name, kinds in (res.get("profile") or {}).items() if isinstance(res.get("profile"), dict) else ():
        print(f"profile {name} (s): " + ", ".join(f"{k} {v:.3f}" for k, v in kinds.items()))
    over = res.get("overlap", {})
    if "hidden" in over:
        med = {key: value["median"] for key, value in over.items() if isinstance(value, dict)}
        repeats = len(over["runs"])
        print(f"\noverlap, window {over['shape']}, {over['video_tokens']} tok, medians of {repeats}:")
        rows = (
            ("T_s   sampling alone", f"{med['sample_s']:.3f} s (first call {over['first_sample_s']:.1f} s)"),
            ("T_d   side decode alone", f"{med['decode_s']:.3f} s"),
            ("T_both", f"{med['both_s']:.3f} s, peak {med.get('peak_gib_in_both', 0.0):.1f} GiB"),
            (
                "sampling, decode beside",
                f"{med['sample_s_in_both']:.3f} s ({med['sample_slowdown']:.3f}x alone)",
            ),
            ("decode, sampling beside", f"{med['decode_s_in_both']:.3f} s"),
            ("hidden (T_s+T_d-T_both)/T_d", f"{100 * med['hidden']:.0f}%"),
        )
        for label, value in rows:
            print(f"  {label:28s} {value}")
    for name, value in res.get("x264", {}).items():
        print(f"x264 {name:20s} {value:7.1f}")
    for name, why in res["failures"].items():
        print(f"FAILED {name}: {why[:300]}")


def main() -> None:
    """Parse arguments and run the parts asked for."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument(
        "--parts",
        default="spans,accuracy,profile",
        help="any of spans,stream,accuracy,profile,overlap,x264, in order",
    )
    parser.add_argument("--spans", default=SPANS, help="decode spans LATENTSxWIDTHxHEIGHT, comma-separated")
    parser.add_argument("--width", type=int, default=832, help="the overlap's sampled window")
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--frames", type=int, default=497, help="the sampled window's frames (overlap)")
    parser.add_argument("--fps", type=float, default=25.0)
    parser.add_argument("--text-tokens", type=int, default=1024)
    parser.add_argument("--fp8", action="store_true", help="the overlap's transformer in FP8 ('all')")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--deadline", type=float, default=480.0, help="seconds; later measurements are skipped"
    )
    parser.add_argument(
        "--tiny", action="store_true", help="tiny model on the CPU at a toy size (tests this script)"
    )
    parser.add_argument(
        "--cache", type=Path, help="audioloop cache dir kept across runs: a second run's first calls are warm"
    )
    args = parser.parse_args()
    if args.tiny:
        vars(args).update(TINY)
        torch.set_num_threads(1)  # two busy thread pools on two cores (the overlap's) would stall each other
    # Without --cache a fresh compile cache: first calls are cold, whatever an earlier run left behind.
    os.environ["AUDIOLOOP_CACHE_DIR"] = str(args.cache or tempfile.mkdtemp(prefix="audioloop-decode-"))
    accel.use_compile_cache(accel.compile_cache_dir())
    bench = Bench(args)
    parts = {
        "spans": part_spans,
        "stream": part_stream,
        "accuracy": part_accuracy,
        "profile": part_profile,
        "overlap": part_overlap,
        "x264": part_x264,
    }
    needs = {
        "spans": 0.0,
        "stream": 60.0,
        "accuracy": 30.0,
        "profile": 20.0,
        "overlap": OVERLAP_NEED_S,
        "x264": X264_NEED_S,
    }
    for name in args.parts.split(","):
        bench.attempt(f"part {name}", lambda n=name: parts[n](bench), needs[name])
    bench.save()
    print_table(bench.results)


if __name__ == "__main__":
    main()
