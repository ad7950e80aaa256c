"""Full-size LTX-2.3 components with random weights, built straight on the GPU in the target dtype.

Random weights cost the same FLOPs and memory as the real ones; building on the meta device and then
materialising in bf16 avoids ever holding an fp32 copy of the 19 B-parameter transformer.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from accelerate import init_empty_weights
from diffusers import AutoencoderKLLTX2Audio, AutoencoderKLLTX2Video, LTX2VideoTransformer3DModel
from diffusers.pipelines.ltx2.connectors import LTX2TextConnectors
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from torch import nn
from transformers import (
    Gemma3Config,
    Gemma3ForConditionalGeneration,
    Gemma3TextConfig,
    PreTrainedTokenizerFast,
    SiglipVisionConfig,
)

from audioloop.models.configs import CONNECTORS_2_3, TRANSFORMER_2_3, VIDEO_VAE_2_3
from audioloop.models.load import Components

PROMPTS = Path(__file__).resolve().parents[1] / "prompts"


@torch.no_grad()
def randomize(module: nn.Module, seed: int = 0) -> nn.Module:
    """Seeded random weights: matrices ~ N(0, 1/fan_in), norm weights 1, other vectors small."""
    gen = torch.Generator(device=next(module.parameters()).device).manual_seed(seed)
    for name, p in module.named_parameters():
        if p.ndim >= 2:
            p.normal_(0.0, p[0].numel() ** -0.5, generator=gen)
        elif "norm" in name and name.endswith("weight"):
            p.fill_(1.0)
        else:
            p.normal_(0.0, 0.02, generator=gen)
    return module.eval().requires_grad_(False)


def build(cls: type[nn.Module], config: dict, device: str, dtype: torch.dtype, seed: int = 0) -> nn.Module:
    """Instantiate cls(**config) on meta, materialise it on device in dtype, fill with random weights.

    Buffers (VAE latent statistics) are built for real on the CPU and carried over, not left uninitialised.
    """
    with init_empty_weights(include_buffers=False):
        model = cls(**config)
    buffers = {name: b.clone() for name, b in model.named_buffers()}
    model = model.to(dtype=dtype).to_empty(device=device)
    for name, value in buffers.items():
        model.get_buffer(name).copy_(value)
    return randomize(model, seed)


def transformer(device: str = "cuda", dtype: torch.dtype = torch.bfloat16) -> LTX2VideoTransformer3DModel:
    """The 48-layer LTX-2.3 joint audio-video transformer (18.99 B parameters)."""
    return build(LTX2VideoTransformer3DModel, TRANSFORMER_2_3, device, dtype)


def gemma3_12b_config(vocab_size: int = 262_208) -> Gemma3Config:
    """Gemma 3 12B (the LTX-2.3 text encoder): 48 layers, hidden 3840, with its SigLIP vision tower."""
    return Gemma3Config(
        text_config=Gemma3TextConfig(
            vocab_size=vocab_size,
            hidden_size=3840,
            intermediate_size=15_360,
            num_hidden_layers=48,
            num_attention_heads=16,
            num_key_value_heads=8,
            head_dim=256,
            sliding_window=1024,
        ),
        vision_config=SiglipVisionConfig(
            hidden_size=1152,
            intermediate_size=4304,
            num_hidden_layers=27,
            num_attention_heads=16,
            image_size=896,
            patch_size=14,
        ),
        mm_tokens_per_image=256,
    )


def gemma3_12b(device: str = "cuda", dtype: torch.dtype = torch.bfloat16) -> Gemma3ForConditionalGeneration:
    """Gemma 3 12B with random weights, lm_head tied to the embedding as in the real model (materialising
    on meta unties them: 2 GB more than the real thing)."""
    model = build(Gemma3ForConditionalGeneration, {"config": gemma3_12b_config()}, device, dtype)
    model.tie_weights()
    return model


def components(device: str = "cuda", dtype: torch.dtype = torch.bfloat16) -> Components:
    """A full-size LTX-2.3 `Components` with random weights and the real load order: Gemma and the
    transformer are built on first use. The tokenizer is `word_tokenizer` (its ids only index rows)."""
    video_vae = build(AutoencoderKLLTX2Video, VIDEO_VAE_2_3, device, dtype, seed=1)
    audio_vae = build(AutoencoderKLLTX2Audio, {}, device, dtype, seed=2)
    connectors = build(LTX2TextConnectors, CONNECTORS_2_3, device, dtype, seed=3)
    return Components(
        model_id="fullsize-random",
        revision="fullsize-random-2.3",
        video_vae=video_vae,
        audio_vae=audio_vae,
        connectors=connectors,
        tokenizer=word_tokenizer(),
        load_transformer=lambda: transformer(device, dtype),
        load_text_encoder=lambda: gemma3_12b(device, dtype),
        max_sequence_length=1024,
        device=torch.device(device),
        dtype=dtype,
    )


def word_tokenizer() -> PreTrainedTokenizerFast:
    """A word-level stand-in for Gemma's tokenizer, a token per word or punctuation run: Gemma's pass costs
    per token of the longest prompt, and Gemma's 262k-entry vocabulary keeps most English words whole, so
    the count is close (the 3:30 schedule's prompts: 72-78 tokens). The vocabulary is the words of
    `prompts/*.yaml`; any other word or punctuation is `<unk>`, still one token."""
    specials = ["<pad>", "<eos>", "<bos>", "<unk>"]
    words = sorted({w for f in sorted(PROMPTS.glob("*.yaml")) for w in re.findall(r"\w+", f.read_text())})
    vocab = {token: i for i, token in enumerate(specials + words)}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<bos> $A", special_tokens=[("<bos>", vocab["<bos>"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        model_max_length=1024,
    )
