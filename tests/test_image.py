"""The hero image: any Pillow mode to uint8 RGB, upright, cover-cropped, one H.264 round trip, errors."""

from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from audioloop.errors import InputError
from audioloop.media.image import ALPHA_BACKGROUND, crf_roundtrip, fit_image, load_image
from mediagen import cut_file, gradient, write_image

GREY = ALPHA_BACKGROUND[0]


def rgba(alpha: int) -> np.ndarray:
    """A gradient with a constant alpha channel, [60, 80, 4] uint8."""
    return np.dstack([gradient(80, 60), np.full((60, 80), alpha, np.uint8)])


def palette_with_transparency(path: Path) -> Path:
    """A 16-colour palette PNG whose entry 0 is transparent."""
    image = Image.fromarray(gradient(80, 60)).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    return write_image(path / "p_transparent.png", image, transparency=0)


BUILDERS = {
    "RGB": lambda d: write_image(d / "rgb.png", gradient(80, 60)),
    "RGB jpeg": lambda d: write_image(d / "rgb.jpg", gradient(80, 60), quality=95),
    "RGBA": lambda d: write_image(d / "rgba.png", rgba(100)),
    "LA": lambda d: write_image(d / "la.png", rgba(100), mode="LA"),
    "L": lambda d: write_image(d / "l.png", gradient(80, 60), mode="L"),
    "1": lambda d: write_image(d / "bw.png", gradient(80, 60), mode="1"),
    "P": lambda d: write_image(d / "p.png", gradient(80, 60), mode="P"),
    "P transparency": palette_with_transparency,
    "CMYK jpeg": lambda d: write_image(d / "cmyk.jpg", gradient(80, 60), mode="CMYK"),
    "I;16": lambda d: write_image(d / "grey16.png", (gradient(80, 60)[..., 0].astype(np.uint16) * 257)),
    "webp": lambda d: write_image(d / "rgb.webp", gradient(80, 60)),
}


@pytest.mark.parametrize("kind", list(BUILDERS))
def test_every_mode_gives_uint8_rgb(tmp_path, kind):
    path = BUILDERS[kind](tmp_path)
    image = load_image(path, 64, 32)
    assert image.dtype == torch.uint8
    assert image.shape == (3, 32, 64)


def test_builders_really_make_those_modes(tmp_path):
    modes = {}
    for kind, build in BUILDERS.items():
        with Image.open(build(tmp_path)) as image:
            modes[kind] = image.mode
    assert modes == {
        "RGB": "RGB", "RGB jpeg": "RGB", "RGBA": "RGBA", "LA": "LA", "L": "L", "1": "1", "P": "P",
        "P transparency": "P", "CMYK jpeg": "CMYK", "I;16": "I;16", "webp": "RGB",
    }  # fmt: skip


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_transparent_pixels_become_the_neutral_background(tmp_path, mode):
    path = write_image(tmp_path / "clear.png", rgba(0), mode=mode)
    assert torch.equal(load_image(path, 80, 60, crf=0), torch.full((3, 60, 80), GREY, dtype=torch.uint8))


def test_opaque_rgba_is_unchanged(tmp_path):
    path = write_image(tmp_path / "opaque.png", rgba(255))
    expected = torch.from_numpy(gradient(80, 60)).permute(2, 0, 1)
    assert torch.equal(load_image(path, 80, 60, crf=0), expected)


def test_palette_transparency_is_composited(tmp_path):
    path = palette_with_transparency(tmp_path)
    with Image.open(path) as image:
        clear = np.asarray(image) == 0
    result = load_image(path, 80, 60, crf=0).permute(1, 2, 0).numpy()
    assert clear.any()
    assert (result[clear] == GREY).all()


def test_sixteen_bit_is_scaled_not_clipped(tmp_path):
    values = np.linspace(0, 65535, 80).round().astype(np.uint16)[None].repeat(60, axis=0)
    result = load_image(write_image(tmp_path / "ramp16.png", values), 80, 60, crf=0)[0].numpy()
    np.testing.assert_array_equal(result, np.rint(values / 257).astype(np.uint8))
    flat = load_image(write_image(tmp_path / "mid16.png", np.full((4, 4), 128 * 257, np.uint16)), 4, 4, crf=0)
    assert torch.equal(flat, torch.full((3, 4, 4), 128, dtype=torch.uint8))


def test_cmyk_colours_survive(tmp_path):
    red = np.zeros((40, 40, 3), np.uint8)
    red[..., 0] = 255
    result = load_image(write_image(tmp_path / "red.jpg", red, mode="CMYK", quality=100), 40, 40, crf=0)
    np.testing.assert_allclose(result.float().mean(dim=(1, 2)).numpy(), [255, 0, 0], atol=3)


