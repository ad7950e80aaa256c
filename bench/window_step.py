"""One 832×480×497 window step: audioloop's sampler against a stock diffusers forward, same run, same inputs.

Full-size LTX-2.3 transformer, random bf16 weights, window-i layout (7 frozen context latents + the appended
image guide, 24,960 video tokens), 497 frozen audio tokens, 1024 text tokens. Reports seconds per step of
`sample_window` (8 distilled steps, NAG on and off) and of one stock `transformer(...)` call, the NAG cost
(whole step, and the 48 text cross-attentions alone), and peak GPU memory. CUDA events, warm-up, medians.

    python bench/window_step.py --out $OUT
"""

from __future__ import annotations

import argparse
import datetime
import json
from pathlib import Path

import torch
from diffusers import LTX2VideoTransformer3DModel

import fullsize
from audioloop.sampling.layout import next_window
from audioloop.sampling.nag import NagAttnProcessor, NagSettings, combine, nag_combine, nag_text
from audioloop.sampling.sampler import DISTILLED_SIGMAS, token_timesteps
from audioloop.sampling.window import SamplerSettings, sample_window
from timing import peak_gib, summary

GiB = 2**30


def cuda_time(fn, repeats: int, warmup: int = 1) -> list[float]:
    """Seconds per call of fn, measured with CUDA events after warm-up calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1000)
    return times


def inputs(width: int, height: int, frames: int, fps: float, ov_lat: int, device: str) -> dict:
    """Random normalised latents and text of the real shapes, as the render feeds a window i ≥ 1."""
    gen = torch.Generator(device=device).manual_seed(0)
    h, w, lat = height // 32, width // 32, (frames - 1) // 8 + 1

    def randn(*shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return torch.randn(*shape, generator=gen, device=device, dtype=dtype)

    layout = next_window(randn(1, 128, ov_lat, h, w), randn(1, 128, 1, h, w), lat, fps)
    audio_tokens = round(frames / fps * 25)
    return {
        "layout": layout,
        "audio": randn(1, audio_tokens, 128, dtype=torch.bfloat16),
        "text_video": randn(1, 1024, 4096, dtype=torch.bfloat16),
        "text_audio": randn(1, 1024, 2048, dtype=torch.bfloat16),
        "negative_video": randn(1, 1024, 4096, dtype=torch.bfloat16),
        "negative_audio": randn(1, 1024, 2048, dtype=torch.bfloat16),
    }


def stock_call(model: LTX2VideoTransformer3DModel, x: dict, sigma: float = 0.909375):
    """One stock forward with exactly the sampler's inputs (per-token timesteps, frozen audio at t=0)."""
    layout = x["layout"]
    timesteps = token_timesteps(layout.mask, sigma)
    scaled = torch.full((1,), 1000.0 * sigma, device=timesteps.device)

    def call() -> None:
        with torch.inference_mode():
            model(
                hidden_states=layout.clean.to(torch.bfloat16),
                audio_hidden_states=x["audio"],
                encoder_hidden_states=x["text_video"],
                audio_encoder_hidden_states=x["text_audio"],
                timestep=timesteps,
                audio_timestep=torch.zeros(1, device=timesteps.device),
                sigma=scaled,
                audio_sigma=scaled,
                video_coords=layout.video_coords,
                audio_num_frames=x["audio"].shape[1],
                use_cross_timestep=True,
                return_dict=False,
            )

    return call


def sampler_call(model: LTX2VideoTransformer3DModel, x: dict, settings: SamplerSettings):
    """One whole window through audioloop's sample_window."""

    def call() -> None:
        sample_window(
            model,
            x["layout"],
            x["audio"],
            x["text_video"],
            x["text_audio"],
            x["negative_video"],
            x["negative_audio"],
            seed=0,
            settings=settings,
        )

    return call


