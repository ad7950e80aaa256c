"""The song: decode and resample with PyAV (I/O), and the LTX-2 audio VAE's log-mel front end (pure math)."""

import functools
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import torch
from av.audio.stream import AudioStream
from av.container import InputContainer
from transformers.audio_utils import mel_filter_bank

from audioloop.errors import InputError

SAMPLE_RATE = 16_000
N_FFT = 1024
HOP_LENGTH = 160
N_MELS = 64
MEL_MAX_HZ = 8_000
LOG_FLOOR = 1e-5

_MIN_DURATION_S = 0.001
_TRUNCATION_SLACK_S = 0.25
_TRUNCATION_SLACK_FRACTION = 0.02
_ESTIMATE_BITRATE_TOLERANCE = 0.01
_RESAMPLER_TAIL_S = 0.1  # decoded past a range's end so the resampler's filter sees real samples there
_RIFF_SLACK_BYTES = 4096
_RIFF_PLACEHOLDER_SIZE = 0x7FFF_FFFF  # streaming writers leave 0xFFFFFFFF (or 0x7FFFFFFF): size unknown
_UNORDERED_LAYOUTS = {1: "mono", 2: "stereo"}


@dataclass(frozen=True)
class AudioInfo:
    """What the container header says about a song (no decoding unless the header has no duration)."""

    path: Path
    duration: float
    sample_rate: int
    channels: int
    codec: str


@dataclass(frozen=True)
class SourceAudio:
    """Original samples of a song range, [channels, n] in the native dtype, for lossless muxing."""

    samples: np.ndarray
    sample_rate: int
    layout: str


def probe_audio(path: str | Path) -> AudioInfo:
    """Read duration, rate, channels and codec from the header; decode to count only if it has no duration."""
    path = Path(path)
    with _open_audio(path) as (container, stream):
        duration = _header_seconds(container, stream)
        if duration is None:
            duration = sum(frame.samples / frame.sample_rate for frame in _frames(path, container, stream))
        ctx = stream.codec_context
        return AudioInfo(path, duration, ctx.sample_rate, ctx.channels, ctx.codec.canonical_name)


def load_waveform(path: str | Path, start: float = 0.0, duration: float | None = None) -> torch.Tensor:
    """Decode the song range [start, start+duration), clipped at the song's end, to [2, N] float32 16 kHz.

    Mono is duplicated here at full level: libswresample's own mono→stereo matrix would apply −3 dB.
    """
    path = Path(path)
    _check_range(path, start, duration)
    wave, song_s = _decode_16k(path, None if duration is None else start + duration + _RESAMPLER_TAIL_S)
    span_s = duration if duration is not None and start + duration <= song_s else song_s - start
    count = round(span_s * SAMPLE_RATE)
    if count <= 0:
        raise _past_end(path, start, song_s)
    first = round(start * SAMPLE_RATE)
    wave = wave[:, first : first + count]
    wave = np.pad(wave, ((0, 0), (0, count - wave.shape[1])))
    return torch.from_numpy(wave).expand(2, -1).contiguous()


def read_source_audio(path: str | Path, start: float, duration: float) -> SourceAudio:
    """The song range's original samples, sample-exact at the native rate and layout, clipped at the end."""
    path = Path(path)
    _check_range(path, start, duration)
    with _open_audio(path) as (container, stream):
        rate = stream.codec_context.sample_rate
        first, count = round(start * rate), round(duration * rate)
        parts, position, layout = [], 0, _layout_name(stream.codec_context.layout)
        for frame in _frames(path, container, stream, (first + count) / rate):
            if position + frame.samples > first:
                parts.append(_planar(frame)[:, max(first - position, 0) : max(first + count - position, 0)])
            position += frame.samples
    if position <= first:
        raise _past_end(path, start, position / rate)
    return SourceAudio(np.concatenate(parts, axis=1), rate, layout)


