"""The fused decoder's Triton passes against their PyTorch forms: padding and depth-to-space exactly, the
norm and SiLU to a rounding step, every result channels-last; on CUDA, the fused forward against diffusers'.

They need a GPU, or Triton's interpreter on the CPU (`TRITON_INTERPRET=1` with triton installed)."""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from audioloop.models import decoder, decoder_kernels
from audioloop.models.tiny import tiny_video_vae

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
RUNS = (CUDA or os.environ.get("TRITON_INTERPRET") == "1") and decoder_kernels.kernels() is not None
pytestmark = pytest.mark.skipif(not RUNS, reason="Triton kernels: a GPU, or TRITON_INTERPRET=1 with triton")
CHANNELS_LAST = torch.channels_last_3d
BF16_STEP = 2.0**-7  # the largest relative spacing of bf16 values: one rounding step
# Triton's interpreter truncates float32 to bf16 where the GPU rounds to nearest.
ROUNDS_BF16 = pytest.mark.skipif(not CUDA, reason="bf16 rounding: on the GPU only")


def activation(shape: tuple[int, ...], dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    """A seeded random activation on the test device, channels-last (a bias: a plain vector)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen).to(DEVICE, dtype)
    return x.contiguous(memory_format=CHANNELS_LAST) if x.dim() == 5 else x


shapes = st.tuples(
    st.integers(1, 2), st.integers(1, 300), st.integers(1, 4), st.integers(1, 3), st.integers(1, 3)
)


@settings(max_examples=25, deadline=None)
@given(shape=shapes, before=st.integers(0, 2), after=st.integers(0, 2), bf16=st.booleans())
def test_padding_alone_copies_exactly(shape, before, after, bf16):
    x = activation(shape, torch.bfloat16 if bf16 else torch.float32)
    out = decoder_kernels.pad_time(x, before, after)
    assert out.is_contiguous(memory_format=CHANNELS_LAST)
    assert torch.equal(out, decoder.pad_time(x, before, after))


@settings(max_examples=25, deadline=None)
@given(shape=shapes, before=st.integers(0, 2), after=st.integers(0, 2))
def test_norm_silu_padding_matches_pytorch_to_a_rounding_step(shape, before, after):
    x = activation(shape, torch.bfloat16) * 30
    out = decoder_kernels.pad_time(x, before, after, decoder.RMS_EPS)
    exact = decoder.norm_silu_pad(x.float(), before, after)
    assert out.dtype == torch.bfloat16
    assert out.is_contiguous(memory_format=CHANNELS_LAST)
    torch.testing.assert_close(out.float(), exact, rtol=BF16_STEP, atol=1e-6)


@pytest.mark.parametrize("channels", [128, 1024])  # the decoder's narrowest and widest activations
def test_norm_silu_padding_at_the_decoders_widths_in_float32(channels):
    x = activation((1, channels, 3, 5, 7), torch.float32, seed=channels)
    out = decoder_kernels.pad_time(x, 1, 1, decoder.RMS_EPS)
    torch.testing.assert_close(out, decoder.norm_silu_pad(x, 1, 1), rtol=1e-5, atol=1e-6)


def test_an_input_in_the_standard_layout_gives_the_same_result():
    x = activation((2, 48, 3, 4, 5), torch.float32)
    standard = x.contiguous()
    assert not standard.is_contiguous(memory_format=CHANNELS_LAST)
    for eps in (None, decoder.RMS_EPS):
        assert torch.equal(
            decoder_kernels.pad_time(standard, 2, 1, eps), decoder_kernels.pad_time(x, 2, 1, eps)
        )
    assert torch.equal(
        decoder_kernels.depth_to_space(standard, (2, 2, 2)), decoder_kernels.depth_to_space(x, (2, 2, 2))
    )


@settings(max_examples=25, deadline=None)
@given(
    batch=st.integers(1, 2),
    channels=st.integers(1, 40),
    frames=st.integers(1, 4),
    height=st.integers(1, 3),
    width=st.integers(1, 3),
    stride=st.sampled_from([(2, 2, 2), (2, 1, 1), (1, 2, 2), (1, 1, 1)]),
    drop=st.booleans(),
)
def test_depth_to_space_rearranges_exactly(batch, channels, frames, height, width, stride, drop):
    factor = stride[0] * stride[1] * stride[2]
    x = activation((batch, channels * factor, frames, height, width), torch.bfloat16)
    out = decoder_kernels.depth_to_space(x, stride, drop=drop)
    assert out.is_contiguous(memory_format=CHANNELS_LAST)
    assert out.shape[2] == frames * stride[0] - (stride[0] - 1 if drop else 0)
    assert torch.equal(out, decoder.depth_to_space(x, stride, drop))


@settings(max_examples=20, deadline=None)
@given(shape=shapes, before=st.integers(0, 2), after=st.integers(0, 2), norm=st.booleans())
def test_padding_adds_a_bias_before_everything_else(shape, before, after, norm):
    x = activation(shape, torch.float32)
    bias = activation((shape[1],), torch.float32, seed=1)
    biased = x + bias.view(-1, 1, 1, 1)
    eps = decoder.RMS_EPS if norm else None
    out = decoder_kernels.pad_time(x, before, after, eps, bias)
    expected = (decoder.norm_silu_pad if norm else decoder.pad_time)(biased, before, after)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, pytest.param(torch.bfloat16, marks=ROUNDS_BF16)])
@pytest.mark.parametrize("stride", [(2, 2, 2), (1, 2, 2)])
def test_depth_to_space_adds_each_input_channels_bias(stride, dtype):
    factor = stride[0] * stride[1] * stride[2]
    x = activation((2, 3 * factor, 3, 2, 2), dtype)
    bias = activation((3 * factor,), dtype, seed=2)
    out = decoder_kernels.depth_to_space(x, stride, bias)
    assert torch.equal(out, decoder.depth_to_space(x + bias.view(-1, 1, 1, 1), stride))


@pytest.mark.parametrize("dtype", [torch.float32, pytest.param(torch.bfloat16, marks=ROUNDS_BF16)])
def test_the_residual_sums_in_float32_and_rounds_once(dtype):
    h, x = activation((2, 40, 3, 2, 5), dtype), activation((2, 40, 3, 2, 5), dtype, seed=3)
    bias = activation((40,), dtype, seed=4)
    out = decoder_kernels.residual(h, bias, x.contiguous())
    expected = (h.float() + bias.float().view(-1, 1, 1, 1) + x.float()).to(dtype)
    assert out.is_contiguous(memory_format=CHANNELS_LAST)
    assert torch.equal(out, expected)


@pytest.mark.parametrize("causal", [False, True])
def test_the_fused_forward_through_the_kernels_matches_the_stock_decoder(causal, monkeypatch):
    vae = tiny_video_vae().eval().to(DEVICE)
    z = activation((1, vae.config.latent_channels, 4, 2, 3), torch.float32, seed=1)
    if not CUDA:  # the interpreter: send the CPU tensors down the CUDA path
        monkeypatch.setattr(decoder, "_triton", lambda x: True)
    torch.backends.cudnn.allow_tf32 = False
    with torch.no_grad():
        ref = type(vae.decoder).forward(vae.decoder, z.contiguous(), None, causal=causal)
        decoder.install(vae.decoder)
        out = decoder.forward(vae.decoder, z, causal=causal)
        some = decoder.forward(vae.decoder, z, causal=causal, frames=(5, 19))
    torch.backends.cudnn.allow_tf32 = True
    assert out.shape == ref.shape == (1, 3, 25, 64, 96)
    assert float((out - ref).norm() / ref.norm()) < 1e-5
    assert float((some - ref[:, :, 5:19]).norm() / ref[:, :, 5:19].norm()) < 1e-5


@pytest.mark.skipif(not CUDA, reason="compiled kernels: the interpreter compiles none")
def test_one_compiled_kernel_serves_every_frame_count_and_frame_size():
    """A song's first, middle and last spans (and another geometry) differ only in their frame and row
    counts: none may make Triton compile another kernel beside the sampling."""
    k = decoder_kernels.kernels()

    def launch(frames: int, height: int, width: int) -> None:
        x = activation((1, 48, frames, height, width), torch.bfloat16, seed=frames)
        bias = activation((48,), torch.bfloat16)
        decoder_kernels.pad_time(x, frames % 3, 1, decoder.RMS_EPS, bias)
        decoder_kernels.residual(x, bias, x)
        decoder_kernels.depth_to_space(x, (2, 2, 2), bias[:6], drop=frames % 2 == 0)

    def compiled() -> list[int]:
        return [
            len(fn.device_caches[torch.cuda.current_device()][0])
            for fn in (k.pad_rows, k.add_rows, k.spread_rows)
        ]

    launch(1, 3, 4)
    first = compiled()
    for frames, height, width in ((2, 3, 4), (5, 15, 26), (16, 16, 16), (17, 30, 52), (33, 7, 9)):
        launch(frames, height, width)
    assert compiled() == first
