"""RGB → yuv420p as tensor math: BT.709 limited range, swscale's chroma siting, PyAV's plane layout."""

from __future__ import annotations

import av
import numpy as np
import pytest
import torch
from av.video.reformatter import ColorRange, Colorspace
from hypothesis import given, settings
from hypothesis import strategies as st

from audioloop.media.yuv import chroma_rows, planes_shape, yuv420p


def swscale(rgb: np.ndarray) -> np.ndarray:
    """One RGB frame through swscale, as the writer converted frames before: [3H/2, W]."""
    frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
    return frame.reformat(
        format="yuv420p", dst_colorspace=Colorspace.ITU709, dst_color_range=ColorRange.MPEG
    ).to_ndarray()


def planes(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Y [H, W], U and V [H/2, W/2] of one RGB frame."""
    height, width = rgb.shape[:2]
    flat = yuv420p(torch.from_numpy(rgb)[None])[0].numpy().reshape(-1)
    quarter = height * width // 4
    y, u, v = np.split(flat, [height * width, height * width + quarter])
    return y.reshape(height, width), u.reshape(height // 2, width // 2), v.reshape(height // 2, width // 2)


@pytest.mark.parametrize(
    ("colour", "yuv"),
    [
        ((0, 0, 0), (16, 128, 128)),
        ((255, 255, 255), (235, 128, 128)),
        ((128, 128, 128), (126, 128, 128)),  # 16 + 219·128/255 = 125.9
        ((255, 0, 0), (63, 102, 240)),  # BT.709: Y 16 + 219·0.2126, U 128 − 112·0.2126/0.9278, V 240
        ((0, 255, 0), (173, 42, 26)),
        ((0, 0, 255), (32, 240, 118)),
    ],
)
def test_flat_colours_take_the_bt709_limited_range_values(colour: tuple, yuv: tuple) -> None:
    rgb = np.broadcast_to(np.array(colour, np.uint8), (8, 6, 3)).copy()
    y, u, v = planes(rgb)
    assert [np.unique(plane).tolist() for plane in (y, u, v)] == [[c] for c in yuv]


def test_planes_follow_pyavs_yuv420p_layout() -> None:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (3, 16, 24, 3), dtype=np.uint8)
    out = yuv420p(torch.from_numpy(rgb))
    assert out.shape == planes_shape(3, 16, 24) == (3, 24, 24) and out.dtype == torch.uint8
    for frame in out.numpy():
        np.testing.assert_array_equal(av.VideoFrame.from_ndarray(frame, format="yuv420p").to_ndarray(), frame)


def test_chroma_columns_average_pairs_and_rows_take_1_3_3_1() -> None:
    """A full-red column or row on black: which chroma samples it reaches and with what weight."""
    for column in range(8):
        rgb = np.zeros((8, 8, 3), np.uint8)
        rgb[:, column, 0] = 255
        v = planes(rgb)[2]
        expected = np.full(4, 128)
        expected[column // 2] = 128 + 56  # half of V's full red swing, 112, from one of two columns
        np.testing.assert_array_equal(v[0], expected)
    for row, weights in [(0, {0: 4}), (1, {0: 3, 1: 1}), (2, {0: 1, 1: 3}), (7, {3: 4})]:
        rgb = np.zeros((8, 8, 3), np.uint8)
        rgb[row, :, 0] = 255
        v = planes(rgb)[2]
        expected = np.full(4, 128)
        for chroma_row, eighths in weights.items():
            expected[chroma_row] = 128 + 14 * eighths  # 112 / 8 per eighth
        np.testing.assert_array_equal(v[:, 0], expected)


def test_chroma_rows_keep_a_constant_and_halve_the_height() -> None:
    pixels = torch.full((2, 10, 3, 3), 7.0)
    out = chroma_rows(pixels)
    assert out.shape == (2, 5, 3, 3)
    assert torch.equal(out, torch.full_like(out, 7.0))


@settings(max_examples=40, deadline=None)
@given(
    height=st.integers(4, 40).map(lambda n: 2 * n),
    width=st.integers(1, 40).map(lambda n: 2 * n),
    seed=st.integers(0, 2**32 - 1),
    smooth=st.booleans(),
)
def test_matches_swscale_within_one_level(height: int, width: int, seed: int, smooth: bool) -> None:
    """For frames at least 8 rows high (swscale filters smaller ones differently); renders are ≥ 64."""
    rng = np.random.default_rng(seed)
    if smooth:
        y, x = np.mgrid[0:height, 0:width]
        a, b, c = rng.integers(1, 9, 3)
        rgb = np.stack([(a * x) % 256, (b * y) % 256, (c * (x + y)) % 256], axis=-1).astype(np.uint8)
    else:
        rgb = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    ours = yuv420p(torch.from_numpy(rgb)[None])[0].numpy().astype(int)
    assert np.abs(ours - swscale(rgb)).max() <= 1


@given(level=st.integers(0, 255))
def test_greys_have_neutral_chroma(level: int) -> None:
    _, u, v = planes(np.full((8, 8, 3), level, np.uint8))
    assert (u == 128).all() and (v == 128).all()


def test_a_strided_view_converts_as_its_copy() -> None:
    rgb = torch.randint(0, 256, (3, 8, 16, 4), dtype=torch.uint8).permute(3, 1, 2, 0)[:, :, :, :3]
    assert not rgb.is_contiguous()
    assert torch.equal(yuv420p(rgb), yuv420p(rgb.contiguous()))


def test_odd_sizes_are_refused() -> None:
    with pytest.raises(ValueError, match="even frame size, got 7x8"):
        yuv420p(torch.zeros(1, 8, 7, 3, dtype=torch.uint8))
