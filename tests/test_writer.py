"""VideoWriter: decode what it wrote with PyAV; check frames, rates, audio and the atomic-write contract."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from av.video.reformatter import ColorRange

from audioloop.errors import InputError
from audioloop.media import writer as writer_module
from audioloop.media.audio import SourceAudio
from audioloop.media.writer import AUDIO_FRAME_SAMPLES, VideoWriter
from audioloop.media.yuv import yuv420p

W, H = 64, 48


def moving_bars(n: int, start: int = 0) -> np.ndarray:
    """Frames [n, H, W, 3]: a horizontal gradient whose bars move 3 levels per frame."""
    t = np.arange(start, start + n)[:, None, None]
    x = np.arange(W)[None, None, :]
    red = ((4 * x + 3 * t) % 256).astype(np.uint8).repeat(H, axis=1)
    return np.stack([red, np.full_like(red, 100), 255 - red], axis=-1)


def tone(dtype: type, channels: int, n: int, seed: int = 0) -> np.ndarray:
    """Random full-scale samples [channels, n] in `dtype` (int32 keeps all 32 bits)."""
    rng = np.random.default_rng(seed)
    if dtype == np.float32:
        return rng.uniform(-1, 1, (channels, n)).astype(np.float32)
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, (channels, n), dtype=dtype, endpoint=True)


def write(path: Path, chunks: list, *, fps: float = 25, audio: SourceAudio | None = None, **kw) -> Path:
    """Write `chunks` with a fast preset and return the path close() gave."""
    kw = {"total_frames": sum(len(c) for c in chunks), "preset": "ultrafast", **kw}
    with VideoWriter(path, width=W, height=H, fps=fps, audio=audio, **kw) as w:
        for chunk in chunks:
            w.write(chunk)
    return w.path


def decode(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """All video frames as RGB [F, H, W, 3] and all audio samples as [channels, n] (None without audio)."""
    with av.open(str(path)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    audio = []
    with av.open(str(path)) as container:
        for f in container.decode(audio=0) if container.streams.audio else []:
            samples = f.to_ndarray()
            audio.append(samples.reshape(-1, f.layout.nb_channels).T if f.format.is_packed else samples)
    return np.stack(frames), np.concatenate(audio, axis=1) if audio else None


def files_in(directory: Path) -> list[str]:
    """Names in `directory`, hidden temp files included."""
    return sorted(p.name for p in directory.iterdir())


@pytest.mark.parametrize("suffix", [".mp4", ".mkv", ".mov"])
@pytest.mark.parametrize("fps", [25, 24000 / 1001])
def test_frame_count_size_and_rate_are_exact(tmp_path: Path, suffix: str, fps: float) -> None:
    path = write(tmp_path / f"out{suffix}", [moving_bars(20)], fps=fps)
    frames, audio = decode(path)
    assert frames.shape == (20, H, W, 3)
    assert audio is None
    with av.open(str(path)) as container:
        assert container.streams.video[0].average_rate == Fraction(fps).limit_denominator(1001)
        assert container.streams.video[0].codec_context.name == "h264"
        assert container.streams.video[0].format.name == "yuv420p"


def test_frame_content_is_roughly_right(tmp_path: Path) -> None:
    colours = [(200, 30, 90), (20, 180, 240)]
    chunks = [np.broadcast_to(np.array(c, np.uint8), (5, H, W, 3)).copy() for c in colours]
    frames, _ = decode(write(tmp_path / "out.mp4", chunks))
    means = frames.reshape(2, 5, -1, 3).mean(axis=2)
    assert np.abs(means - np.array(colours)[:, None, :]).max() <= 3
    moving, _ = decode(write(tmp_path / "bars.mp4", [moving_bars(10)]))
    assert np.abs(moving.astype(int) - moving_bars(10)).mean() < 6


@pytest.mark.parametrize("suffix", [".mkv", ".mov"])
@pytest.mark.parametrize(
    ("dtype", "layout", "rate", "codec"),
    [
        (np.int16, "stereo", 44100, {".mkv": "flac", ".mov": "pcm_s16le"}),
        (np.float32, "mono", 48000, {".mkv": "pcm_f32le", ".mov": "pcm_f32le"}),
        (np.int16, "5.1", 48000, {".mkv": "flac", ".mov": "pcm_s16le"}),
        (np.int32, "stereo", 44100, {".mkv": "pcm_s32le", ".mov": "pcm_s32le"}),
    ],
)
def test_lossless_audio_is_sample_exact(
    tmp_path: Path, suffix: str, dtype: type, layout: str, rate: int, codec: dict[str, str]
) -> None:
    channels = av.AudioLayout(layout).nb_channels
    samples = tone(dtype, channels, 20 * rate // 25)
    path = write(tmp_path / f"out{suffix}", [moving_bars(20)], audio=SourceAudio(samples, rate, layout))
    _, audio = decode(path)
    assert audio.dtype == dtype
    np.testing.assert_array_equal(audio, samples)
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        assert (stream.codec_context.name, stream.rate, stream.channels) == (codec[suffix], rate, channels)


def test_int32_holding_24_bit_audio_goes_to_flac_exactly(tmp_path: Path) -> None:
    samples = tone(np.int32, 2, 20 * 1764) & ~np.int32(0xFF)
    path = write(tmp_path / "out.mkv", [moving_bars(20)], audio=SourceAudio(samples, 44100, "stereo"))
    _, audio = decode(path)
    np.testing.assert_array_equal(audio, samples)
    with av.open(str(path)) as container:
        assert container.streams.audio[0].codec_context.name == "flac"


def test_audio_is_trimmed_to_the_video_or_padded_with_silence(tmp_path: Path) -> None:
    samples = tone(np.int16, 2, 20 * 1764 + 1000)
    _, audio = decode(
        write(tmp_path / "long.mkv", [moving_bars(20)], audio=SourceAudio(samples, 44100, "stereo"))
    )
    np.testing.assert_array_equal(audio, samples[:, : 20 * 1764])
    short = samples[:, : 20 * 1764 - 300]
    _, audio = decode(
        write(tmp_path / "short.mkv", [moving_bars(20)], audio=SourceAudio(short, 44100, "stereo"))
    )
    np.testing.assert_array_equal(audio[:, : short.shape[1]], short)
    np.testing.assert_array_equal(audio[:, short.shape[1] :], np.zeros((2, 300), np.int16))


@pytest.mark.parametrize(("rate", "coded_rate"), [(44100, 44100), (22000, 48000)])
@pytest.mark.parametrize("fps", [25, 24000 / 1001])
def test_mp4_audio_is_aac_and_lasts_as_long_as_the_video(
    tmp_path: Path, rate: int, coded_rate: int, fps: float
) -> None:
    samples = (tone(np.float32, 2, 2 * rate) * 0.3).astype(np.float32)
    path = write(tmp_path / "out.mp4", [moving_bars(30)], fps=fps, audio=SourceAudio(samples, rate, "stereo"))
    frame_s = 1 / fps
    _, audio = decode(path)
    with av.open(str(path)) as container:
        video, stream = container.streams.video[0], container.streams.audio[0]
        assert (stream.codec_context.name, stream.rate) == ("aac", coded_rate)
        video_s = float(video.duration * video.time_base)
        assert video_s == pytest.approx(30 / fps)
        assert abs(float(stream.duration * stream.time_base) - video_s) < frame_s
        assert abs(audio.shape[1] / coded_rate - video_s) < frame_s


@pytest.mark.parametrize("suffix", [".mp4", ".mkv", ".mov"])
def test_audio_starts_with_the_first_frame(tmp_path: Path, suffix: str) -> None:
    samples = tone(np.int16, 2, 10 * 1764)
    path = write(tmp_path / f"out{suffix}", [moving_bars(10)], audio=SourceAudio(samples, 44100, "stereo"))
    with av.open(str(path)) as container:
        first_packet = next(p for p in container.demux(audio=0) if p.pts is not None)
        priming = 1024 / 44100 if suffix == ".mp4" else 0  # AAC encoder delay, hidden by the mp4 edit list
        assert -priming - 1e-9 <= float(first_packet.pts * first_packet.time_base) <= 0
    with av.open(str(path)) as container:
        first_times = {}
        for frame in container.decode(audio=0, video=0):
            first_times.setdefault(type(frame).__name__, frame.time)
    assert first_times == {"AudioFrame": 0, "VideoFrame": 0}


def test_many_chunks_of_varying_sizes_match_one_chunk(tmp_path: Path) -> None:
    frames = moving_bars(50)
    audio = SourceAudio(tone(np.int16, 2, 50 * 1764), 44100, "stereo")
    sizes = [1, 7, 17, 1, 7, 17]
    chunks = np.split(frames, np.cumsum(sizes)[:-1])
    chunks[2] = torch.from_numpy(chunks[2])
    one = decode(write(tmp_path / "one.mkv", [frames], audio=audio))
    many = decode(write(tmp_path / "many.mkv", chunks, audio=audio, max_queued_frames=8))
    np.testing.assert_array_equal(one[0], many[0])
    np.testing.assert_array_equal(one[1], many[1])


def count_audio_frames(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Patch the writer to record the start sample of every audio frame it encodes, in order."""
    starts: list[int] = []
    encode = VideoWriter._encode_audio_frame

    def counted(self: VideoWriter) -> None:
        starts.append(self._audio_encoded)
        encode(self)

    monkeypatch.setattr(VideoWriter, "_encode_audio_frame", counted)
    return starts


