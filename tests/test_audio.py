"""Song decoding: every format, rate and layout to 16 kHz stereo; exact ranges; source samples; bad files."""

import math
import wave as stdlib_wave
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from audioloop.errors import InputError
from audioloop.media.audio import (
    SAMPLE_RATE,
    AudioInfo,
    load_waveform,
    log_mel,
    probe_audio,
    read_source_audio,
    slice_window,
)
from mediagen import cut_file, gradient, tone, write_audio, write_image, write_tone

RATES = [8000, 22050, 44100, 48000]
FORMATS = [
    (".wav", RATES, [1, 2, 6]),
    (".flac", RATES, [1, 2, 6]),
    (".mp3", RATES, [1, 2]),
    (".m4a", RATES, [1, 2, 6]),
    (".ogg", [8000, 48000], [1, 2, 6]),
]
CASES = [(ext, rate, channels) for ext, rates, layouts in FORMATS for rate in rates for channels in layouts]
LOSSLESS = {".wav", ".flac"}
DOWNMIX_GAIN = {1: 1.0, 2: 1.0, 6: 1.0 + 2 * math.sqrt(0.5)}  # L = FL + C/√2 + BL/√2 with one tone everywhere
RAMP_SECONDS = 3


@pytest.fixture(scope="module")
def ramp_wav(tmp_path_factory) -> Path:
    """A 16 kHz mono wav whose sample i is (i mod 20000) − 10000, so every sample tells its index."""
    ramp = (np.arange(RAMP_SECONDS * SAMPLE_RATE) % 20_000 - 10_000).astype(np.int16)
    return write_audio(tmp_path_factory.mktemp("ramp") / "ramp.wav", ramp[None], SAMPLE_RATE)


def ramp_values(first: int, count: int) -> torch.Tensor:
    """What load_waveform must return for samples [first, first+count) of ramp_wav, one channel."""
    index = torch.arange(first, first + count)
    return ((index % 20_000 - 10_000) / 32768).float()


@pytest.mark.parametrize(("ext", "rate", "channels"), CASES)
def test_every_format_rate_and_layout_becomes_16k_stereo(tmp_path, ext, rate, channels):
    path = write_tone(tmp_path / f"tone{ext}", 0.6, rate, channels, amplitude=0.25)
    wave = load_waveform(path, start=0.1, duration=0.4)
    assert wave.dtype == torch.float32
    assert wave.shape == (2, 6400)
    spectrum = torch.fft.rfft(wave[0]).abs()
    assert spectrum.argmax().item() * SAMPLE_RATE / 6400 == 440.0
    expected_rms = 0.25 / math.sqrt(2) * DOWNMIX_GAIN[channels]
    torch.testing.assert_close(wave.pow(2).mean(1).sqrt(), torch.full((2,), expected_rms), rtol=0.1, atol=0)
    if ext in LOSSLESS:
        assert torch.equal(wave[0], wave[1])


def test_mono_44k_is_duplicated_at_full_level(tmp_path):
    path = write_tone(tmp_path / "mono.wav", 1.3, 44100, 1, amplitude=0.5)
    wave = load_waveform(path)
    assert wave.shape == (2, round(1.3 * SAMPLE_RATE))
    assert torch.equal(wave[0], wave[1])
    assert abs(wave[:, 800:-800].abs().max().item() - 0.5) < 0.01


def test_surround_downmix_keeps_left_and_right_apart(tmp_path):
    samples = np.zeros((6, 48000), np.float32)
    samples[0] = tone(1.0, 48000, amplitude=0.4)[0]  # front left only
    wave = load_waveform(write_audio(tmp_path / "fl.flac", samples, 48000, layout="5.1"))
    assert abs(wave[0, 800:-800].abs().max().item() - 0.4) < 0.01
    assert wave[1].abs().max().item() < 1e-6


def test_start_is_sample_exact_without_resampling(ramp_wav):
    wave = load_waveform(ramp_wav, start=0.25, duration=0.5)
    assert torch.equal(wave[0], ramp_values(4000, 8000))
    assert torch.equal(wave[1], wave[0])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    start=st.floats(0.0, RAMP_SECONDS - 0.01, allow_nan=False),
    duration=st.floats(0.001, RAMP_SECONDS, allow_nan=False),
)
def test_any_range_is_sample_exact_and_clipped_at_the_end(ramp_wav, start, duration):
    first = round(start * SAMPLE_RATE)
    span = duration if start + duration <= RAMP_SECONDS else RAMP_SECONDS - start
    count = round(span * SAMPLE_RATE)
    wave = load_waveform(ramp_wav, start=start, duration=duration)
    assert wave.shape == (2, count)
    assert torch.equal(wave[0], ramp_values(first, count))


def test_no_duration_means_to_the_end(ramp_wav):
    wave = load_waveform(ramp_wav, start=2.5)
    assert torch.equal(wave[0], ramp_values(40_000, 8000))


CLICK_CASES = [
    (48000, ".wav"),
    (44100, ".wav"),
    (44100, ".flac"),
    (44100, ".mp3"),
    (48000, ".m4a"),
    (48000, ".ogg"),
]


