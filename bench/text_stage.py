"""Where the render's "text" stage goes: `encode_prompts` on the full-size Gemma 3 12B and connectors.

Times, with the GPU synchronised at each boundary, the pieces of one cold-cache encode of the 3:30
schedule's prompts (its eight and the negative, composed as the render composes them): Gemma's build
(charged to "load" in a render), its forward, freeing it, the connectors and the rest (tokenising, stacking
and padding the hidden states, copies); the cache's writes run on a thread, timed as `writes_after` from
the return to their end. The first encode of a process is timed, then a second one on new prompts;
`--fa4` starts flash-attn-4's import thread first, as a render with `--attention fa4` does, and
`--warm-cudnn` cuDNN's first use on a thread, as every CUDA render does (`accel.start_early`). Then an
image encode is timed: the process's first cuDNN convolution on the main thread. Then the same
prompts through Gemma padded to 1,024 tokens, as diffusers' LTX2Pipeline runs it: its forward time and
the relative L2 difference of the connectors' outputs from the encode's, beside the difference between
padding to 1,024 and to 1,016 tokens (equal in exact arithmetic: the rounding floor).

    python bench/text_stage.py --out $OUT/text
    python bench/text_stage.py --out $OUT/text_fa4 --fa4
    python bench/text_stage.py --out $OUT/text_render --fa4 --warm-cudnn   # as a render's start
    python bench/text_stage.py --out /tmp/x --tiny          # CPU smoke test of this script
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch

import fullsize
from audioloop.models import accel, flash4, text
from audioloop.models.latents import encode_image
from audioloop.models.load import Components, load_components
from audioloop.schedule import load_schedule

SCHEDULE = Path(__file__).resolve().parents[1] / "prompts" / "indie_ballad.yaml"


def sync() -> None:
    """Wait for the GPU, so that host clocks bound the device work between two marks."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed_forward(module: torch.nn.Module, seconds: dict[str, float], name: str) -> torch.nn.Module:
    """`module` with hooks adding each forward's synchronised wall time to seconds[name]."""
    began: list[float] = []

    def before(*_: object) -> None:
        sync()
        began.append(time.perf_counter())

    def after(*_: object) -> None:
        sync()
        seconds[name] += time.perf_counter() - began.pop()

    module.register_forward_pre_hook(before)
    module.register_forward_hook(after)
    return module


def timed_call(fn: Callable, seconds: dict[str, float], name: str) -> Callable:
    """`fn` adding its synchronised wall time to seconds[name]."""

    def call(*args: object, **kwargs: object) -> object:
        sync()
        start = time.perf_counter()
        result = fn(*args, **kwargs)
        sync()
        seconds[name] += time.perf_counter() - start
        return result

    return call


def encode(
    components: Components, prompts: list[str], cache: Path, seconds: dict[str, float]
) -> dict[str, float]:
    """One cold-cache `encode_prompts`, split into its pieces; `seconds` already collects the connectors'."""

    def build() -> torch.nn.Module:
        return timed_forward(components.load_text_encoder(), seconds, "gemma_forward")

    timed = replace(components, load_text_encoder=timed_call(build, seconds, "gemma_build"))
    free = text._free_memory
    text._free_memory = timed_call(free, seconds, "free_gemma")
    sync()
    start = time.perf_counter()
    try:
        text.encode_prompts(timed, prompts, cache)
    finally:
        text._free_memory = free
    sync()
    seconds["total"] = time.perf_counter() - start
    seconds["total_without_build"] = seconds["total"] - seconds["gemma_build"]
    known = ("gemma_build", "gemma_forward", "free_gemma", "connectors")
    seconds["rest"] = seconds["total"] - sum(seconds[k] for k in known)
    text.wait_for_writes()
    seconds["writes_after"] = time.perf_counter() - start - seconds["total"]
    return dict(seconds)


def schedule_prompts(prefix: str = "") -> list[str]:
    """The 3:30 schedule's window prompts and its negative, as the render composes them."""
    schedule = load_schedule(SCHEDULE)
    return [prefix + schedule.prompt_text(entry) for entry in schedule.entries] + [prefix + schedule.negative]


