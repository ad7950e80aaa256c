"""The tiny model: every LTX-2.3 component built in code with the real diffusers classes at toy width.

Same classes, flags and compression factors as the real model (gated attention, cross-attention modulation,
split RoPE, per-modality connectors, ×32/×8 video VAE, ×4/×4 audio VAE), random deterministic weights and an
in-memory Gemma tokenizer, so tests, CI and the demo exercise the real code paths on two CPU cores.
"""

from __future__ import annotations

import string

import torch
from diffusers import AutoencoderKLLTX2Audio, AutoencoderKLLTX2Video, LTX2VideoTransformer3DModel
from diffusers.pipelines.ltx2.connectors import LTX2TextConnectors
from diffusers.pipelines.ltx2.latent_upsampler import LTX2LatentUpsamplerModel
from torch import nn
from transformers import (
    Gemma3Config,
    Gemma3ForConditionalGeneration,
    Gemma3TextConfig,
    GemmaTokenizer,
    SiglipVisionConfig,
)

from audioloop.models.configs import CONNECTORS_2_3, TRANSFORMER_2_3, VIDEO_VAE_2_3

REVISION = "tiny-v1"  # the tiny model's fingerprint: bump it whenever a builder below changes its output

SEED = 1234
TEXT_HIDDEN = 32
TEXT_LAYERS = 2
VIDEO_LATENT_CHANNELS = 8
AUDIO_LATENT_CHANNELS = 1
AUDIO_MEL_BINS = 64
VIDEO_DIM = 16
AUDIO_DIM = 8
MAX_SEQUENCE_LENGTH = 128


