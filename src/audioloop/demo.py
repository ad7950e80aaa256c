"""Synthetic demo inputs (a sung-vowel song, a hero image, a schedule), so the demo needs no downloads."""

from __future__ import annotations

import sys
import wave
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

RATE = 44_100
SCHEDULE = """\
subject: A woman with short red hair and a green jacket
style: warm stage light, shallow depth of field, static camera
negative: blurry, distorted face, flickering, text, watermark
schedule:
  - at: "0:00"
    prompt: is singing into a silver microphone, eyes half closed, swaying gently
  - at: "0:02.5"
    prompt: is singing louder with her head tilted back, one hand raised towards the lights
"""


def song(seconds: float = 4.0, rate: int = RATE) -> np.ndarray:
    """A stereo 'voice': a harmonic series on a melody, shaped into syllables, over a quiet pad."""
    t = np.arange(int(seconds * rate)) / rate
    melody = np.array([220.0, 247.0, 262.0, 294.0, 262.0, 247.0])
    pitch = melody[(t * 2).astype(int) % len(melody)]
    phase = 2 * np.pi * np.cumsum(pitch) / rate
    voice = sum(np.sin(k * phase) / k for k in range(1, 8))
    syllables = 0.5 - 0.5 * np.cos(2 * np.pi * 4 * t)
    pad = 0.3 * np.sin(2 * np.pi * 110 * t)
    left = 0.35 * voice * syllables + pad
    right = 0.35 * voice * syllables + 0.8 * pad
    return np.stack([left, right]) / 2.5


def write_wav(path: Path, samples: np.ndarray, rate: int = RATE) -> Path:
    """16-bit PCM WAV from float samples [channels, n] in [-1, 1]."""
    pcm = (np.clip(samples, -1, 1) * 32767).astype("<i2").T.copy()
    with wave.open(str(path), "wb") as out:
        out.setnchannels(samples.shape[0])
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(pcm.tobytes())
    return path


def hero_image(width: int = 640, height: int = 480) -> Image.Image:
    """A gradient backdrop with a simple face, so crops and colour drift are visible."""
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack([80 + 120 * x / width, 40 + 60 * y / height, 140 - 80 * x / width], axis=-1)
    img = Image.fromarray(rgb.astype(np.uint8))
    draw = ImageDraw.Draw(img)
    cx, cy, r = width // 2, height // 2, height // 4
    draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=(230, 190, 160))
    draw.ellipse((cx - r // 2 - 8, cy - r // 3, cx - r // 2 + 8, cy - r // 3 + 16), fill=(30, 30, 30))
    draw.ellipse((cx + r // 2 - 8, cy - r // 3, cx + r // 2 + 8, cy - r // 3 + 16), fill=(30, 30, 30))
    draw.arc((cx - r // 2, cy, cx + r // 2, cy + r // 2), 20, 160, fill=(150, 40, 40), width=6)
    return img


def make_demo_inputs(folder: Path) -> tuple[Path, Path, Path]:
    """Write song.wav, hero.png and schedule.yaml into folder and return their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    song_path = write_wav(folder / "song.wav", song())
    image_path = folder / "hero.png"
    hero_image().save(image_path)
    schedule_path = folder / "schedule.yaml"
    schedule_path.write_text(SCHEDULE)
    return song_path, image_path, schedule_path


if __name__ == "__main__":
    for path in make_demo_inputs(Path(sys.argv[1] if len(sys.argv) > 1 else "demo")):
        print(path)