def thirds(width: int, height: int, axis: int) -> np.ndarray:
    """Red, green, blue thirds along an axis (1: left to right, 0: top to bottom)."""
    image = np.zeros((height, width, 3), np.uint8)
    size = image.shape[axis]
    for colour, lo in enumerate((0, size // 3, 2 * size // 3)):
        index = [slice(None), slice(None), colour]
        index[axis] = slice(lo, size if colour == 2 else lo + size // 3)
        image[tuple(index)] = 255
    return image


@pytest.mark.parametrize(("width", "height", "axis"), [(4000, 300, 1), (300, 4000, 0)])
def test_extreme_aspect_ratios_centre_crop_exactly(tmp_path, width, height, axis):
    path = write_image(tmp_path / "strip.png", thirds(width, height, axis))
    result = load_image(path, 832, 480, crf=0)
    green = torch.zeros(3, 480, 832, dtype=torch.uint8)
    green[1] = 255
    assert torch.equal(result, green)


def asymmetric() -> np.ndarray:
    """A 40×24 image no rotation or flip maps onto itself: a gradient with one marked corner."""
    image = gradient(40, 24)
    image[:6, :10] = (255, 0, 255)
    return image


@pytest.mark.parametrize(("orientation", "turns"), [(1, 0), (3, 2), (6, -1), (8, 1)])
def test_exif_orientation_is_honoured(tmp_path, orientation, turns):
    """EXIF 6 means "rotate 90° clockwise to view", 8 counter-clockwise, 3 half a turn."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = write_image(tmp_path / "phone.png", asymmetric(), exif=exif)
    upright = np.rot90(asymmetric(), k=turns)
    result = load_image(path, upright.shape[1], upright.shape[0], crf=0)
    np.testing.assert_array_equal(result.permute(1, 2, 0).numpy(), upright)


def test_crf_zero_is_off():
    rgb = gradient(64, 48)
    assert crf_roundtrip(rgb, 0) is rgb


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio of two uint8 images in dB."""
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 10 * np.log10(255**2 / mse)


def test_crf_18_is_close_but_not_identical():
    rgb = gradient(256, 160)
    result = crf_roundtrip(rgb, 18)
    assert result.shape == rgb.shape
    assert result.dtype == np.uint8
    assert not np.array_equal(result, rgb)
    assert psnr(result, rgb) > 35


def test_crf_roundtrip_handles_odd_sizes():
    rgb = gradient(33, 17)
    result = crf_roundtrip(rgb, 18)
    assert result.shape == (17, 33, 3)
    assert psnr(result, rgb) > 30


def test_load_image_applies_the_crf_roundtrip(tmp_path):
    path = write_image(tmp_path / "g.png", gradient(64, 48))
    pristine = load_image(path, 64, 48, crf=0)
    default = load_image(path, 64, 48)
    assert not torch.equal(pristine, default)
    expected = crf_roundtrip(pristine.permute(1, 2, 0).numpy().copy(), 18)
    assert torch.equal(default, torch.from_numpy(expected).permute(2, 0, 1))


@pytest.mark.parametrize("crf", [-1, 52])
def test_crf_out_of_range(crf):
    with pytest.raises(InputError, match="CRF"):
        crf_roundtrip(gradient(8, 8), crf)


@settings(max_examples=60, deadline=None)
@given(
    source=st.tuples(st.integers(1, 400), st.integers(1, 400)),
    target=st.tuples(st.integers(1, 200), st.integers(1, 200)),
)
def test_fit_image_always_gives_the_exact_size(source, target):
    assert fit_image(Image.new("RGB", source, (10, 20, 30)), *target).size == target


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match=r"hero\.png: image file not found"):
        load_image(tmp_path / "hero.png", 64, 64)


@pytest.mark.parametrize("name", ["hero.png", "hero.jpg"])
def test_truncated_image(tmp_path, name):
    path = cut_file(write_image(tmp_path / name, gradient(256, 256)), keep=0.4)
    with pytest.raises(InputError, match="damaged or truncated") as caught:
        load_image(path, 64, 64)
    assert str(path) in str(caught.value)
    assert "\n" not in str(caught.value)


def test_not_an_image(tmp_path):
    path = tmp_path / "hero.png"
    path.write_text("definitely not pixels")
    with pytest.raises(InputError, match=r"hero\.png: not an image"):
        load_image(path, 64, 64)


@pytest.mark.parametrize(("width", "height"), [(0, 64), (64, 0), (-32, 64)])
def test_size_must_be_positive(tmp_path, width, height):
    path = write_image(tmp_path / "g.png", gradient(8, 8))
    with pytest.raises(InputError, match=r"g\.png: target size"):
        load_image(path, width, height)