@pytest.mark.parametrize(("rate", "ext"), CLICK_CASES)
def test_clicks_land_on_the_right_16k_sample_after_resampling(tmp_path, rate, ext):
    grid = rate // 100  # source samples per 10 ms, i.e. per 160 samples at 16 kHz
    clicks_16k = np.arange(5, 190, 7) * 160
    samples = np.zeros((1, 2 * rate), np.float32)
    samples[0, clicks_16k // 160 * grid] = 0.8
    start = 0.2371
    wave = load_waveform(write_audio(tmp_path / f"clicks{ext}", samples, rate), start, 1.0)[0].numpy()
    expected = [c - round(start * SAMPLE_RATE) for c in clicks_16k]
    expected = [e for e in expected if 3 <= e < wave.shape[0] - 3]
    found = [e - 3 + int(np.argmax(np.abs(wave[e - 3 : e + 4]))) for e in expected]
    tolerance = 0 if ext in LOSSLESS else 1
    assert np.abs(np.array(found) - np.array(expected)).max() <= tolerance


@pytest.mark.parametrize("ext", [".wav", ".flac", ".mp3", ".m4a", ".ogg"])
def test_a_short_clip_works(tmp_path, ext):
    rate = 48000 if ext == ".ogg" else 44100
    wave = load_waveform(write_tone(tmp_path / f"short{ext}", 0.3, rate))
    if ext in LOSSLESS:
        assert wave.shape[1] == 4800
    else:  # lossy codecs pad the end to whole codec frames
        assert 4700 <= wave.shape[1] <= 5200
    assert torch.isfinite(log_mel(wave)).all()


def test_silence_is_fine(tmp_path):
    path = write_audio(tmp_path / "silence.flac", np.zeros((2, 22050), np.int16), 22050)
    wave = load_waveform(path)
    assert wave.shape == (2, 16000)
    assert torch.equal(wave, torch.zeros(2, 16000))


@pytest.mark.parametrize("start", [1.0, 1.99997, 7.5])
def test_start_past_the_end(tmp_path, start):
    path = write_tone(tmp_path / "one_second.wav", 1.0, 16000)
    for read in (lambda: load_waveform(path, start), lambda: read_source_audio(path, start, 1.0)):
        with pytest.raises(InputError, match=r"--start .* past the end of the song \(1\.00s long") as caught:
            read()
        assert str(path) in str(caught.value)


def test_empty_song(tmp_path):
    path = tmp_path / "empty.wav"
    with stdlib_wave.open(str(path), "wb") as empty:  # PyAV writes no file without packets
        empty.setnchannels(2)
        empty.setsampwidth(2)
        empty.setframerate(44100)
    with pytest.raises(
        InputError, match=r"empty\.wav: --start 0s is at or past the end of the song \(0\.00s"
    ):
        load_waveform(path)


@pytest.mark.parametrize(("start", "duration"), [(-0.1, None), (0.0, 0.0), (0.0, -1.0), (0.0, 1e-5)])
def test_bad_range_arguments(tmp_path, start, duration):
    path = write_tone(tmp_path / "tone.wav", 1.0, 16000)
    with pytest.raises(InputError, match=r"--start|--duration"):
        load_waveform(path, start, duration)


@pytest.mark.parametrize("ext", [".wav", ".mp3", ".flac"])
def test_cut_in_half_is_truncated(tmp_path, ext):
    path = cut_file(write_tone(tmp_path / f"song{ext}", 4.0, 44100, 2))
    with pytest.raises(InputError, match="truncated") as caught:
        load_waveform(path)
    assert str(path) in str(caught.value)
    assert "\n" not in str(caught.value)


def test_streamed_wav_with_unknown_riff_size_is_fine(tmp_path):
    path = write_tone(tmp_path / "streamed.wav", 1.0, 16000)
    data = bytearray(path.read_bytes())
    data[4:8] = b"\xff\xff\xff\xff"  # what a writer that cannot seek back leaves
    path.write_bytes(bytes(data))
    assert load_waveform(path).shape == (2, 16000)


def test_corrupt_middle_is_reported(tmp_path):
    path = write_tone(tmp_path / "song.mp3", 4.0, 44100, 2)
    data = bytearray(path.read_bytes())
    third = len(data) // 3
    data[third : 2 * third] = np.random.default_rng(0).integers(0, 256, third, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))
    with pytest.raises(InputError, match="truncated or damaged"):
        load_waveform(path)


def test_header_cut_m4a_is_reported(tmp_path):
    path = cut_file(write_tone(tmp_path / "song.m4a", 2.0, 44100))
    with pytest.raises(InputError, match=r"cannot be read as audio.*re-export"):
        load_waveform(path)


