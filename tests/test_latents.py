"""Media ↔ normalised latents with the tiny VAEs: formulas, packing order, shapes and determinism."""

import pytest
import torch
from diffusers import AutoencoderKLLTX2Audio, AutoencoderKLLTX2Video
from hypothesis import given, settings
from hypothesis import strategies as st

from audioloop.media.audio import SAMPLE_RATE, log_mel
from audioloop.models import tiny
from audioloop.models.latents import (
    DECODE_TILE_PX,
    decode_video,
    denormalize_audio_tokens,
    denormalize_video,
    encode_audio,
    encode_frames,
    encode_image,
    normalize_audio_tokens,
    normalize_video,
    pack_audio,
    tile_stride,
    unpack_audio,
)

C = tiny.VIDEO_LATENT_CHANNELS
AUDIO_TOKEN = tiny.AUDIO_LATENT_CHANNELS * tiny.AUDIO_MEL_BINS // 4


@pytest.fixture(scope="module")
def video_vae() -> AutoencoderKLLTX2Video:
    return tiny.tiny_video_vae()


@pytest.fixture(scope="module")
def audio_vae() -> AutoencoderKLLTX2Audio:
    return tiny.tiny_audio_vae()


def _mel(frames: int, seed: int = 0) -> torch.Tensor:
    """A stand-in log-mel [1, 2, T, 64]: the VAE only sees its shape and values."""
    return torch.randn(1, 2, frames, tiny.AUDIO_MEL_BINS, generator=torch.Generator().manual_seed(seed)) - 4.0


