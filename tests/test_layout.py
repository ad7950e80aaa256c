"""Token layout: packing order, masks, RoPE coordinates of the window and of the appended guide, cropping."""

from __future__ import annotations

import pytest
import torch
from diffusers import LTX2Pipeline
from hypothesis import given, settings
from hypothesis import strategies as st

from audioloop.models.tiny import tiny_transformer
from audioloop.sampling.layout import (
    crop_guides,
    first_window,
    guide_coords,
    next_window,
    pack_video,
    unpack_video,
    video_coords,
)

ROPE = tiny_transformer().rope
FPS = st.sampled_from([24.0, 25.0, 30.0, 23.976, 29.97, 12.5])


def _latent(seed: int, frames: int, height: int = 2, width: int = 3, channels: int = 8) -> torch.Tensor:
    return torch.randn(1, channels, frames, height, width, generator=torch.Generator().manual_seed(seed))


@settings(deadline=None, max_examples=30)
@given(
    frames=st.integers(1, 5), height=st.integers(1, 4), width=st.integers(1, 4), channels=st.integers(1, 6)
)
def test_pack_matches_diffusers_and_round_trips(frames: int, height: int, width: int, channels: int) -> None:
    latent = _latent(frames * 100 + height, frames, height, width, channels)
    tokens = pack_video(latent)
    assert torch.equal(tokens, LTX2Pipeline._pack_latents(latent))
    assert torch.equal(unpack_video(tokens, frames, height, width), latent)
    assert torch.equal(LTX2Pipeline._unpack_latents(tokens, frames, height, width), latent)


@settings(deadline=None, max_examples=40)
@given(frames=st.integers(1, 12), height=st.integers(1, 5), width=st.integers(1, 5), fps=FPS)
def test_window_coords_equal_prepare_video_coords(frames: int, height: int, width: int, fps: float) -> None:
    expected = ROPE.prepare_video_coords(1, frames, height, width, torch.device("cpu"), fps=fps)
    assert torch.equal(video_coords(frames, height, width, fps), expected)


@settings(deadline=None, max_examples=20)
@given(height=st.integers(1, 5), width=st.integers(1, 5), fps=FPS)
def test_guide_time_is_pixel_frames_minus_8_to_minus_7(height: int, width: int, fps: float) -> None:
    coords = guide_coords(height, width, fps)
    time = coords[0, 0]
    assert torch.equal(time[:, 0], torch.full((height * width,), -8.0) / fps)
    assert torch.equal(time[:, 1], torch.full((height * width,), -7.0) / fps)
    assert torch.allclose(time[0].double(), torch.tensor([-8.0 / fps, -7.0 / fps], dtype=torch.float64))
    frame0 = ROPE.prepare_video_coords(1, 1, height, width, torch.device("cpu"), fps=fps)
    assert torch.equal(coords[:, 1:], frame0[:, 1:])


def test_first_window_freezes_the_image_latent_and_has_no_guide() -> None:
    image = _latent(1, 1)
    layout = first_window(image, lat_frames=4, fps=25.0)
    per_frame = 2 * 3
    assert (layout.frames, layout.height, layout.width, layout.context_frames) == (4, 2, 3, 1)
    assert layout.n_window_tokens == 4 * per_frame == layout.clean.shape[1]
    assert layout.n_guide_tokens == 0
    assert torch.equal(layout.clean[:, :per_frame], pack_video(image))
    assert torch.equal(layout.mask, torch.tensor([[0.0] * per_frame + [1.0] * 3 * per_frame]))
    assert torch.equal(
        layout.video_coords, ROPE.prepare_video_coords(1, 4, 2, 3, torch.device("cpu"), fps=25.0)
    )
    assert torch.equal(crop_guides(layout.clean, layout)[:, :, :1], image)


def test_next_window_freezes_context_and_appends_one_guide_frame() -> None:
    context, image = _latent(2, 2), _latent(3, 1)
    layout = next_window(context, image, lat_frames=5, fps=24.0)
    per_frame = 2 * 3
    n_window = 5 * per_frame
    assert layout.context_frames == 2
    assert layout.n_window_tokens == n_window
    assert layout.n_guide_tokens == per_frame
    assert layout.clean.shape == (1, n_window + per_frame, 8)
    assert torch.equal(layout.clean[:, : 2 * per_frame], pack_video(context))
    assert torch.equal(layout.clean[:, n_window:], pack_video(image))
    expected_mask = [0.0] * 2 * per_frame + [1.0] * 3 * per_frame + [0.0] * per_frame
    assert torch.equal(layout.mask, torch.tensor([expected_mask]))
    window = ROPE.prepare_video_coords(1, 5, 2, 3, torch.device("cpu"), fps=24.0)
    assert torch.equal(layout.video_coords[:, :, :n_window], window)
    assert torch.equal(layout.video_coords[:, :, n_window:], guide_coords(2, 3, 24.0))
    cropped = crop_guides(layout.clean, layout)
    assert cropped.shape == (1, 8, 5, 2, 3)
    assert torch.equal(cropped[:, :, :2], context)


def test_layout_keeps_the_latents_dtype() -> None:
    layout = first_window(_latent(4, 1).double(), lat_frames=3, fps=25.0)
    assert layout.clean.dtype == layout.mask.dtype == torch.float64
    assert layout.video_coords.dtype == torch.float32


@pytest.mark.parametrize(
    ("context_frames", "lat_frames"),
    [(3, 3), (4, 3), (0, 3)],
)
def test_next_window_refuses_context_that_leaves_nothing_to_generate(
    context_frames: int, lat_frames: int
) -> None:
    context = torch.zeros(1, 8, context_frames, 2, 3)
    with pytest.raises(ValueError):
        next_window(context, _latent(5, 1), lat_frames=lat_frames, fps=25.0)


def test_builders_refuse_bad_shapes_and_fps() -> None:
    with pytest.raises(ValueError):
        first_window(_latent(6, 2), lat_frames=4, fps=25.0)
    with pytest.raises(ValueError):
        first_window(_latent(6, 1), lat_frames=1, fps=25.0)
    with pytest.raises(ValueError):
        first_window(_latent(6, 1), lat_frames=4, fps=0.0)
    with pytest.raises(ValueError):
        next_window(_latent(7, 2), _latent(8, 1, height=3), lat_frames=4, fps=25.0)
    with pytest.raises(ValueError):
        next_window(_latent(7, 2)[0], _latent(8, 1), lat_frames=4, fps=25.0)