def wait_for(condition: Callable[[], bool], seconds: float = 30) -> None:
    """Poll `condition` until it holds or `seconds` pass (the assertion after it says which)."""
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.005)


def forty_frames_with(samples: np.ndarray, path: Path) -> VideoWriter:
    """A writer for 40 frames at 25 fps with `samples` as 44.1 kHz stereo audio."""
    audio = SourceAudio(samples, 44100, "stereo")
    return VideoWriter(path, width=W, height=H, fps=25, audio=audio, total_frames=40, preset="ultrafast")


@pytest.mark.parametrize("suffix", [".mp4", ".mkv"])
def test_audio_is_encoded_ahead_while_the_writer_waits_for_frames(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, suffix: str
) -> None:
    """The render's last frames arrive after sampling ends: their audio must already be encoded by then."""
    starts = count_audio_frames(monkeypatch)
    samples = tone(np.int16, 2, 40 * 1764)
    frames = moving_bars(40)
    expected = list(range(0, samples.shape[1], AUDIO_FRAME_SAMPLES))
    with forty_frames_with(samples, tmp_path / f"out{suffix}") as w:
        wait_for(lambda: len(starts) == len(expected))
        assert starts == expected  # all of it, in order, before any frame was written
        w.write(frames)
    assert starts == expected  # and none again
    one_pass = write(tmp_path / f"one{suffix}", [frames], audio=SourceAudio(samples, 44100, "stereo"))
    np.testing.assert_array_equal(decode(w.path)[1], decode(one_pass)[1])


