"""Full-size LTX-2.3 components with random weights, built straight on the GPU in the target dtype.

Random weights cost the same FLOPs and memory as the real ones; building on the meta device and then
materialising in bf16 avoids ever holding an fp32 copy of the 19 B-parameter transformer.
"""

from __future__ import annotations

import torch
from accelerate import init_empty_weights
from diffusers import LTX2VideoTransformer3DModel
from torch import nn

TRANSFORMER_2_3 = dict(
    in_channels=128,
    out_channels=128,
    num_attention_heads=32,
    attention_head_dim=128,
    cross_attention_dim=4096,
    audio_in_channels=128,
    audio_out_channels=128,
    audio_num_attention_heads=32,
    audio_attention_head_dim=64,
    audio_cross_attention_dim=2048,
    num_layers=48,
    caption_channels=3840,
    gated_attn=True,
    cross_attn_mod=True,
    audio_gated_attn=True,
    audio_cross_attn_mod=True,
    rope_type="split",
    rope_double_precision=True,
    use_prompt_embeddings=False,
    perturbed_attn=True,
)


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