def log_mel(waveform: torch.Tensor) -> torch.Tensor:
    """Log-mel [B, 2, 1 + N//160, 64] of 16 kHz audio [2, N] or [B, 2, N], as the LTX-2 audio VAE expects."""
    batch = waveform if waveform.dim() == 3 else waveform.unsqueeze(0)
    if batch.dim() != 3 or batch.shape[1] != 2:
        raise ValueError(f"log_mel expects a waveform [2, N] or [B, 2, N], got {list(waveform.shape)}")
    frames = _reflect_pad(batch.flatten(0, 1), N_FFT // 2)
    window = torch.hann_window(N_FFT, dtype=batch.dtype, device=batch.device)
    spectrum = torch.stft(frames, N_FFT, HOP_LENGTH, window=window, center=False, return_complex=True).abs()
    mel = spectrum.transpose(1, 2) @ _mel_basis(batch.device, batch.dtype)
    return mel.clamp_min(LOG_FLOOR).log().unflatten(0, batch.shape[:2])


def slice_window(waveform: torch.Tensor, start_s: float, duration_s: float) -> torch.Tensor:
    """Samples [round(start·16k), +round(duration·16k)) of a [2, N] waveform, zero-padded past its end."""
    first, count = round(start_s * SAMPLE_RATE), round(duration_s * SAMPLE_RATE)
    if first < 0 or count < 0:
        raise ValueError(f"slice_window needs start_s >= 0 and duration_s >= 0, got {start_s}, {duration_s}")
    chunk = waveform[:, first : first + count]
    return torch.nn.functional.pad(chunk, (0, count - chunk.shape[-1]))


def _reflect_pad(signal: torch.Tensor, pad: int) -> torch.Tensor:
    """Mirror `pad` samples onto both ends (numpy's "reflect", repeated for signals shorter than the pad)."""
    length = signal.shape[-1]
    index = torch.arange(-pad, length + pad, device=signal.device).abs()
    if length > 1:
        index = index % (2 * length - 2)
        index = torch.where(index >= length, 2 * length - 2 - index, index)
    else:
        index = torch.zeros_like(index)
    return signal[..., index]


@functools.cache
def _mel_basis(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Slaney mel filterbank [513, 64] over 0–8 kHz, built once per device and dtype."""
    filters = mel_filter_bank(
        num_frequency_bins=N_FFT // 2 + 1,
        num_mel_filters=N_MELS,
        min_frequency=0.0,
        max_frequency=MEL_MAX_HZ,
        sampling_rate=SAMPLE_RATE,
        norm="slaney",
        mel_scale="slaney",
    )
    return torch.from_numpy(filters).to(device=device, dtype=dtype)


def _decode_16k(path: Path, stop_s: float | None) -> tuple[np.ndarray, float]:
    """The song from sample 0 to stop_s at 16 kHz ([1, n] if mono, else [2, n]) and the seconds decoded.

    Resampling always starts at the song's sample 0, so output sample i is song time i/16000 whatever the
    range: dropping round(start·16000) samples afterwards makes the start sample-exact.
    """
    with _open_audio(path) as (container, stream):
        channels = 1 if stream.codec_context.channels == 1 else 2
        resampler = av.AudioResampler(
            format="fltp", layout="mono" if channels == 1 else "stereo", rate=SAMPLE_RATE
        )
        blocks, decoded_s = [np.zeros((channels, 0), np.float32)], 0.0
        for frame in _frames(path, container, stream, stop_s):
            blocks += [block.to_ndarray() for block in resampler.resample(frame)]
            decoded_s += frame.samples / frame.sample_rate
        blocks += [block.to_ndarray() for block in resampler.resample(None)]
    return np.concatenate(blocks, axis=1), decoded_s


@contextmanager
def _open_audio(path: Path) -> Iterator[tuple[InputContainer, AudioStream]]:
    """Open a song and its first audio stream, turning every way that can fail into a one-line InputError."""
    if not path.is_file():
        raise InputError(f"{path}: audio file not found; check the path")
    _check_riff_size(path)
    try:
        container = av.open(str(path))
    except av.FFmpegError as error:
        raise InputError(
            f"{path}: cannot be read as audio ({error.strerror}): not a song file, or damaged/truncated; "
            "re-export it as wav, flac, mp3, m4a or ogg"
        ) from error
    with container:
        if not container.streams.audio:
            raise InputError(f"{path}: has no audio stream; give the song's file (wav, flac, mp3, m4a, ogg)")
        yield container, container.streams.audio[0]


def _frames(
    path: Path, container: InputContainer, stream: AudioStream, stop_s: float | None = None
) -> Iterator[av.AudioFrame]:
    """Decoded frames until stop_s seconds are covered (None: all); at the end, check nothing is missing."""
    decoded_s = 0.0
    try:
        for frame in container.decode(stream):
            yield frame
            decoded_s += frame.samples / frame.sample_rate
            if stop_s is not None and decoded_s >= stop_s:
                return
    except av.FFmpegError as error:
        raise InputError(
            f"{path}: the file looks truncated or damaged (decoding failed after {decoded_s:.2f}s: "
            f"{error.strerror}); re-export it"
        ) from error
    _check_complete(path, container, stream, decoded_s)


def _check_complete(path: Path, container: InputContainer, stream: AudioStream, decoded_s: float) -> None:
    """Reject a file that decoded to far less than its header promised (cut off: an interrupted copy)."""
    promised_s = _promised_seconds(container, stream)
    if promised_s is None:
        return
    if decoded_s < promised_s - max(_TRUNCATION_SLACK_S, _TRUNCATION_SLACK_FRACTION * promised_s):
        raise InputError(
            f"{path}: the file looks truncated: it decodes to {decoded_s:.2f}s but its header promises "
            f"{promised_s:.2f}s; re-export it"
        )


def _header_seconds(container: InputContainer, stream: AudioStream) -> float | None:
    """Duration from the stream header, else the container header, else None."""
    if stream.duration is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / av.time_base
    return None


def _promised_seconds(container: InputContainer, stream: AudioStream) -> float | None:
    """The header duration, unless FFmpeg only guessed it as file size ÷ nominal bit rate (VBR mp3, ADTS aac).

    A guess makes the container bit rate equal the codec's nominal one; a real header duration of a cut file
    makes it fall well below. Guesses can be far off on valid files, so they never count as a promise.
    """
    nominal, overall = stream.codec_context.bit_rate, container.bit_rate
    if nominal and overall and abs(overall - nominal) <= _ESTIMATE_BITRATE_TOLERANCE * nominal:
        return None
    return _header_seconds(container, stream)


def _check_riff_size(path: Path) -> None:
    """Reject a WAV whose RIFF header promises more bytes than the file holds (FFmpeg silently clamps it)."""
    with path.open("rb") as file:
        head = file.read(12)
    if head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return
    declared = int.from_bytes(head[4:8], "little") + 8
    actual = path.stat().st_size
    if declared < _RIFF_PLACEHOLDER_SIZE and declared - actual > _RIFF_SLACK_BYTES:
        raise InputError(
            f"{path}: the file looks truncated: its WAV header promises {declared} bytes but it holds "
            f"{actual}; re-export it"
        )


def _check_range(path: Path, start: float, duration: float | None) -> None:
    """Reject a negative --start or a --duration too short to hold a sample."""
    if start < 0:
        raise InputError(f"{path}: --start {start:g}s is negative; use 0 or a later time")
    if duration is not None and duration < _MIN_DURATION_S:
        raise InputError(f"{path}: --duration {duration:g}s is too short; give at least {_MIN_DURATION_S}s")


def _past_end(path: Path, start: float, song_s: float) -> InputError:
    """The error for a --start at or past the end of the song."""
    return InputError(
        f"{path}: --start {start:g}s is at or past the end of the song ({song_s:.2f}s long); "
        f"use a --start below {song_s:.2f}"
    )


def _planar(frame: av.AudioFrame) -> np.ndarray:
    """A frame's samples as [channels, n]: packed formats de-interleaved, u8 widened to int16, f64 to f32."""
    samples = frame.to_ndarray()
    if not frame.format.is_planar:
        samples = samples.reshape(-1, frame.layout.nb_channels).T
    if samples.dtype == np.uint8:
        return (samples.astype(np.int16) - 128) << 8
    if samples.dtype == np.float64:
        return samples.astype(np.float32)
    return samples


def _layout_name(layout: av.AudioLayout) -> str:
    """The layout's FFmpeg name; the unordered "1 channels"/"2 channels" of plain WAVs become mono/stereo."""
    if all(channel.name == "NONE" for channel in layout.channels):
        return _UNORDERED_LAYOUTS.get(layout.nb_channels, layout.name)
    return layout.name
