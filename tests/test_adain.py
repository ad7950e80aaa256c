"""AdaIN on video latents, whole-window and per frame, and per-step AdaIN on generated tokens only."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from audioloop.sampling.adain import adain, adain_frames, match_frames, per_step_adain
from audioloop.sampling.layout import first_window, next_window, pack_video
from audioloop.sampling.sampler import DISTILLED_SIGMAS, denoise


def _video(seed: int, frames: int = 4, channels: int = 3, height: int = 3, width: int = 4) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    scale = 0.5 + torch.rand(1, channels, 1, 1, 1, generator=gen) * 3
    shift = torch.randn(1, channels, 1, 1, 1, generator=gen) * 2
    return torch.randn(1, channels, frames, height, width, generator=gen) * scale + shift


@pytest.mark.parametrize("per_frame", [False, True])
def test_factor_zero_is_bitwise_identity(per_frame: bool) -> None:
    x = _video(0)
    assert torch.equal(adain(x, _video(1), 0.0, per_frame=per_frame), x)
    assert torch.equal(adain_frames(x, _video(1), 0.0, start=1, per_frame=per_frame), x)


@settings(deadline=None, max_examples=40)
@given(
    frames=st.integers(1, 5),
    ref_frames=st.integers(1, 7),
    channels=st.integers(1, 4),
    seed=st.integers(0, 2**31 - 1),
)
def test_factor_one_gives_the_reference_channel_statistics(frames, ref_frames, channels, seed) -> None:
    x, ref = _video(seed, frames, channels), _video(seed + 1, ref_frames, channels, height=2, width=5)
    out = adain(x, ref, 1.0)
    std_o, mean_o = torch.std_mean(out, dim=(2, 3, 4))
    std_r, mean_r = torch.std_mean(ref, dim=(2, 3, 4))
    torch.testing.assert_close(mean_o, mean_r, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(std_o, std_r, rtol=1e-4, atol=1e-4)


def test_per_frame_factor_one_gives_each_frame_the_reference_frame_statistics() -> None:
    x, ref = _video(2, frames=4), _video(3, frames=4)
    out = adain(x, ref, 1.0, per_frame=True)
    std_o, mean_o = torch.std_mean(out, dim=(3, 4))
    std_r, mean_r = torch.std_mean(ref, dim=(3, 4))
    torch.testing.assert_close(mean_o, mean_r, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(std_o, std_r, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(("frames", "ref_frames"), [(4, 1), (3, 6), (6, 3), (5, 7)])
def test_per_frame_maps_frames_by_relative_position(frames: int, ref_frames: int) -> None:
    x, ref = _video(4, frames=frames), _video(5, frames=ref_frames)
    out = adain(x, ref, 1.0, per_frame=True)
    index = [f * ref_frames // frames for f in range(frames)]
    std_o, mean_o = torch.std_mean(out, dim=(3, 4))
    std_r, mean_r = torch.std_mean(ref[:, :, index], dim=(3, 4))
    torch.testing.assert_close(mean_o, mean_r, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(std_o, std_r, rtol=1e-4, atol=1e-4)


def test_match_frames() -> None:
    ref = torch.arange(6.0).view(1, 1, 6, 1, 1)
    assert match_frames(ref, 6).flatten().tolist() == [0, 1, 2, 3, 4, 5]
    assert match_frames(ref, 3).flatten().tolist() == [0, 2, 4]
    assert match_frames(ref[:, :, :1], 4).flatten().tolist() == [0, 0, 0, 0]
    assert match_frames(ref[:, :, :2], 4).flatten().tolist() == [0, 0, 1, 1]


def test_factor_interpolates_between_x_and_full_adain() -> None:
    x, ref = _video(6), _video(7)
    full = adain(x, ref, 1.0)
    torch.testing.assert_close(adain(x, ref, 0.3), x + 0.3 * (full - x))


def test_adain_keeps_dtype() -> None:
    x = _video(8).to(torch.bfloat16)
    assert adain(x, _video(9), 0.5).dtype == torch.bfloat16


def test_adain_frames_touches_only_frames_from_start() -> None:
    x, ref = _video(10, frames=5), _video(11, frames=5)
    for per_frame in (False, True):
        out = adain_frames(x, ref, 1.0, start=2, per_frame=per_frame)
        assert torch.equal(out[:, :, :2], x[:, :, :2])
        assert not torch.equal(out[:, :, 2:], x[:, :, 2:])
    aligned = adain_frames(x, ref, 1.0, start=2, per_frame=True)
    torch.testing.assert_close(aligned[:, :, 2:], adain(x[:, :, 2:], ref[:, :, 2:], 1.0, per_frame=True))


def test_per_step_adain_is_off_without_reference_or_factors() -> None:
    layout = first_window(_video(12, frames=1, channels=8), lat_frames=3, fps=25.0)
    assert per_step_adain(layout, None, (0.3, 0.2)) is None
    assert per_step_adain(layout, _video(13, channels=8), ()) is None
    assert per_step_adain(layout, _video(13, channels=8), (0.0, 0.0)) is None
    with pytest.raises(ValueError):
        per_step_adain(layout, _video(13, channels=3), (0.3,))


@pytest.mark.parametrize("per_frame", [False, True])
def test_per_step_adain_never_touches_frozen_tokens(per_frame: bool) -> None:
    context, image = _video(14, frames=2, channels=8), _video(15, frames=1, channels=8)
    layout = next_window(context, image, lat_frames=5, fps=25.0)
    hook = per_step_adain(layout, _video(16, frames=5, channels=8), (1.0, 0.5), per_frame=per_frame)
    x0 = torch.randn(layout.clean.shape, generator=torch.Generator().manual_seed(17)) * 3 + 1
    frozen = layout.mask[0] == 0
    for step in (0, 1):
        out = hook(step, x0)
        assert out.shape == x0.shape
        assert torch.equal(out[:, frozen], x0[:, frozen])
        assert not torch.equal(out[:, ~frozen], x0[:, ~frozen])
    assert torch.equal(hook(2, x0), x0)


def test_per_step_adain_acts_on_generated_video_statistics() -> None:
    context, image = _video(18, frames=2, channels=8), _video(19, frames=1, channels=8)
    layout = next_window(context, image, lat_frames=5, fps=25.0)
    reference = _video(20, frames=5, channels=8)
    hook = per_step_adain(layout, reference, (1.0,))
    x0 = torch.randn(layout.clean.shape, generator=torch.Generator().manual_seed(21))
    out = hook(0, x0)
    generated = out[:, layout.mask[0] != 0]
    std_g, mean_g = torch.std_mean(generated, dim=1)
    std_r, mean_r = torch.std_mean(pack_video(reference), dim=1)
    torch.testing.assert_close(mean_g, mean_r, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(std_g, std_r, rtol=1e-4, atol=1e-4)


def test_per_step_adain_in_the_sampler_keeps_frozen_tokens_exact() -> None:
    context, image = _video(22, frames=2, channels=8), _video(23, frames=1, channels=8)
    layout = next_window(context, image, lat_frames=4, fps=25.0)
    hook = per_step_adain(layout, _video(24, frames=4, channels=8), (0.3, 0.2, 0.1, 0.05, 0, 0, 0, 0))
    noise = torch.randn(layout.clean.shape, generator=torch.Generator().manual_seed(26))

    def velocity(x: torch.Tensor, t: torch.Tensor, sigma: float) -> torch.Tensor:
        return 0.5 * x + 0.1

    out = denoise(velocity, layout.clean, layout.mask, noise, DISTILLED_SIGMAS, x0_hook=hook)
    plain = denoise(velocity, layout.clean, layout.mask, noise, DISTILLED_SIGMAS)
    frozen = layout.mask[0] == 0
    assert torch.equal(out[:, frozen], layout.clean[:, frozen])
    assert (out - plain).abs().max() > 1e-2
