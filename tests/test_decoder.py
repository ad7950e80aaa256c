"""The fused video decoder forward computes diffusers' LTX-2.3 decoder exactly (up to float rounding)."""

from __future__ import annotations

import itertools
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKLLTX2Video
from diffusers.models.autoencoders.autoencoder_kl_ltx2 import PerChannelRMSNorm
from hypothesis import given, settings
from hypothesis import strategies as st

from audioloop import render
from audioloop.decode import STREAM_REACH, first_frame
from audioloop.errors import SettingsError
from audioloop.models import decoder
from audioloop.models.configs import VIDEO_VAE_2_3
from audioloop.models.latents import VideoStream, decode_video, denormalize_video
from audioloop.models.tiny import tiny_video_vae


@pytest.fixture(scope="module")
def vae() -> AutoencoderKLLTX2Video:
    return tiny_video_vae().eval()


def stock(dec: torch.nn.Module, z: torch.Tensor, causal: bool) -> torch.Tensor:
    """diffusers' own forward, whatever `install` did to the instance."""
    with torch.no_grad():
        return type(dec).forward(dec, z, None, causal=causal)


def relative(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out - ref).norm() / ref.norm())


def test_time_padding_replicates_two_frames_before_or_one_each_side(vae):
    conv = vae.decoder.conv_in
    assert decoder.time_padding(conv, causal=True) == (2, 0)
    assert decoder.time_padding(conv, causal=False) == (1, 1)


def test_pad_time_repeats_the_first_and_last_frames():
    x = torch.arange(3.0).view(1, 1, 3, 1, 1).expand(1, 2, 3, 2, 2)
    out = decoder.pad_time(x, 2, 1)
    assert out[0, 0, :, 0, 0].tolist() == [0.0, 0.0, 0.0, 1.0, 2.0, 2.0]
    assert out.shape == (1, 2, 6, 2, 2)
    assert torch.equal(decoder.pad_time(x, 0, 0), x)


def test_norm_silu_pad_is_rms_norm_then_silu_then_padding():
    x = torch.randn(2, 5, 3, 4, 6)
    expected = F.silu(PerChannelRMSNorm()(x))
    expected = torch.cat([expected[:, :, :1], expected, expected[:, :, -1:]], dim=2)
    torch.testing.assert_close(decoder.norm_silu_pad(x, 1, 1), expected, rtol=1e-6, atol=1e-6)


def test_norm_silu_pad_keeps_the_dtype_and_normalises_per_position():
    x = torch.randn(1, 8, 2, 3, 3, dtype=torch.bfloat16) * 100
    out = decoder.norm_silu_pad(x, 0, 0)
    assert out.dtype == torch.bfloat16
    # Scaling a position's channels leaves its norm, hence the output, unchanged.
    scaled = x.clone()
    scaled[..., 0, 0, 0] *= 4
    torch.testing.assert_close(decoder.norm_silu_pad(scaled, 0, 0), out)


def test_frames_spread_by_an_upsampler_drop_its_extra_frames_only_at_the_start():
    assert decoder.Frames(0, 3, 3).spread(2) == decoder.Frames(0, 5, 5)
    assert decoder.Frames(1, 3, 4).spread(2) == decoder.Frames(1, 5, 7)
    assert decoder.Frames(2, 4, 4).spread(1) == decoder.Frames(2, 4, 4)


@pytest.mark.parametrize("causal", [False, True])
def test_forward_matches_the_stock_decoder(vae, causal):
    torch.manual_seed(1)
    z = torch.randn(1, vae.config.latent_channels, 4, 2, 3)
    ref = stock(vae.decoder, z, causal)
    with torch.no_grad():
        out = decoder.forward(vae.decoder, z, causal=causal)
        channels_last = decoder.forward(vae.decoder, z.contiguous(memory_format=torch.channels_last_3d))
    assert out.shape == ref.shape == (1, 3, 25, 64, 96)
    assert out.is_contiguous()
    assert relative(out, ref) < 1e-5
    if not causal:
        assert relative(channels_last, ref) < 1e-5


@settings(max_examples=12, deadline=None)
@given(frames=st.integers(1, 4), height=st.integers(1, 3), width=st.integers(1, 3))
def test_forward_matches_the_stock_decoder_for_any_latent_shape(vae, frames, height, width):
    z = torch.randn(1, vae.config.latent_channels, frames, height, width)
    with torch.no_grad():
        out = decoder.forward(vae.decoder, z)
    assert relative(out, stock(vae.decoder, z, False)) < 1e-5


