"""Test media made on the fly with PyAV, numpy and Pillow: tones, arbitrary sample arrays, images."""

from pathlib import Path

import av
import numpy as np
from PIL import Image

CODECS = {
    ".wav": "pcm_s16le",
    ".flac": "flac",
    ".mp3": "libmp3lame",
    ".m4a": "aac",
    ".ogg": "libopus",
    ".opus": "libopus",
}
LAYOUTS = {1: "mono", 2: "stereo", 6: "5.1"}
_FRAME_SAMPLES = 1024
_PLANAR_FORMATS = {np.dtype(np.int16): "s16p", np.dtype(np.int32): "s32p", np.dtype(np.float32): "fltp"}


def tone(
    seconds: float, rate: int, channels: int = 1, freq: float = 440.0, amplitude: float = 0.5
) -> np.ndarray:
    """A sine [channels, round(seconds·rate)] float32, the same on every channel."""
    t = np.arange(round(seconds * rate)) / rate
    return np.tile(amplitude * np.sin(2 * np.pi * freq * t), (channels, 1)).astype(np.float32)


def write_audio(
    path: str | Path,
    samples: np.ndarray,
    rate: int,
    codec: str | None = None,
    layout: str | None = None,
    container_options: dict[str, str] | None = None,
) -> Path:
    """Encode samples [channels, n] (int16, int32 or float32) to path; the codec defaults from the suffix."""
    path = Path(path)
    samples = np.ascontiguousarray(samples)
    layout = layout or LAYOUTS[samples.shape[0]]
    with av.open(str(path), "w", options=container_options or {}) as container:
        stream = container.add_stream(codec or CODECS[path.suffix], rate=rate, layout=layout)
        for offset in range(0, samples.shape[1], _FRAME_SAMPLES):
            chunk = np.ascontiguousarray(samples[:, offset : offset + _FRAME_SAMPLES])
            frame = av.AudioFrame.from_ndarray(chunk, format=_PLANAR_FORMATS[samples.dtype], layout=layout)
            frame.sample_rate, frame.pts = rate, offset
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def write_tone(
    path: str | Path,
    seconds: float,
    rate: int,
    channels: int = 1,
    codec: str | None = None,
    freq: float = 440.0,
    amplitude: float = 0.5,
) -> Path:
    """Write a sine of the given length, rate and channel count; the codec defaults from the suffix."""
    return write_audio(path, tone(seconds, rate, channels, freq, amplitude), rate, codec)


def cut_file(path: str | Path, keep: float = 0.5) -> Path:
    """Truncate a file in place to the first `keep` fraction of its bytes, as an interrupted copy would."""
    path = Path(path)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def gradient(width: int, height: int) -> np.ndarray:
    """A smooth RGB gradient [height, width, 3] uint8 (horizontal red, vertical green, diagonal blue)."""
    x = np.linspace(0.0, 1.0, width)[None, :]
    y = np.linspace(0.0, 1.0, height)[:, None]
    channels = [x + 0 * y, y + 0 * x, (x + y) / 2]
    return np.rint(np.stack(channels, axis=-1) * 255).astype(np.uint8)


def write_image(path: str | Path, pixels: np.ndarray | Image.Image, mode: str | None = None, **save) -> Path:
    """Save an array or image (converted to `mode` if given) with Pillow; extra keywords go to Image.save."""
    path = Path(path)
    image = pixels if isinstance(pixels, Image.Image) else Image.fromarray(pixels)
    (image.convert(mode) if mode else image).save(path, **save)
    return path


def frames_of(path: str | Path) -> np.ndarray:
    """Every video frame of a file as RGB [F, H, W, 3]."""
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