def test_audio_is_encoded_at_most_audio_ahead_seconds_ahead(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(writer_module, "AUDIO_AHEAD_SECONDS", 0.5)
    starts = count_audio_frames(monkeypatch)
    samples = tone(np.int16, 2, 40 * 1764)
    ahead = math.ceil(0.5 * 44100 / AUDIO_FRAME_SAMPLES)  # frames until 0.5 s of audio is reached
    with forty_frames_with(samples, tmp_path / "out.mkv") as w:
        wait_for(lambda: len(starts) >= ahead)
        time.sleep(0.2)
        assert len(starts) == ahead
        w.write(moving_bars(40))
    _, audio = decode(w.path)
    np.testing.assert_array_equal(audio, samples)


@pytest.mark.parametrize("existing", [False, True])
def test_failure_inside_the_with_block_leaves_no_file(tmp_path: Path, existing: bool) -> None:
    path = tmp_path / "out.mp4"
    if existing:
        path.write_bytes(b"previous render")
    audio = SourceAudio(tone(np.int16, 2, 30 * 1764), 44100, "stereo")
    with (
        pytest.raises(KeyError, match="boom"),
        VideoWriter(path, width=W, height=H, fps=25, audio=audio, total_frames=30) as w,
    ):
        w.write(moving_bars(10))
        w.write(moving_bars(10, start=10))
        raise KeyError("boom")
    assert files_in(tmp_path) == (["out.mp4"] if existing else [])
    if existing:
        assert path.read_bytes() == b"previous render"


def test_encoder_failure_is_raised_in_the_caller_and_leaves_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken_encoder(self: VideoWriter, piece: np.ndarray) -> None:
        raise OSError("No space left on device")

    monkeypatch.setattr(VideoWriter, "_encode_frames", broken_encoder)
    path = tmp_path / "out.mkv"
    path.write_bytes(b"previous render")
    with pytest.raises(OSError, match="No space left"):
        write(path, [moving_bars(4)] * 5)
    assert files_in(tmp_path) == ["out.mkv"]
    assert path.read_bytes() == b"previous render"


def test_too_many_frames_raise(tmp_path: Path) -> None:
    path = tmp_path / "out.mp4"
    with pytest.raises(ValueError, match="exceed the 10"):
        write(path, [moving_bars(6), moving_bars(5)], total_frames=10)
    with (
        pytest.raises(ValueError, match="exceed the 10"),
        VideoWriter(path, width=W, height=H, fps=25, audio=None, total_frames=10) as w,
    ):
        w.write(moving_bars(11))
    assert files_in(tmp_path) == []


def test_too_few_frames_raise_and_save_nothing(tmp_path: Path) -> None:
    path = tmp_path / "out.mp4"
    writer = VideoWriter(path, width=W, height=H, fps=25, audio=None, total_frames=10)
    writer.write(moving_bars(9))
    with pytest.raises(ValueError, match="only 9 of 10 frames"):
        writer.close()
    assert files_in(tmp_path) == []


def test_write_after_close_is_an_error(tmp_path: Path) -> None:
    writer = VideoWriter(tmp_path / "out.mp4", width=W, height=H, fps=25, audio=None, total_frames=2)
    writer.write(moving_bars(2))
    assert writer.close() == tmp_path / "out.mp4"
    with pytest.raises(RuntimeError, match="already closed"):
        writer.write(moving_bars(1))
    writer.abort()
    assert files_in(tmp_path) == ["out.mp4"]


def gate_encoder(monkeypatch: pytest.MonkeyPatch) -> threading.Event:
    """Make every VideoWriter's encoder thread wait for the returned event before each chunk."""
    gate = threading.Event()
    encode = VideoWriter._encode_frames

    def gated_encoder(self: VideoWriter, piece: np.ndarray) -> None:
        gate.wait()
        encode(self, piece)

    monkeypatch.setattr(VideoWriter, "_encode_frames", gated_encoder)
    return gate


def test_queue_is_bounded_while_the_encoder_is_slow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gate = gate_encoder(monkeypatch)
    frames = moving_bars(40)
    writer = VideoWriter(
        tmp_path / "out.mkv", width=W, height=H, fps=25, audio=None, total_frames=40, max_queued_frames=4
    )
    chunks = [frames[:10], *np.split(frames[10:], 15)]
    producer = threading.Thread(target=lambda: [writer.write(c) for c in chunks])
    producer.start()
    wait_for(lambda: writer.peak_queued_frames >= 4)
    assert producer.is_alive()  # the queue is full and the encoder holds a chunk: write() must block
    gate.set()
    producer.join()
    writer.close()
    assert writer.peak_queued_frames == 4
    decoded, _ = decode(tmp_path / "out.mkv")
    assert np.abs(decoded.astype(int) - frames).mean() < 6


def test_abort_from_another_thread_releases_a_blocked_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A decoder thread waiting on a full queue must not hang when the render aborts the writer."""
    gate = gate_encoder(monkeypatch)
    writer = VideoWriter(
        tmp_path / "out.mkv", width=W, height=H, fps=25, audio=None, total_frames=40, max_queued_frames=4
    )
    raised: list[BaseException] = []

    def produce() -> None:
        try:
            for chunk in np.split(moving_bars(40), 10):
                writer.write(chunk)
        except RuntimeError as exc:
            raised.append(exc)

    producer = threading.Thread(target=produce)
    producer.start()
    wait_for(lambda: writer.peak_queued_frames >= 4)
    threading.Timer(0.2, gate.set).start()
    writer.abort()
    producer.join(timeout=30)
    assert not producer.is_alive()
    assert len(raised) == 1 and "already aborted" in str(raised[0])
    assert files_in(tmp_path) == []


RGB_SHAPE = rf"frames must be uint8 \[F ≥ 1, {H}, {W}, 3\] RGB"
YUV_SHAPE = rf"frames must be uint8 \[F ≥ 1, {H * 3 // 2}, {W}\] yuv420p"


@pytest.mark.parametrize(
    ("method", "frames", "message"),
    [
        ("write", np.zeros((2, H, W, 3), np.float32), RGB_SHAPE),
        ("write", np.zeros((2, H, W, 4), np.uint8), RGB_SHAPE),
        ("write", np.zeros((2, W, H, 3), np.uint8), RGB_SHAPE),
        ("write", np.zeros((H, W, 3), np.uint8), RGB_SHAPE),
        ("write", np.zeros((0, H, W, 3), np.uint8), RGB_SHAPE),
        ("write", torch.zeros((2, H, W, 3), dtype=torch.float16), RGB_SHAPE),
        ("write_yuv420p", np.zeros((2, H, W), np.uint8), YUV_SHAPE),
        ("write_yuv420p", np.zeros((2, H * 3 // 2, W, 1), np.uint8), YUV_SHAPE),
        ("write_yuv420p", np.zeros((0, H * 3 // 2, W), np.uint8), YUV_SHAPE),
        ("write_yuv420p", torch.zeros((2, H * 3 // 2, W), dtype=torch.int16), YUV_SHAPE),
    ],
)
def test_wrong_frame_shape_or_dtype_raises(
    tmp_path: Path, method: str, frames: np.ndarray | torch.Tensor, message: str
) -> None:
    with (
        pytest.raises(ValueError, match=message),
        VideoWriter(tmp_path / "out.mp4", width=W, height=H, fps=25, audio=None, total_frames=2) as w,
    ):
        getattr(w, method)(frames)
    assert files_in(tmp_path) == []


def test_unsupported_suffix_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"\.mp4, \.mkv or \.mov"):
        VideoWriter(tmp_path / "out.avi", width=W, height=H, fps=25, audio=None, total_frames=1)


def test_missing_output_directories_are_created(tmp_path: Path) -> None:
    path = write(tmp_path / "a" / "b" / "out.mov", [moving_bars(3)])
    assert path == tmp_path / "a" / "b" / "out.mov"
    assert files_in(path.parent) == ["out.mov"]


def test_yuv420p_planes_are_stored_exactly(tmp_path: Path) -> None:
    planes = yuv420p(torch.from_numpy(moving_bars(6)))
    with VideoWriter(tmp_path / "out.mkv", width=W, height=H, fps=25, audio=None, total_frames=6, crf=0) as w:
        w.write_yuv420p(planes[:2])
        w.write_yuv420p(planes[2:].numpy())
    with av.open(str(tmp_path / "out.mkv")) as container:
        stored = np.stack([f.to_ndarray() for f in container.decode(video=0)])
    np.testing.assert_array_equal(stored, planes.numpy())  # CRF 0 is lossless in yuv420p


def test_rgb_and_its_yuv420p_planes_give_the_same_video(tmp_path: Path) -> None:
    frames = moving_bars(8)
    rgb = write(tmp_path / "rgb.mkv", [frames])
    with VideoWriter(
        tmp_path / "yuv.mkv", width=W, height=H, fps=25, audio=None, total_frames=8, preset="ultrafast"
    ) as w:
        w.write_yuv420p(yuv420p(torch.from_numpy(frames)))
    np.testing.assert_array_equal(decode(rgb)[0], decode(tmp_path / "yuv.mkv")[0])


def test_the_stream_is_tagged_bt709_limited_range(tmp_path: Path) -> None:
    with av.open(str(write(tmp_path / "out.mp4", [moving_bars(2)]))) as container:
        codec = container.streams.video[0].codec_context
        assert (codec.color_primaries, codec.color_trc, codec.colorspace) == (1, 1, 1)
        assert codec.color_range == ColorRange.MPEG