def _reinit(module: nn.Module, seed: int) -> nn.Module:
    """Overwrite every parameter with seeded random values: deterministic, and no zero-initialised layers
    (diffusers zero-inits some output projections, which would make the tiny model's velocity trivially 0)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(module.named_parameters(), key=lambda kv: kv[0]):
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float32)
            if p.ndim == 1 and ("norm" in name or name.endswith("weight")):
                p.copy_(1.0 + 0.1 * noise)
            elif p.ndim == 1:
                p.copy_(0.02 * noise)
            else:
                fan_in = p[0].numel() if p.ndim > 1 else 1
                p.copy_(noise / fan_in**0.5)
    return module.eval()


def _set_latent_stats(vae: nn.Module, seed: int) -> None:
    """Give the VAE non-trivial latent statistics so normalisation is exercised, not a no-op."""
    gen = torch.Generator().manual_seed(seed)
    n = vae.latents_mean.numel()
    vae.latents_mean.copy_(0.1 * torch.randn(n, generator=gen))
    vae.latents_std.copy_(1.0 + 0.5 * torch.rand(n, generator=gen))


def tiny_transformer() -> LTX2VideoTransformer3DModel:
    """The joint audio-video transformer with the LTX-2.3 flags, 2 layers, video 2×8 and audio 2×4 heads."""
    model = LTX2VideoTransformer3DModel(
        **{
            **TRANSFORMER_2_3,
            "in_channels": VIDEO_LATENT_CHANNELS,
            "out_channels": VIDEO_LATENT_CHANNELS,
            "num_attention_heads": 2,
            "attention_head_dim": VIDEO_DIM // 2,
            "cross_attention_dim": VIDEO_DIM,
            "audio_in_channels": AUDIO_LATENT_CHANNELS * AUDIO_MEL_BINS // 4,
            "audio_out_channels": AUDIO_LATENT_CHANNELS * AUDIO_MEL_BINS // 4,
            "audio_num_attention_heads": 2,
            "audio_attention_head_dim": AUDIO_DIM // 2,
            "audio_cross_attention_dim": AUDIO_DIM,
            "num_layers": 2,
            "caption_channels": TEXT_HIDDEN,
        }
    )
    return _reinit(model, SEED)


def tiny_video_vae() -> AutoencoderKLLTX2Video:
    """The LTX-2.3 video VAE topology (×32 spatial, ×8 temporal, 2.3 decoder) at toy width."""
    vae = AutoencoderKLLTX2Video(
        **{
            **VIDEO_VAE_2_3,
            "latent_channels": VIDEO_LATENT_CHANNELS,
            "block_out_channels": (8, 16, 16, 16),
            "decoder_block_out_channels": (8, 16, 16, 16),
            "layers_per_block": (1, 1, 1, 1, 1),
            "decoder_layers_per_block": (1, 1, 1, 1, 1),
        }
    )
    _reinit(vae, SEED + 1)
    _set_latent_stats(vae, SEED + 2)
    return vae


def tiny_audio_vae() -> AutoencoderKLLTX2Audio:
    """The LTX audio VAE (×4 time, ×4 mel, causal) on the real 64-bin log-mel, one latent channel."""
    vae = AutoencoderKLLTX2Audio(
        base_channels=AUDIO_LATENT_CHANNELS * AUDIO_MEL_BINS // 4,
        ch_mult=(1, 2, 4),
        num_res_blocks=1,
        latent_channels=AUDIO_LATENT_CHANNELS,
        mel_bins=AUDIO_MEL_BINS,
    )
    _reinit(vae, SEED + 3)
    _set_latent_stats(vae, SEED + 4)
    return vae


def tiny_latent_upsampler() -> LTX2LatentUpsamplerModel:
    """The LTX-2.3 ×2 spatial latent upsampler (3D res blocks, conv + pixel shuffle) at toy width; GroupNorm
    needs the width to be a multiple of 32."""
    upsampler = LTX2LatentUpsamplerModel(
        in_channels=VIDEO_LATENT_CHANNELS,
        mid_channels=32,
        num_blocks_per_stage=1,
        dims=3,
        spatial_upsample=True,
        temporal_upsample=False,
        use_rational_resampler=False,
    )
    return _reinit(upsampler, SEED + 7)


def tiny_connectors() -> LTX2TextConnectors:
    """The 2.3 text connectors: per-modality projections, gated attention, learnable registers."""
    connectors = LTX2TextConnectors(
        **{
            **CONNECTORS_2_3,
            "caption_channels": TEXT_HIDDEN,
            "text_proj_in_factor": TEXT_LAYERS + 1,
            "video_connector_num_attention_heads": 2,
            "video_connector_attention_head_dim": VIDEO_DIM // 2,
            "video_connector_num_layers": 2,
            "video_connector_num_learnable_registers": 8,
            "audio_connector_num_attention_heads": 2,
            "audio_connector_attention_head_dim": AUDIO_DIM // 2,
            "audio_connector_num_layers": 2,
            "audio_connector_num_learnable_registers": 8,
            "video_hidden_dim": VIDEO_DIM,
            "audio_hidden_dim": AUDIO_DIM,
        }
    )
    return _reinit(connectors, SEED + 5)


def tiny_tokenizer() -> GemmaTokenizer:
    """A byte-fallback Gemma BPE tokenizer built in memory: 5 specials, 256 bytes, a–z and the word marker."""
    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]
    pieces = specials + [f"<0x{i:02X}>" for i in range(256)] + list(string.ascii_lowercase) + ["▁"]
    vocab = {piece: i for i, piece in enumerate(pieces)}
    return GemmaTokenizer(vocab=vocab, merges=[], add_bos_token=True, model_max_length=MAX_SEQUENCE_LENGTH)


def tiny_text_encoder() -> Gemma3ForConditionalGeneration:
    """Gemma 3 (the LTX-2.3 text encoder class) with a 2-layer, 32-wide text model and a toy vision tower."""
    vocab = len(tiny_tokenizer())
    config = Gemma3Config(
        text_config=Gemma3TextConfig(
            vocab_size=vocab + 3,
            hidden_size=TEXT_HIDDEN,
            intermediate_size=64,
            num_hidden_layers=TEXT_LAYERS,
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=16,
            max_position_embeddings=MAX_SEQUENCE_LENGTH * 2,
            sliding_window=MAX_SEQUENCE_LENGTH,
        ),
        vision_config=SiglipVisionConfig(
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=28,
            patch_size=14,
        ),
        mm_tokens_per_image=4,
        boi_token_index=vocab,
        eoi_token_index=vocab + 1,
        image_token_index=vocab + 2,
    )
    torch.manual_seed(SEED + 6)
    return _reinit(Gemma3ForConditionalGeneration(config), SEED + 6)