def text_attention_calls(model: LTX2VideoTransformer3DModel, x: dict, nag: bool):
    """The 48 video text cross-attentions of one step alone, stock or NAG, on real-shaped inputs."""
    tokens = x["layout"].clean.shape[1]
    hidden = torch.randn(1, tokens, 4096, device="cuda", dtype=torch.bfloat16)
    text = nag_text(x["text_video"], x["negative_video"]) if nag else x["text_video"]
    processor = NagAttnProcessor(NagSettings())

    def call() -> None:
        with torch.inference_mode():
            for block in model.transformer_blocks:
                if nag:
                    processor(block.attn2, hidden, text)
                else:
                    block.attn2(hidden, encoder_hidden_states=text)

    return call


def fused_nag_error(tokens: int) -> dict[str, float]:
    """Relative error of the fused (compiled) NAG combine against the eager one, on fresh random inputs."""
    z_pos, z_neg = (torch.randn(1, tokens, 4096, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    nag = NagSettings()
    ref = nag_combine(z_pos.double(), z_neg.double(), nag)
    outputs = {"fused": combine(z_pos, z_neg, nag), "eager": nag_combine(z_pos, z_neg, nag)}
    return {name: ((out.double() - ref).norm() / ref.norm()).item() for name, out in outputs.items()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--width", type=int, default=832)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--frames", type=int, default=497)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = True

    model = fullsize.transformer()
    weights = torch.cuda.memory_allocated() / GiB
    x = inputs(args.width, args.height, args.frames, 25.0, 7, "cuda")
    steps = len(DISTILLED_SIGMAS) - 1
    nag_on = SamplerSettings()
    nag_off = SamplerSettings(nag=None)
    one_step = SamplerSettings(sigmas=(1.0, 0.0))

    results: dict = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "gpu": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "shape": f"{args.width}x{args.height}x{args.frames}",
        "video_tokens": x["layout"].clean.shape[1],
        "audio_tokens": x["audio"].shape[1],
        "weights_gib": weights,
    }
    sampler_call(model, x, one_step)()  # warm-up: kernels, cuDNN plans, allocator
    results["stock_step"] = summary(cuda_time(stock_call(model, x), args.repeats + 2))
    results["stock_peak_gib"] = peak_gib(stock_call(model, x), torch.device("cuda"))
    for name, settings in (("sampler_step_nag", nag_on), ("sampler_step_no_nag", nag_off)):
        results[name] = summary(cuda_time(sampler_call(model, x, settings), args.repeats, warmup=0), steps)
    results["sampler_peak_gib"] = peak_gib(sampler_call(model, x, one_step), torch.device("cuda"))
    results["text_attn_stock"] = summary(cuda_time(text_attention_calls(model, x, False), 10))
    results["text_attn_nag"] = summary(cuda_time(text_attention_calls(model, x, True), 10))
    results["nag_combine_rel_error_vs_fp64"] = fused_nag_error(results["video_tokens"])

    stock = results["stock_step"]["median"]
    ours = results["sampler_step_nag"]["median"]
    plain = results["sampler_step_no_nag"]["median"]
    nag_attn = results["text_attn_nag"]["median"] - results["text_attn_stock"]["median"]
    results["ratio_sampler_nag_vs_stock"] = ours / stock
    results["nag_cost_step_pct"] = 100 * (ours - plain) / plain
    results["nag_cost_attn_pct_of_step"] = 100 * nag_attn / plain
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "window_step.json").write_text(json.dumps(results, indent=2))

    print(json.dumps(results, indent=2))
    print(f"\n{results['gpu']}  torch {results['torch']}  {results['shape']}  {results['video_tokens']} tok")
    print(f"stock forward          {stock:7.3f} s   peak {results['stock_peak_gib']:.1f} GiB")
    sampler_peak = results["sampler_peak_gib"]
    print(f"sampler step, NAG      {ours:7.3f} s   ({ours / stock:.3f}x)  peak {sampler_peak:.1f} GiB")
    print(f"sampler step, no NAG   {plain:7.3f} s   ({plain / stock:.3f}x stock)")
    print(f"NAG cost: {results['nag_cost_step_pct']:+.2f}% of a step (whole step), ")
    print(f"          {results['nag_cost_attn_pct_of_step']:+.2f}% (48 text cross-attentions timed alone)")


if __name__ == "__main__":
    main()