def test_vbr_mp3_without_xing_header_is_not_called_truncated(tmp_path):
    """FFmpeg guesses such a file's length from its first frames' bit rate: the guess is no promise."""
    rate = 44100
    samples = np.zeros((1, 6 * rate), np.float32)
    samples[0, 3 * rate :] = np.random.default_rng(0).uniform(-0.5, 0.5, 3 * rate)
    path = tmp_path / "vbr.mp3"
    with av.open(str(path), "w", options={"write_xing": "0"}) as container:
        stream = container.add_stream("libmp3lame", rate=rate, layout="mono")
        stream.codec_context.qscale = 4
        stream.codec_context.flags |= av.codec.context.Flags.qscale
        frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
        frame.sample_rate, frame.pts = rate, 0
        container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    assert probe_audio(path).duration > 10.0  # the header's guess really is far off
    assert 5.9 < load_waveform(path).shape[1] / SAMPLE_RATE < 6.2


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match=r"nope\.wav: audio file not found"):
        load_waveform(tmp_path / "nope.wav")


def test_not_audio(tmp_path):
    junk = tmp_path / "song.mp3"
    junk.write_bytes(b"\x00\x01 not really an mp3 " * 100)
    with pytest.raises(InputError, match=r"song\.mp3: cannot be read as audio"):
        probe_audio(junk)


def test_text_file_has_no_audio_stream(tmp_path):
    text = tmp_path / "lyrics.txt"
    text.write_text("la la la\n" * 200)
    with pytest.raises(InputError, match=r"lyrics\.txt: has no audio stream"):
        probe_audio(text)


def test_image_has_no_audio_stream(tmp_path):
    path = write_image(tmp_path / "cover.png", gradient(32, 32))
    with pytest.raises(InputError, match=r"cover\.png: has no audio stream"):
        load_waveform(path)


@pytest.mark.parametrize(
    ("ext", "rate", "channels", "codec"),
    [(".wav", 44100, 2, "pcm_s16le"), (".flac", 8000, 6, "flac"), (".mp3", 22050, 1, "mp3"),
     (".m4a", 48000, 2, "aac"), (".ogg", 48000, 1, "opus")],
)  # fmt: skip
def test_probe_reads_the_header(tmp_path, ext, rate, channels, codec):
    path = write_tone(tmp_path / f"tone{ext}", 2.0, rate, channels)
    info = probe_audio(path)
    assert (info.path, info.sample_rate, info.channels, info.codec) == (path, rate, channels, codec)
    assert abs(info.duration - 2.0) < 0.05
    assert isinstance(info, AudioInfo)


def test_source_audio_is_the_original_int16_samples(tmp_path):
    rate = 44100
    samples = np.random.default_rng(1).integers(-32768, 32768, (2, 3 * rate), dtype=np.int16)
    path = write_audio(tmp_path / "song.wav", samples, rate)
    source = read_source_audio(path, start=1.2345, duration=0.777)
    first, count = round(1.2345 * rate), round(0.777 * rate)
    assert (source.sample_rate, source.layout, source.samples.dtype) == (rate, "stereo", np.int16)
    np.testing.assert_array_equal(source.samples, samples[:, first : first + count])


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(start=st.floats(0.0, 2.99, allow_nan=False), duration=st.floats(0.001, 4.0, allow_nan=False))
def test_source_audio_any_range_is_exact_and_clipped(ramp_wav, start, duration):
    ramp = (np.arange(RAMP_SECONDS * SAMPLE_RATE) % 20_000 - 10_000).astype(np.int16)
    first, count = round(start * SAMPLE_RATE), round(duration * SAMPLE_RATE)
    source = read_source_audio(ramp_wav, start, duration)
    assert source.layout == "mono"
    np.testing.assert_array_equal(source.samples, ramp[None, first : first + count])


@pytest.mark.parametrize(
    ("ext", "channels", "dtype", "layout"),
    [(".flac", 6, np.int16, "5.1"), (".mp3", 2, np.float32, "stereo"), (".ogg", 1, np.float32, "mono")],
)
def test_source_audio_keeps_native_dtype_and_layout(tmp_path, ext, channels, dtype, layout):
    path = write_tone(tmp_path / f"tone{ext}", 1.0, 48000, channels)
    source = read_source_audio(path, 0.25, 0.5)
    assert (source.samples.dtype, source.layout, source.samples.shape) == (dtype, layout, (channels, 24000))


@settings(max_examples=200, deadline=None)
@given(
    length=st.integers(0, 5000),
    start=st.floats(0.0, 0.5, allow_nan=False),
    duration=st.floats(0.0, 0.5, allow_nan=False),
)
def test_slice_window_offsets_and_zero_padding(length, start, duration):
    waveform = torch.arange(1, 2 * length + 1, dtype=torch.float32).reshape(2, length)
    first, count = round(start * SAMPLE_RATE), round(duration * SAMPLE_RATE)
    window = slice_window(waveform, start, duration)
    assert window.shape == (2, count)
    inside = max(0, min(count, length - first))
    assert torch.equal(window[:, :inside], waveform[:, first : first + inside])
    assert torch.equal(window[:, inside:], torch.zeros(2, count - inside))


def test_slice_window_rejects_negative_times():
    with pytest.raises(ValueError, match="slice_window"):
        slice_window(torch.zeros(2, 10), -0.001, 0.1)
