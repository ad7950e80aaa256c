"""Streams rendered frames (RGB or yuv420p) into H.264 and muxes the original song audio, atomically on disk.

Containers and audio codecs (the audio is always the song's own samples, never re-generated):

- ``.mp4``: AAC at the source rate when AAC supports it, else resampled to 48 kHz.
- ``.mkv``: sample-exact. FLAC for int16 and for int32 holding 24-bit audio (low 8 bits all zero, which is how
  24-bit files decode), ``pcm_s32le`` for full 32-bit int32 (FFmpeg's FLAC encoder stores 24 bits at most),
  ``pcm_f32le`` for float32.
- ``.mov``: sample-exact PCM (``pcm_s16le`` / ``pcm_s32le`` / ``pcm_f32le``): FFmpeg cannot put FLAC in .mov.

The audio is cut to exactly ``round(total_frames · sample_rate / fps)`` samples: a song range a fraction of a
frame longer than the video is trimmed (audio must not outlast the last picture), a shorter one is padded with
silence. Audio starts at t = 0 with the first frame and is muxed up to the current video time after every
queued chunk, so the muxer interleaves as it goes instead of buffering the whole song. The encoder thread
encodes the audio ahead (up to AUDIO_AHEAD_SECONDS) while it waits for frames: AAC takes ~1 s of a core per
15 s of song, which would otherwise come after the render's last frames arrive.
"""

from __future__ import annotations

import collections
import os
import threading
from fractions import Fraction
from pathlib import Path
from types import TracebackType

import av
import numpy as np
import torch
from av.video.reformatter import ColorPrimaries, ColorRange, ColorTrc

from audioloop.config import MAX_CRF
from audioloop.errors import InputError, SettingsError
from audioloop.media.audio import SourceAudio
from audioloop.media.yuv import planes_shape, yuv420p

CONTAINER_FORMATS = {".mp4": "mp4", ".mkv": "matroska", ".mov": "mov"}
DEFAULT_MAX_QUEUED_FRAMES = 512  # one default window (497 frames) queues without blocking the sampling loop
X264_PRESETS = (
    "ultrafast",
    "superfast",
    "veryfast",
    "faster",
    "fast",
    "medium",
    "slow",
    "slower",
    "veryslow",
    "placebo",
)
AAC_FALLBACK_RATE = 48_000
AAC_BIT_RATE_PER_CHANNEL = 128_000
AUDIO_FRAME_SAMPLES = 4096  # samples per frame handed to the audio encoder: fine-grained interleaving
AUDIO_AHEAD_SECONDS = 60  # how far the audio is encoded ahead of the video: more than a window's span
AVCOL_SPC_BT709 = 1  # libavutil's AVColorSpace value for BT.709; PyAV has no enum for it

_PLANAR_FORMATS = {np.dtype(np.int16): "s16p", np.dtype(np.int32): "s32p", np.dtype(np.float32): "fltp"}


def _audio_codec(suffix: str, samples: np.ndarray) -> tuple[str, str | None]:
    """The (codec, sample format) that stores `samples` in this container: AAC in .mp4, else sample-exact."""
    if suffix == ".mp4":
        return "aac", None
    if samples.dtype == np.float32:
        return "pcm_f32le", "flt"
    if samples.dtype == np.int16:
        return ("flac", "s16") if suffix == ".mkv" else ("pcm_s16le", "s16")
    if suffix == ".mkv" and not np.any(samples & 0xFF):
        return "flac", "s32"
    return "pcm_s32le", "s32"


def _fit_samples(samples: np.ndarray, n: int) -> np.ndarray:
    """`samples` cut or silence-padded to exactly `n` samples per channel."""
    if samples.shape[1] >= n:
        return samples[:, :n]
    padded = np.zeros((samples.shape[0], n), dtype=samples.dtype)
    padded[:, : samples.shape[1]] = samples
    return padded