def _pixels(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, shape, generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def test_video_normalisation_is_the_per_channel_formula() -> None:
    vae = tiny.tiny_video_vae()
    vae.register_to_config(scaling_factor=0.5)
    mean, std = vae.latents_mean, vae.latents_std
    assert mean.abs().min() > 0 and not torch.allclose(std, torch.ones_like(std))
    z = torch.randn(2, C, 3, 2, 4, generator=torch.Generator().manual_seed(1))
    normalised = normalize_video(z, vae)
    for c in range(C):
        torch.testing.assert_close(normalised[:, c], (z[:, c] - mean[c]) * 0.5 / std[c], rtol=0, atol=1e-6)
    torch.testing.assert_close(denormalize_video(normalised, vae), z, rtol=0, atol=1e-6)


def test_pack_audio_is_channel_major() -> None:
    z = torch.arange(2 * 3 * 4).reshape(1, 2, 3, 4)  # [B, C=2, T=3, M=4]
    tokens = pack_audio(z)
    assert tokens.shape == (1, 3, 8)
    assert tokens[0, 1].tolist() == [4, 5, 6, 7, 16, 17, 18, 19]
    assert torch.equal(unpack_audio(tokens, channels=2, mel_bins=4), z)


def test_audio_normalisation_is_the_per_feature_formula(audio_vae: AutoencoderKLLTX2Audio) -> None:
    mean, std = audio_vae.latents_mean, audio_vae.latents_std
    assert mean.shape == (AUDIO_TOKEN,) and mean.abs().min() > 0
    tokens = torch.randn(1, 7, AUDIO_TOKEN, generator=torch.Generator().manual_seed(2))
    normalised = normalize_audio_tokens(tokens, audio_vae)
    torch.testing.assert_close(normalised, (tokens - mean) / std, rtol=0, atol=0)
    torch.testing.assert_close(denormalize_audio_tokens(normalised, audio_vae), tokens, rtol=0, atol=1e-6)


def test_encode_audio_is_the_pipeline_recipe(audio_vae: AutoencoderKLLTX2Audio) -> None:
    mel = _mel(100)
    with torch.inference_mode():
        raw = audio_vae.encode(mel).latent_dist.mode()
    expected = normalize_audio_tokens(pack_audio(raw), audio_vae)
    assert torch.equal(encode_audio(audio_vae, mel, 25), expected)


@pytest.mark.parametrize(("mel_frames", "vae_latents"), [(100, 25), (101, 26), (160, 40)])
def test_encode_audio_trims_to_n_latents(
    audio_vae: AutoencoderKLLTX2Audio, mel_frames: int, vae_latents: int
) -> None:
    mel = _mel(mel_frames)
    longest = encode_audio(audio_vae, mel, vae_latents)
    tokens = encode_audio(audio_vae, mel, 25)
    assert tokens.shape == (1, 25, AUDIO_TOKEN)
    assert tokens.dtype == torch.float32
    assert torch.equal(tokens, longest[:, :25])


def test_encode_audio_zero_pads_a_short_slice(audio_vae: AutoencoderKLLTX2Audio) -> None:
    mel = _mel(37)  # the causal VAE yields ceil(37/4) = 10 latents
    tokens = encode_audio(audio_vae, mel, 25)
    assert tokens.shape == (1, 25, AUDIO_TOKEN)
    assert torch.equal(tokens[:, :10], encode_audio(audio_vae, mel, 10))
    assert torch.equal(tokens[:, 10:], torch.zeros(1, 15, AUDIO_TOKEN))


@pytest.mark.parametrize("seconds", [0.32, 1.0, 7.84])
def test_a_window_slice_covers_its_audio_latents(audio_vae: AutoencoderKLLTX2Audio, seconds: float) -> None:
    """d seconds → 1 + 100·d mel frames → 25·d + 1 latents: a window slice never needs the zero pad."""
    n_latents = round(seconds * 25)
    wave = torch.randn(2, round(seconds * SAMPLE_RATE), generator=torch.Generator().manual_seed(5)) * 0.1
    tokens = encode_audio(audio_vae, log_mel(wave), n_latents + 1)
    assert tokens.shape == (1, n_latents + 1, AUDIO_TOKEN)
    assert tokens[0, -1].abs().sum() > 0


def test_encode_image_shape(video_vae: AutoencoderKLLTX2Video) -> None:
    latent = encode_image(video_vae, _pixels(3, 64, 96))
    assert latent.shape == (1, C, 1, 2, 3)
    assert latent.dtype == torch.float32
    assert torch.equal(encode_image(video_vae, _pixels(3, 64, 96)), latent)


def test_encode_frames_shape_and_first_frame(video_vae: AutoencoderKLLTX2Video) -> None:
    frames = _pixels(17, 64, 96, 3)
    assert encode_frames(video_vae, frames).shape == (1, C, 3, 2, 3)
    single = encode_frames(video_vae, frames[:1])
    assert torch.equal(single, encode_image(video_vae, frames[0].permute(2, 0, 1)))


def test_encode_frames_needs_8n_plus_1(video_vae: AutoencoderKLLTX2Video) -> None:
    with pytest.raises(ValueError, match="8n\\+1 frames, got 16"):
        encode_frames(video_vae, _pixels(16, 64, 96, 3))


def test_decode_video_shape_and_determinism(video_vae: AutoencoderKLLTX2Video) -> None:
    z = torch.randn(1, C, 3, 2, 3, generator=torch.Generator().manual_seed(3))
    video = decode_video(video_vae, z)
    assert video.shape == (17, 64, 96, 3)
    assert video.dtype == torch.uint8
    assert video.device == torch.device("cpu")
    assert video.is_contiguous()
    assert torch.equal(decode_video(video_vae, z), video)


def test_decode_video_tiles_wide_frames_spatially(video_vae: AutoencoderKLLTX2Video) -> None:
    width = DECODE_TILE_PX // 32 + 2  # wider than one tile
    z = torch.randn(1, C, 2, 1, width, generator=torch.Generator().manual_seed(4))
    before = dict(vars(video_vae))
    video = decode_video(video_vae, z)
    assert video.shape == (9, 32, 32 * width, 3)
    assert (video_vae.use_tiling, video_vae.use_framewise_decoding) == (False, False)
    assert {key: vars(video_vae)[key] for key in before if key.startswith("tile_")} == {
        key: value for key, value in before.items() if key.startswith("tile_")
    }


@pytest.mark.parametrize(
    ("latents", "stride"),
    [(15, 32), (26, 32), (32, 32), (33, 17), (52, 26), (60, 20), (61, 21), (100, 25)],
)
def test_tile_stride_exact(latents: int, stride: int) -> None:
    assert tile_stride(latents, 32, 4) == stride


@settings(max_examples=300, deadline=None)
@given(latents=st.integers(1, 400), tile=st.integers(8, 64), overlap=st.integers(1, 6))
def test_tile_stride_covers_the_axis_with_overlapping_tiles(latents: int, tile: int, overlap: int) -> None:
    stride = tile_stride(latents, tile, overlap)
    starts = list(range(0, latents, stride))  # where diffusers starts its tiles
    assert starts[-1] + tile >= latents  # the last tile reaches the edge
    assert len(starts) == 1 or tile - stride >= overlap  # neighbours overlap enough to blend
    assert len(starts) <= -(-latents // (tile - overlap))  # no more tiles than a plain stride needs


@given(latents=st.integers(33, 640))  # frames up to 20,480 px
def test_decode_tiles_never_end_in_a_redundant_sliver(latents: int) -> None:
    tile = DECODE_TILE_PX // 32
    starts = list(range(0, latents, tile_stride(latents, tile, 4)))
    assert starts[-2] + tile < latents