@pytest.fixture(scope="module")
def vae64() -> AutoencoderKLLTX2Video:
    return tiny_video_vae().eval().double()


@settings(max_examples=20, deadline=None)
@given(latents=st.integers(1, 6), causal=st.booleans(), data=st.data())
def test_some_frames_of_the_forward_are_those_of_the_whole_decode(vae64, latents, causal, data):
    """Every cropped activation still holds what the asked-for frames depend on: equal but for the float32
    rounding of the norms (a frame that lost context would differ by whole values)."""
    total = 8 * (latents - 1) + 1
    start = data.draw(st.integers(0, total - 1))
    stop = data.draw(st.integers(start + 1, total))
    z = torch.randn(1, vae64.config.latent_channels, latents, 1, 2, dtype=torch.float64)
    with torch.no_grad():
        whole = decoder.forward(vae64.decoder, z, causal=causal)
        some = decoder.forward(vae64.decoder, z, causal=causal, frames=(start, stop))
    assert some.shape[2] == stop - start
    assert relative(some, whole[:, :, start:stop]) < 1e-5


def test_a_cropped_decode_keeps_its_frames_plus_each_stages_reach():
    """The 2.3 decoder on 72 latents asked for frames 57–505 (56 latents with 8 more each side): the first
    stages need every latent (their reach is ±14 latents), conv_out one frame each side."""
    with torch.device("meta"):
        dec = AutoencoderKLLTX2Video(**VIDEO_VAE_2_3).decoder
    stages = [dec.conv_in, *decoder._middle(dec), dec.conv_out]
    wanted = decoder._wanted(stages, False, 72, dec.patch_size_t, (57, 505))
    assert wanted[0] == decoder.Frames(0, 72, 72)
    assert wanted[-2:] == [decoder.Frames(56, 506, 569), decoder.Frames(57, 505, 569)]
    whole = decoder._wanted(stages, False, 72, dec.patch_size_t, None)
    assert all(w.start == 0 and w.stop == w.total for w in whole)


def test_a_cropped_decode_keeps_one_activation_length_per_time_resolution():
    """The full-size 2.3 decoder on meta tensors: cropped to some frames, its convs see one input length
    per time resolution, as in the whole decode (each new shape costs cuDNN and Triton a first-use setup in
    every process), none longer, and 90% of the whole decode's FLOPs."""
    with torch.device("meta"):
        dec = AutoencoderKLLTX2Video(**VIDEO_VAE_2_3).decoder
    lengths, flops = [], []

    def record(conv, args, out):
        lengths.append(args[0].shape[2])
        flops.append(2 * out.numel() * conv.weight[0].numel())

    for module in dec.modules():
        if isinstance(module, torch.nn.Conv3d):
            module.register_forward_hook(record)
    z = torch.zeros(1, 128, 72, 15, 26, device="meta")
    with torch.no_grad():
        decoder.forward(dec, z)
        whole, whole_flops = sorted(set(lengths)), sum(flops)
        lengths.clear(), flops.clear()
        out = decoder.forward(dec, z, frames=(57, 505))
    cropped = sorted(set(lengths))
    assert out.shape[2] == 448
    assert whole == [74, 145, 287, 571] and cropped == [74, 144, 266, 494]
    assert sum(flops) / whole_flops == pytest.approx(0.9015, abs=1e-4)


@pytest.mark.parametrize("frames", [(-1, 3), (3, 3), (0, 10)])
def test_frames_outside_the_decode_are_refused(vae, frames):
    with pytest.raises(ValueError, match="not within the 9 decoded frames"):
        decoder.forward(vae.decoder, torch.zeros(1, vae.config.latent_channels, 2, 1, 1), frames=frames)


def test_decode_asks_an_installed_decoder_for_its_frames_and_slices_another():
    vae = tiny_video_vae().eval()
    z = torch.randn(1, vae.config.latent_channels, 3, 1, 1)
    with torch.no_grad():
        whole = vae.decoder(z, None)
        assert torch.equal(decoder.decode(vae.decoder, z, None, (4, 9)), whole[:, :, 4:9])
        decoder.install(vae.decoder)
        calls = []
        vae.decoder.register_forward_hook(lambda m, args, kwargs, out: calls.append(kwargs), with_kwargs=True)
        cropped = decoder.decode(vae.decoder, z, None, (4, 9))
    assert calls == [{"frames": (4, 9)}]
    assert relative(cropped, whole[:, :, 4:9]) < 1e-5


def test_forward_refuses_a_timestep():
    with pytest.raises(ValueError, match="timestep"):
        decoder.forward(tiny_video_vae().decoder, torch.zeros(1, 8, 1, 1, 1), torch.zeros(1))