class VideoWriter:
    """Streams frames window by window into H.264 and muxes the original song audio; atomic on disk."""

    def __init__(
        self,
        path: Path,
        *,
        width: int,
        height: int,
        fps: float,
        audio: SourceAudio | None,
        total_frames: int,
        crf: int = 18,
        preset: str = "medium",
        max_queued_frames: int = DEFAULT_MAX_QUEUED_FRAMES,
    ) -> None:
        path = Path(path)
        suffix = path.suffix.lower()
        if suffix not in CONTAINER_FORMATS:
            raise InputError(f"{path}: unsupported output type {path.suffix!r}; use .mp4, .mkv or .mov")
        if path.is_dir():
            raise InputError(f"{path} is a directory; give a file name ending in .mp4, .mkv or .mov")
        if width <= 0 or height <= 0 or width % 2 or height % 2:
            raise ValueError(f"video size must be positive and even for yuv420p, got {width}x{height}")
        if fps <= 0 or total_frames < 1 or max_queued_frames < 1:
            raise ValueError(
                f"need fps, total_frames, max_queued_frames > 0: {fps}, {total_frames}, {max_queued_frames}"
            )
        if not 0 <= crf <= MAX_CRF:
            raise SettingsError(f"crf {crf} is out of range; use 0 (lossless) to {MAX_CRF} (worst)")
        if preset not in X264_PRESETS:
            raise SettingsError(f"unknown x264 preset {preset!r}; use one of {', '.join(X264_PRESETS)}")

        self.path = path
        self.peak_queued_frames = 0
        self._width, self._height = width, height
        self._rate = Fraction(fps).limit_denominator(1001)
        self._total = total_frames
        self._max_queued = max_queued_frames
        self._temp = path.with_name(f".{path.stem}.partial{path.suffix}")
        self._state = "open"
        self._written = 0
        self._encoded = 0
        self._queue: collections.deque[np.ndarray] = collections.deque()
        self._queued = 0
        self._closing = False
        self._aborted = False
        self._error: BaseException | None = None
        self._cond = threading.Condition()
        self._audio_samples: np.ndarray | None = None
        self._audio_encoded = 0  # samples handed to the audio encoder, in AUDIO_FRAME_SAMPLES frames
        self._audio_packets: collections.deque[tuple[int, list[av.Packet]]] = collections.deque()

        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            options = {"movflags": "+faststart"} if suffix in (".mp4", ".mov") else {}
            self._container = av.open(str(self._temp), "w", format=CONTAINER_FORMATS[suffix], options=options)
        except OSError as exc:
            raise InputError(f"cannot write {path}: {exc}; choose a writable output directory") from exc
        try:
            self._video = self._add_video_stream(crf, preset)
            if audio is not None:
                self._audio = self._add_audio_stream(audio, suffix)
        except BaseException:
            self._container.close()
            self._temp.unlink(missing_ok=True)
            raise
        self._thread = threading.Thread(target=self._run, name=f"VideoWriter({path.name})", daemon=True)
        self._thread.start()

    def _add_video_stream(self, crf: int, preset: str) -> av.VideoStream:
        """H.264 yuv420p, time base 1/fps, tagged BT.709 limited range (matching the RGB conversion)."""
        stream = self._container.add_stream("libx264", rate=self._rate)
        stream.width, stream.height, stream.pix_fmt = self._width, self._height, "yuv420p"
        stream.time_base = 1 / self._rate
        codec = stream.codec_context
        codec.options = {"crf": str(crf), "preset": preset}
        codec.thread_type = "FRAME"  # PyAV's default, SLICE, makes x264 thread by slices: slower and larger
        codec.color_primaries, codec.color_trc = ColorPrimaries.BT709, ColorTrc.BT709
        codec.colorspace, codec.color_range = AVCOL_SPC_BT709, ColorRange.MPEG
        return stream

    def _add_audio_stream(self, audio: SourceAudio, suffix: str) -> av.AudioStream:
        """The song's audio stream, with its samples fitted to the video's duration."""
        samples = audio.samples
        if samples.ndim != 2 or samples.dtype not in _PLANAR_FORMATS:
            raise ValueError(f"audio samples must be [channels, n] int16/int32/float32, got {samples.dtype}")
        channels = av.AudioLayout(audio.layout).nb_channels
        if samples.shape[0] != channels:
            raise ValueError(
                f"audio layout {audio.layout!r} has {channels} channels, samples have {len(samples)}"
            )
        codec_name, sample_format = _audio_codec(suffix, samples)
        rate = audio.sample_rate
        if codec_name == "aac" and rate not in av.Codec("aac", "w").audio_rates:
            rate = AAC_FALLBACK_RATE
        stream = self._container.add_stream(codec_name, rate=rate, layout=audio.layout)
        if sample_format is not None:
            stream.codec_context.format = sample_format
        if codec_name == "aac":
            stream.bit_rate = AAC_BIT_RATE_PER_CHANNEL * channels
        stream.time_base = Fraction(1, rate)
        self._audio_rate = audio.sample_rate
        self._audio_layout = audio.layout
        self._audio_samples = _fit_samples(samples, self._samples_at(self._total))
        return stream

    def _samples_at(self, frame_count: int) -> int:
        """Song samples that play during the first `frame_count` frames (rounded to the nearest sample)."""
        return round(frame_count * self._audio_rate / self._rate)

    def write(self, frames: torch.Tensor | np.ndarray) -> None:
        """Queue a chunk of uint8 RGB frames [F, H, W, 3], converted to yuv420p where they are (a tensor on
        the GPU, there); blocks only while the queue is full."""
        self._check_open()
        self._check_frames(frames, (self._height, self._width, 3), "RGB")
        rgb = frames if isinstance(frames, torch.Tensor) else torch.from_numpy(np.array(frames))
        self._queue_planes(yuv420p(rgb).cpu().numpy(), owned=True)

    def write_yuv420p(self, planes: torch.Tensor | np.ndarray) -> None:
        """Queue a chunk of frames already converted, uint8 yuv420p planes [F, 3H/2, W] as `media.yuv` lays
        them out (the decoder converts on the GPU); blocks only while the queue is full."""
        self._check_open()
        self._check_frames(planes, planes_shape(1, self._height, self._width)[1:], "yuv420p")
        if isinstance(planes, torch.Tensor):
            self._queue_planes(planes.detach().cpu().contiguous().numpy(), owned=planes.device.type != "cpu")
        else:
            self._queue_planes(np.asarray(planes), owned=False)

    def _queue_planes(self, array: np.ndarray, owned: bool) -> None:
        """Queue yuv420p frames in pieces of at most max_queued_frames, copying what the caller still owns."""
        if self._written + len(array) > self._total:
            raise ValueError(
                f"{self.path}: {self._written} + {len(array)} frames exceed the {self._total} the video holds"
            )
        for start in range(0, len(array), self._max_queued):
            piece = array[start : start + self._max_queued]
            if not owned or len(piece) < len(array):
                piece = piece.copy()
            with self._cond:
                while self._queued + len(piece) > self._max_queued and self._accepting():
                    self._cond.wait()
                if self._accepting():
                    self._queue.append(piece)
                    self._queued += len(piece)
                    self.peak_queued_frames = max(self.peak_queued_frames, self._queued)
                    self._cond.notify_all()
            self._check_open()
        self._written += len(array)

    def _accepting(self) -> bool:
        """Whether queued frames will still be encoded: no encoder error, no abort (from another thread)."""
        return self._error is None and not self._aborted

    @staticmethod
    def _check_frames(frames: torch.Tensor | np.ndarray, frame: tuple[int, ...], kind: str) -> None:
        """Refuse anything but uint8 [F ≥ 1, *frame]."""
        shape = tuple(frames.shape)
        uint8 = frames.dtype == (torch.uint8 if isinstance(frames, torch.Tensor) else np.uint8)
        if len(shape) != len(frame) + 1 or shape[0] < 1 or shape[1:] != frame or not uint8:
            size = ", ".join(map(str, frame))
            raise ValueError(f"frames must be uint8 [F ≥ 1, {size}] {kind}, got {frames.dtype} {list(shape)}")

    def close(self) -> Path:
        """Wait for encoding, finish the audio and move the file onto `path`; a short video is refused."""
        self._check_open()
        if self._written < self._total:
            self.abort()
            raise ValueError(
                f"{self.path}: only {self._written} of {self._total} frames were written; nothing was saved"
            )
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join()
        self._check_open()
        try:
            os.replace(self._temp, self.path)
        except OSError as exc:
            self.abort()
            raise InputError(f"cannot write {self.path}: {exc}; choose a writable output path") from exc
        self._state = "closed"
        return self.path

    def abort(self) -> None:
        """Stop the encoder and delete the temp file; `path` is never created or touched."""
        if self._state == "closed":
            return
        self._state = "aborted"
        with self._cond:
            self._aborted = True
            self._cond.notify_all()
        self._thread.join()
        self._temp.unlink(missing_ok=True)

    def _check_open(self) -> None:
        """Refuse use after close/abort; re-raise an encoder failure in the caller, after cleaning up."""
        if self._state != "open":
            raise RuntimeError(f"the VideoWriter for {self.path} is already {self._state}")
        if self._error is not None:
            self.abort()
            raise self._error

    def __enter__(self) -> VideoWriter:
        """The writer itself: `with VideoWriter(...) as w`."""
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Close on success; abort on an exception, which then propagates."""
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def _run(self) -> None:
        """Encoder thread: drain the queue, interleave audio, flush and close the container."""
        try:
            with self._container:
                while (piece := self._take()) is not None:
                    self._encode_frames(piece)
                if not self._aborted:
                    self._container.mux(self._video.encode(None))
                    if self._audio_samples is not None:
                        self._mux_audio_until(self._audio_samples.shape[1])
                        self._container.mux(self._audio.encode(None))
        except BaseException as exc:
            with self._cond:
                self._error = exc
                self._queue.clear()
                self._cond.notify_all()

    def _take(self) -> np.ndarray | None:
        """The next queued chunk, encoding audio ahead while waiting for one; None once closing with an
        empty queue, or aborted."""
        while True:
            with self._cond:
                if self._aborted or (self._closing and not self._queue):
                    return None
                if self._queue:
                    piece = self._queue.popleft()
                    self._queued -= len(piece)
                    self._cond.notify_all()
                    return piece
                if not self._audio_ahead():
                    self._cond.wait()
                    continue
            self._encode_audio_frame()

    def _audio_ahead(self) -> bool:
        """Whether there is audio left to encode within AUDIO_AHEAD_SECONDS of the video encoded so far."""
        if self._audio_samples is None:
            return False
        limit = self._samples_at(self._encoded) + AUDIO_AHEAD_SECONDS * self._audio_rate
        return self._audio_encoded < min(limit, self._audio_samples.shape[1])

    def _encode_frames(self, piece: np.ndarray) -> None:
        """Encode yuv420p frames with pts 0, 1, 2, ..., then the audio up to the same time."""
        for planes in piece:
            if self._aborted:
                return
            frame = av.VideoFrame.from_ndarray(planes, format="yuv420p")
            frame.pts = self._encoded
            self._container.mux(self._video.encode(frame))
            self._encoded += 1
        if self._audio_samples is not None:
            self._mux_audio_until(self._samples_at(self._encoded))

    def _mux_audio_until(self, end: int) -> None:
        """Mux the audio frames that start before sample `end`, encoding those not encoded ahead."""
        while self._audio_encoded < end:
            self._encode_audio_frame()
        while self._audio_packets and self._audio_packets[0][0] < end:
            self._container.mux(self._audio_packets.popleft()[1])

    def _encode_audio_frame(self) -> None:
        """Encode the next AUDIO_FRAME_SAMPLES of the song, keeping its packets (with its start) to mux."""
        samples, start = self._audio_samples, self._audio_encoded
        chunk = np.ascontiguousarray(samples[:, start : start + AUDIO_FRAME_SAMPLES])
        frame = av.AudioFrame.from_ndarray(
            chunk, format=_PLANAR_FORMATS[samples.dtype], layout=self._audio_layout
        )
        frame.sample_rate = self._audio_rate
        frame.time_base = Fraction(1, self._audio_rate)
        frame.pts = start
        self._audio_packets.append((start, self._audio.encode(frame)))
        self._audio_encoded = start + chunk.shape[1]
