"""The hero image: any Pillow-readable file, upright, cover-cropped to W×H, through one H.264 round trip."""

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch
from PIL import Image, ImageOps

from audioloop.config import MAX_CRF
from audioloop.errors import InputError

ALPHA_BACKGROUND = (128, 128, 128)
"""Transparent pixels become mid grey: neutral, neither a black void nor a blown-out white for the model."""

_SIXTEEN_BIT_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I"}  # "I": how Pillow opens some 16-bit TIFF/PGM
_SIXTEEN_BIT_TO_EIGHT = 257
_H264_PRESET = "veryfast"


def load_image(path: str | Path, width: int, height: int, crf: int = 18) -> torch.Tensor:
    """Load the hero image as uint8 [3, H, W] RGB, exactly as every window's image conditioning sees it."""
    path = Path(path)
    if width <= 0 or height <= 0:
        raise InputError(f"{path}: target size {width}x{height} is not positive; use a width and height > 0")
    rgb = np.array(fit_image(_to_rgb(_read_upright(path)), width, height))
    return torch.from_numpy(crf_roundtrip(rgb, crf)).permute(2, 0, 1).contiguous()


def fit_image(img: Image.Image, width: int, height: int) -> Image.Image:
    """Lanczos-resize to cover width×height, then centre-crop to exactly that size."""
    return ImageOps.fit(img, (width, height), method=Image.Resampling.LANCZOS)


def crf_roundtrip(rgb: np.ndarray, crf: int) -> np.ndarray:
    """One libx264 yuv420p encode/decode of [H, W, 3] uint8 (0: off); a pristine image freezes LTX's start."""
    if crf == 0:
        return rgb
    if not 0 < crf <= MAX_CRF:
        raise InputError(f"image CRF {crf} is out of range; use 0 (no round trip) to {MAX_CRF}")
    height, width = rgb.shape[:2]
    even = np.pad(rgb, ((0, height % 2), (0, width % 2), (0, 0)), mode="edge")
    return _h264_decode(_h264_encode(even, crf))[:height, :width]


def _read_upright(path: Path) -> Image.Image:
    """Decode the whole file and apply its EXIF orientation; every failure is a one-line InputError."""
    if not path.is_file():
        raise InputError(f"{path}: image file not found; check the path")
    try:
        with Image.open(path) as img:
            img.load()
            return ImageOps.exif_transpose(img)
    except Image.DecompressionBombError as error:
        raise InputError(f"{path}: the image is too large to load safely ({error}); downscale it") from error
    except Image.UnidentifiedImageError as error:
        raise InputError(f"{path}: not an image Pillow can read; give a PNG, JPEG or WebP file") from error
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise InputError(f"{path}: the image is damaged or truncated ({error}); re-export it") from error


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any mode to 8-bit RGB: 16-bit scaled (not clipped), transparency composited over ALPHA_BACKGROUND."""
    if img.mode in _SIXTEEN_BIT_MODES:
        img = _to_8bit_grey(img)
    if img.has_transparency_data:
        background = Image.new("RGBA", img.size, (*ALPHA_BACKGROUND, 255))
        return Image.alpha_composite(background, img.convert("RGBA")).convert("RGB")
    return img.convert("RGB")


def _to_8bit_grey(img: Image.Image) -> Image.Image:
    """16-bit grey to 8-bit by 65535 → 255 scaling (Pillow's own convert clips everything above 255)."""
    values = np.asarray(img, dtype=np.float64) / _SIXTEEN_BIT_TO_EIGHT
    return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8))


def _h264_encode(rgb: np.ndarray, crf: int) -> list[av.Packet]:
    """Encode one even-sized RGB frame with libx264, yuv420p, at the CRF, as LTX's own preprocessing does."""
    encoder = av.CodecContext.create("libx264", "w")
    encoder.width, encoder.height = rgb.shape[1], rgb.shape[0]
    encoder.pix_fmt = "yuv420p"
    encoder.time_base = Fraction(1, 25)
    encoder.options = {"crf": str(crf), "preset": _H264_PRESET}
    frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p")
    return encoder.encode(frame) + encoder.encode(None)


def _h264_decode(packets: list[av.Packet]) -> np.ndarray:
    """Decode the single frame of an H.264 packet list back to [H, W, 3] uint8 RGB."""
    decoder = av.CodecContext.create("h264", "r")
    frames = [frame for packet in packets for frame in decoder.decode(packet)] + decoder.decode(None)
    return frames[0].to_ndarray(format="rgb24")