def small_vae(**changes: object) -> AutoencoderKLLTX2Video:
    """The tiny 2.3 VAE topology with some flags changed."""
    base = {**VIDEO_VAE_2_3, "latent_channels": 8, "block_out_channels": (8, 16, 16, 16)}
    base.update(decoder_block_out_channels=(8, 16, 16, 16), layers_per_block=(1,) * 5)
    return AutoencoderKLLTX2Video(**{**base, "decoder_layers_per_block": (1,) * 5, **changes}).eval()


@pytest.mark.parametrize(
    "changes",
    [
        {"timestep_conditioning": True},
        {"decoder_inject_noise": (True, False, False, False, False)},
        {"upsample_residual": (True, False, False, False)},
    ],
)
def test_decoders_with_other_blocks_are_refused_and_decode_stock(changes):
    vae = small_vae(**changes)
    assert not decoder.supports(vae.decoder)
    assert not decoder.install(vae.decoder)
    assert "forward" not in vae.decoder.__dict__


def test_decode_video_runs_a_refused_decoder_stock():
    vae = small_vae(upsample_residual=(True, False, False, False))
    frames = decode_video(vae, torch.randn(1, 8, 2, 1, 1))
    assert frames.shape == (9, 32, 32, 3)
    assert "forward" not in vae.decoder.__dict__