def fullsize_image(components: Components) -> torch.Tensor:
    """A uint8 [3, 480, 832] gradient on the components' device: the render's hero image at 832×480."""
    ramp = torch.linspace(0, 255, 832, device=components.device).expand(480, 832)
    return torch.stack([ramp, ramp.flip(1), 255 - ramp]).to(torch.uint8)


def padded_pass(
    components: Components, prompts: list[str], length: int
) -> tuple[float, torch.Tensor, torch.Tensor]:
    """Gemma over the prompts left-padded to `length` tokens, then the connectors at max_sequence_length
    (diffusers' LTX2Pipeline, for length = max_sequence_length): the synchronised seconds of a warm Gemma
    forward, and the connectors' video and audio outputs."""
    tokens = text.tokenize(components, prompts, length)
    encoder = components.load_text_encoder()
    with torch.inference_mode():
        for _ in range(2):
            sync()
            start = time.perf_counter()
            output = encoder(
                input_ids=tokens.input_ids,
                attention_mask=tokens.attention_mask,
                output_hidden_states=True,
                logits_to_keep=1,
            )
            sync()
            forward = time.perf_counter() - start
        hidden, mask = text.connector_inputs(components, output.hidden_states, tokens.attention_mask)
        del encoder, output
        video, audio, _ = components.connectors(hidden, mask, padding_side="left")
    return forward, video, audio


def relative_l2(value: torch.Tensor, reference: torch.Tensor) -> float:
    """‖value − reference‖ / ‖reference‖ in fp32."""
    return ((value.float() - reference.float()).norm() / reference.float().norm()).item()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--fa4", action="store_true", help="import flash-attn-4 on a thread first")
    parser.add_argument("--tiny", action="store_true", help="the tiny model on the CPU (tests this script)")
    parser.add_argument(
        "--warm-cudnn", action="store_true", help="cuDNN's first use on a thread first, as a render"
    )
    args = parser.parse_args()
    if args.warm_cudnn:
        threading.Thread(target=accel.first_convolution, args=(torch.device("cuda"), torch.bfloat16)).start()
    args.out.mkdir(parents=True, exist_ok=True)
    cache = Path(tempfile.mkdtemp(prefix="audioloop-text-"))
    if args.fa4:
        flash4.preload(cache / "flash4")
    components = load_components("tiny") if args.tiny else fullsize.components("cuda", torch.bfloat16)
    seconds: dict[str, float] = defaultdict(float)
    timed_forward(components.connectors, seconds, "connectors")
    runs = []
    for run in range(2):
        seconds.clear()
        prompts = schedule_prompts("Again: " if run else "")
        pieces = encode(components, prompts, cache / "text", seconds)
        runs.append(pieces)
        print(f"run {run}: " + ", ".join(f"{k} {v:.3f} s" for k, v in pieces.items()), flush=True)
    sync()
    start = time.perf_counter()
    encode_image(components.video_vae, fullsize_image(components))
    sync()
    image_encode = time.perf_counter() - start
    print(f"image encode after: {image_encode:.3f} s", flush=True)
    embeddings = text.encode_prompts(components, prompts, cache / "text")
    length = components.max_sequence_length
    forward, video, audio = padded_pass(components, prompts, length)
    _, video_less, audio_less = padded_pass(components, prompts, length - 8)
    padded = {
        "gemma_forward_warm": forward,
        "video_relative_l2": relative_l2(torch.stack([embeddings[p].video for p in prompts]), video),
        "audio_relative_l2": relative_l2(torch.stack([embeddings[p].audio for p in prompts]), audio),
        # the same prompts padded 8 tokens less: as equal in exact arithmetic, so the rounding floor
        "video_relative_l2_8_less": relative_l2(video_less, video),
        "audio_relative_l2_8_less": relative_l2(audio_less, audio),
    }
    print("padded to 1024: " + ", ".join(f"{k} {v:.4g}" for k, v in padded.items()), flush=True)
    tokens = [len(components.tokenizer(p).input_ids) for p in prompts]
    results = {
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "torch": torch.__version__,
        "prompt_tokens": tokens,
        "fa4_import_beside": args.fa4,
        "runs": runs,
        "first_image_encode": image_encode,
        "warm_cudnn": args.warm_cudnn,
        "padded_to_max_length": padded,
        "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else 0.0,
    }
    (args.out / "text_stage.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
