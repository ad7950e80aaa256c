"""Media ↔ normalised latents with the tiny VAEs: formulas, packing order, shapes and determinism."""

import itertools

import pytest
import torch
from diffusers import AutoencoderKLLTX2Audio, AutoencoderKLLTX2Video
from hypothesis import given, reject, settings
from hypothesis import strategies as st

from audioloop.media.audio import SAMPLE_RATE, log_mel
from audioloop.media.yuv import yuv420p
from audioloop.models import latents, tiny
from audioloop.models.latents import (
    DECODE_TILE_AREA,
    blend_weights,
    decode_video,
    denormalize_audio_tokens,
    denormalize_video,
    encode_audio,
    encode_frames,
    encode_image,
    normalize_audio_tokens,
    normalize_video,
    pack_audio,
    tile_grid,
    tile_spans,
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


def test_decode_video_as_yuv420p_converts_its_rgb_frames(
    video_vae: AutoencoderKLLTX2Video, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(latents, "CONVERT_FRAMES", 5)  # chunks that do not divide the 17 frames
    z = torch.randn(1, C, 3, 2, 3, generator=torch.Generator().manual_seed(4))
    planes = decode_video(video_vae, z, frames=(2, 15), yuv=True)
    assert planes.shape == (13, 96, 96) and planes.dtype == torch.uint8 and planes.is_contiguous()
    assert torch.equal(planes, yuv420p(decode_video(video_vae, z)[2:15]))


def test_decode_video_tiles_wide_frames_spatially(video_vae: AutoencoderKLLTX2Video) -> None:
    width = DECODE_TILE_AREA + 2  # more than one tile's area
    z = torch.randn(1, C, 2, 1, width, generator=torch.Generator().manual_seed(4))
    assert decode_video(video_vae, z).shape == (9, 32, 32 * width, 3)


class _Blocks(torch.nn.Module):
    """A decoder without spatial context: each latent becomes a flat 32×32 block of its first three
    channels, eight frames long (the first latent one). Records the shapes it decodes."""

    def __init__(self) -> None:
        super().__init__()
        self.shapes: list[tuple[int, ...]] = []

    def forward(self, z: torch.Tensor, temb: torch.Tensor | None = None) -> torch.Tensor:
        self.shapes.append(tuple(z.shape))
        x = torch.tanh(z[:, :3])
        x = torch.cat([x[:, :, :1], x[:, :, 1:].repeat_interleave(8, 2)], 2)
        return x.repeat_interleave(32, 3).repeat_interleave(32, 4)


def test_decode_tiles_blend_back_to_the_whole_frame(monkeypatch: pytest.MonkeyPatch) -> None:
    vae = tiny.tiny_video_vae()
    vae.decoder = _Blocks()
    z = torch.randn(1, C, 2, 5, 9, generator=torch.Generator().manual_seed(5))
    whole = decode_video(vae, z)
    assert vae.decoder.shapes == [(1, C, 2, 5, 9)]
    monkeypatch.setattr(latents, "DECODE_TILE_OVERLAP_PX", 32)  # 1 latent
    vae.decoder.shapes.clear()
    tiled = decode_video(vae, z, tile_area=12)  # 2 rows × 3 columns of 3 × 4 latents
    assert vae.decoder.shapes == [(1, C, 2, 3, 4)] * 6  # one tile shape: one compiled graph
    assert tiled.shape == whole.shape
    assert (tiled.int() - whole.int()).abs().max() <= 1


def test_decode_video_converts_to_uint8_as_diffusers_across_chunks() -> None:
    vae = tiny.tiny_video_vae()
    vae.decoder = _Blocks()
    z = torch.randn(1, C, 10, 1, 2, generator=torch.Generator().manual_seed(6)) * 3
    pixels = vae.decoder(denormalize_video(z, vae))[0]  # 73 frames: chunks of 32, 32 and 9
    expected = ((pixels / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 3, 0)
    assert expected.shape[0] > 2 * latents.CONVERT_FRAMES
    assert torch.equal(decode_video(vae, z), expected)


@pytest.mark.parametrize(
    ("length", "count", "spans"),
    [
        (15, 1, ((0, 15),)),
        (33, 2, ((0, 19), (14, 33))),
        (52, 2, ((0, 28), (24, 52))),  # 1664 px: two 896-px tiles, 128 px of overlap
        (52, 3, ((0, 20), (16, 36), (32, 52))),
        (61, 3, ((0, 23), (19, 42), (38, 61))),
        (100, 4, ((0, 28), (24, 52), (48, 76), (72, 100))),
    ],
)
def test_tile_spans_exact(length: int, count: int, spans: tuple[tuple[int, int], ...]) -> None:
    assert tile_spans(length, count, 4) == spans


def test_tile_spans_refuse_tiles_that_cannot_overlap_within_the_axis() -> None:
    with pytest.raises(ValueError, match="2 tiles overlapping by 4 do not fit in 5 latents"):
        tile_spans(5, 2, 4)


@settings(max_examples=300, deadline=None)
@given(length=st.integers(6, 400), count=st.integers(1, 12), overlap=st.integers(1, 5))
def test_tile_spans_are_equal_tiles_covering_the_axis(length: int, count: int, overlap: int) -> None:
    try:
        spans = tile_spans(length, count, overlap)
    except ValueError:
        width = -(-(length + (count - 1) * overlap) // count)
        assert count > 1 and (width >= length or length - width < count - 1)  # no room for distinct tiles
        return
    assert len(spans) == count and spans[0][0] == 0 and spans[-1][1] == length
    assert len({b - a for a, b in spans}) == 1
    for (start, stop), (following, _) in itertools.pairwise(spans):
        assert start < following and stop - following >= overlap  # neighbours overlap enough to blend
        assert stop - following <= overlap + 1  # and no more than rounding needs


@pytest.mark.parametrize(
    ("frame", "area", "rows", "cols"),
    [
        ((15, 26), 1024, 1, 1),  # 832×480: whole
        ((30, 52), 1024, 1, 2),  # 1664×960: two 896-px columns
        ((30, 52), 640, 1, 3),  # three 640-px columns, 7% more decoding than two
        ((22, 40), 1024, 1, 1),  # 1280×704: 880 latents², whole
        ((44, 80), 1024, 2, 2),
    ],
)
def test_tile_grid_exact(frame: tuple[int, int], area: int, rows: int, cols: int) -> None:
    spans = tile_grid(*frame, area, 4)
    assert (len(spans[0]), len(spans[1])) == (rows, cols)
    assert spans == (tile_spans(frame[0], rows, 4), tile_spans(frame[1], cols, 4))


def test_tile_grid_refuses_a_budget_no_tile_fits() -> None:
    with pytest.raises(ValueError, match="no tiles of ≤ 20 latents²"):
        tile_grid(30, 52, 20, 4)


@settings(max_examples=200, deadline=None)
@given(height=st.integers(1, 60), width=st.integers(1, 90), area=st.integers(100, 2000))
def test_tile_grid_fits_the_budget_with_the_least_decoding(height: int, width: int, area: int) -> None:
    rows, cols = tile_grid(height, width, area, 4)
    tile_h, tile_w = rows[0][1] - rows[0][0], cols[0][1] - cols[0][0]
    assert tile_h * tile_w <= area
    if height * width <= area:
        assert rows == ((0, height),) and cols == ((0, width),)  # a frame within the budget decodes whole
    for r in range(1, 8):  # no other grid within the budget decodes less
        for c in range(1, 8):
            try:
                other = tile_spans(height, r, 4), tile_spans(width, c, 4)
            except ValueError:
                continue
            h, w = other[0][0][1] - other[0][0][0], other[1][0][1] - other[1][0][0]
            if h * w <= area:
                assert r * c * h * w >= len(rows) * len(cols) * tile_h * tile_w


def test_blend_weights_exact() -> None:
    first, second = blend_weights(((0, 3), (2, 5)), 2)  # pixels 0–5 and 4–9 overlap at 4 and 5
    assert first.tolist() == [1, 1, 1, 1, 0.75, 0.25]
    assert second.tolist() == [0.25, 0.75, 1, 1, 1, 1]


@settings(max_examples=200, deadline=None)
@given(
    length=st.integers(1, 200),
    count=st.integers(1, 8),
    overlap=st.integers(1, 5),
    scale=st.sampled_from([1, 32]),
)
def test_blend_weights_sum_to_one_and_ramp_only_across_overlaps(
    length: int, count: int, overlap: int, scale: int
) -> None:
    try:
        spans = tile_spans(length, count, overlap)
    except ValueError:
        reject()  # no such tiling (test_tile_spans_are_equal_tiles_covering_the_axis)
    weights = blend_weights(spans, scale)
    total = torch.zeros(length * scale)
    for (a, b), w in zip(spans, weights, strict=True):
        assert w.shape == ((b - a) * scale,) and w.dtype == torch.float32
        assert w.min() > 0 and w.max() <= 1 + 1e-6
        total[a * scale : b * scale] += w
    torch.testing.assert_close(total, torch.ones_like(total), rtol=0, atol=1e-6)
    covered = torch.zeros(length * scale, dtype=torch.int64)
    for a, b in spans:
        covered[a * scale : b * scale] += 1
    for (a, b), w in zip(spans, weights, strict=True):
        alone = covered[a * scale : b * scale] == 1
        assert torch.equal(w[alone], torch.ones(int(alone.sum())))  # 1 wherever no other tile reaches