def test_install_is_idempotent_and_decode_video_gives_the_stock_frames():
    vae = tiny_video_vae().eval()
    z = torch.randn(1, vae.config.latent_channels, 3, 2, 2)
    pixels = stock(vae.decoder, denormalize_video(z, vae), False)[0]
    expected = ((pixels / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 3, 0)
    assert decoder.install(vae.decoder)
    installed = vae.decoder.forward
    assert decoder.install(vae.decoder)
    assert vae.decoder.forward is installed
    frames = decode_video(vae, z)
    assert frames.shape == expected.shape == (17, 64, 64, 3)
    assert (frames.int() - expected.int()).abs().max() <= 1


@pytest.mark.parametrize("background", [True, False])
def test_the_render_installs_the_fused_decoder_and_refuses_one_it_cannot_stream(background):
    plan = SimpleNamespace(new_lat=1, height=64, width=96)
    writer = SimpleNamespace(write_yuv420p=lambda frames: None)
    vae = tiny_video_vae().eval()
    render.decoder(SimpleNamespace(video_vae=vae), plan, (), writer, background).close()
    assert decoder.installed(vae.decoder)
    with pytest.raises(SettingsError, match=r"not LTX-2\.3's"):
        render.decoder(
            SimpleNamespace(video_vae=small_vae(upsample_residual=(True,) * 4)), plan, (), writer, False
        )


def streamed(stream: decoder.Stream, z: torch.Tensor, cuts: list[int]) -> list[torch.Tensor | None]:
    """What a stream returns for z pushed in pieces ending at `cuts` (the last piece ends the axis)."""
    bounds = [0, *cuts, z.shape[2]]
    with torch.no_grad():
        return [stream.push(z[:, :, a:b], last=b == z.shape[2]) for a, b in itertools.pairwise(bounds)]


@settings(max_examples=25, deadline=None)
@given(latents=st.integers(1, 9), causal=st.booleans(), data=st.data())
def test_a_stream_in_any_pieces_is_the_whole_decode(vae64, latents, causal, data):
    """However the latents are cut into pushes, the frames that come out, in order, are the whole decode's
    (but for the float32 rounding of the norms): each conv continues from the frames it kept."""
    cuts = sorted(data.draw(st.sets(st.integers(1, latents - 1))) if latents > 1 else set())
    z = torch.randn(1, vae64.config.latent_channels, latents, 1, 2, dtype=torch.float64)
    with torch.no_grad():
        whole = decoder.forward(vae64.decoder, z, causal=causal)
    pieces = streamed(decoder.Stream(vae64.decoder, causal), z, cuts)
    assert pieces[-1] is not None
    out = torch.cat([p for p in pieces if p is not None], dim=2)
    assert out.shape == whole.shape
    assert relative(out, whole) < 1e-5


def test_a_stream_keeps_a_few_frames_of_its_own_between_pushes(vae64):
    """What a stream holds between pushes is copies of at most two frames per conv and per resnet, never a
    view that would keep a whole activation alive."""
    z = torch.randn(1, vae64.config.latent_channels, 12, 1, 2, dtype=torch.float64)
    stream = decoder.Stream(vae64.decoder)
    with torch.no_grad():
        assert stream.push(z[:, :, :10]) is not None
    kept = list(stream._kept.values())
    assert kept and all(t.shape[2] <= 2 for t in kept)
    assert all(t.untyped_storage().nbytes() == t.numel() * t.element_size() for t in kept)
    with torch.no_grad():
        stream.push(z[:, :, 10:], last=True)
    assert stream._kept == {}


def test_a_stream_refuses_pushes_after_its_end_empty_ones_and_late_frames(vae):
    stream = decoder.Stream(vae.decoder)
    z = torch.zeros(1, vae.config.latent_channels, 2, 1, 1)
    with torch.no_grad():
        with pytest.raises(ValueError, match="at least one latent"):
            stream.push(z[:, :, :0])
        with pytest.raises(ValueError, match="one and last push"):
            stream.push(z, frames=(0, 3))
        stream.push(z[:, :, :1])
        with pytest.raises(ValueError, match="one and last push"):
            stream.push(z[:, :, 1:], last=True, frames=(0, 3))
        stream.push(z[:, :, 1:], last=True)
        with pytest.raises(ValueError, match="has ended"):
            stream.push(z)
    with pytest.raises(ValueError, match="does not cover"):
        decoder.Stream(small_vae(timestep_conditioning=True).decoder)


def test_the_full_size_stream_puts_out_a_render_window_reach_latents_late_and_decodes_nothing_twice():
    """The full-size 2.3 decoder on meta tensors, pushed the default render's windows (63 latents, then 56
    new a window): a window's frames come out 13.5 latents after the latents that end them (within
    STREAM_REACH), each steady window puts out exactly its 448 frames, and the pushes together run the
    whole timeline's convolutions once: the same conv output elements as one decode of all of it."""
    with torch.device("meta"):
        dec = AutoencoderKLLTX2Video(**VIDEO_VAE_2_3).decoder
    elements = [0]

    def record(conv, args, out):
        elements[0] += out.numel() * conv.weight[0].numel()

    for module in dec.modules():
        if isinstance(module, torch.nn.Conv3d):
            module.register_forward_hook(record)
    ends = [63 + 56 * i for i in range(5)]
    z = torch.zeros(1, 128, ends[-1], 15, 26, device="meta")
    pieces = streamed(decoder.Stream(dec), z, ends[:-1])
    streamed_elements, elements[0] = elements[0], 0
    with torch.no_grad():
        decoder.forward(dec, z)
    assert streamed_elements == elements[0]
    counts = [p.shape[2] for p in pieces]
    assert counts == [389, 448, 448, 448, 8 * (ends[-1] - 1) + 1 - 389 - 3 * 448]
    for end, out in zip(ends, [389, 837, 1285, 1733], strict=False):
        assert out == 8 * (end - 1 - 13.5) + 1 >= first_frame(end - STREAM_REACH)


@pytest.mark.parametrize("tile_area", [None, 8 * 8])
def test_a_video_stream_gives_the_frames_of_the_whole_timeline_as_asked(tile_area):
    """Latents pushed in three spans come out as decode_video of all of them, frame for frame (within a
    level of rounding), also in 2 × 2 spatial tiles; each call returns exactly the frames it asks for (the
    tiny decoder completes 8(e − 9) + 1 frames of e latents: the first call holds 5 back)."""
    vae = tiny_video_vae().eval()
    torch.manual_seed(3)
    size = (10, 12) if tile_area else (2, 3)
    z = torch.randn(1, vae.config.latent_channels, 20, *size)
    area = {} if tile_area is None else {"tile_area": tile_area}
    whole = decode_video(vae, z, **area)
    stream = VideoStream(vae, **area)
    out = [
        stream(z[:, :, :12], (0, 20)),
        stream(z[:, :, 12:16], (20, 57)),
        stream(z[:, :, 16:], (57, 153), last=True),
    ]
    assert [o.shape[0] for o in out] == [20, 37, 96]
    assert (torch.cat(out).int() - whole.int()).abs().max() <= 1


def test_a_video_stream_refuses_frames_out_of_order_or_not_yet_complete():
    vae = tiny_video_vae().eval()
    z = torch.randn(1, vae.config.latent_channels, 12, 1, 1)
    stream = VideoStream(vae)
    with pytest.raises(ValueError, match="do not follow"):
        stream(z[:, :, :6], (5, 9))
    with pytest.raises(ValueError, match="do not follow"):
        stream(z[:, :, :6], (0, 0))
    with pytest.raises(ValueError, match="completed frames 0–"):
        stream(z[:, :, :6], (0, 41))
