"""log_mel against an independent numpy reference (own STFT and slaney filterbank); shapes; sines."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from audioloop.media.audio import SAMPLE_RATE, log_mel

N_FFT, HOP, N_MELS, F_MAX = 1024, 160, 64, 8000.0


def slaney_hz_to_mel(hz: np.ndarray) -> np.ndarray:
    """Slaney mel scale: linear (200/3 Hz per mel) below 1 kHz, logarithmic above."""
    hz = np.asarray(hz, dtype=np.float64)
    log_step = math.log(6.4) / 27.0
    return np.where(hz < 1000.0, 3.0 * hz / 200.0, 15.0 + np.log(np.maximum(hz, 1e-9) / 1000.0) / log_step)


def slaney_mel_to_hz(mel: np.ndarray) -> np.ndarray:
    """Inverse of slaney_hz_to_mel."""
    mel = np.asarray(mel, dtype=np.float64)
    log_step = math.log(6.4) / 27.0
    return np.where(mel < 15.0, 200.0 * mel / 3.0, 1000.0 * np.exp(log_step * (mel - 15.0)))


def mel_edges_hz() -> np.ndarray:
    """The 66 triangle corners in Hz: 64 centres plus the two outer edges, equally spaced in slaney mel."""
    return slaney_mel_to_hz(np.linspace(0.0, slaney_hz_to_mel(F_MAX), N_MELS + 2))


def reference_filterbank() -> np.ndarray:
    """Slaney-normalised triangles [513, 64]: area 1 per filter in Hz, as librosa's norm='slaney'."""
    fft_hz = np.linspace(0.0, SAMPLE_RATE / 2, N_FFT // 2 + 1)[:, None]
    edges = mel_edges_hz()
    lower, centre, upper = edges[:-2], edges[1:-1], edges[2:]
    rising = (fft_hz - lower) / (centre - lower)
    falling = (upper - fft_hz) / (upper - centre)
    return np.maximum(0.0, np.minimum(rising, falling)) * (2.0 / (upper - lower))


def reference_log_mel(wave: np.ndarray) -> np.ndarray:
    """[2, N] → [2, 1 + N//160, 64] with np.fft.rfft on reflect-padded, periodic-Hann-windowed frames."""
    window = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(N_FFT) / N_FFT)
    padded = np.pad(wave.astype(np.float64), ((0, 0), (N_FFT // 2, N_FFT // 2)), mode="reflect")
    count = 1 + wave.shape[1] // HOP
    frames = np.stack([padded[:, i * HOP : i * HOP + N_FFT] for i in range(count)], axis=1)
    magnitude = np.abs(np.fft.rfft(frames * window, axis=-1))
    return np.log(np.maximum(magnitude @ reference_filterbank(), 1e-5))


def test_reference_filterbank_is_area_normalised():
    """The test's own filterbank is sane before it judges anything: every filter has area 1 in Hz."""
    bin_hz = SAMPLE_RATE / N_FFT
    areas = reference_filterbank().sum(axis=0) * bin_hz
    np.testing.assert_allclose(areas[4:], 1.0, rtol=0.05)


@pytest.mark.parametrize("n", [1, 2, 100, 159, 160, 161, 512, 513, 1023, 1024, 1025, 16_000, 16_001])
def test_shape(n):
    assert log_mel(torch.zeros(2, n)).shape == (1, 2, 1 + n // 160, 64)


def test_batched_shape_and_dtype():
    mel = log_mel(torch.zeros(3, 2, 4000, dtype=torch.float64))
    assert mel.shape == (3, 2, 26, 64)
    assert mel.dtype == torch.float64


def test_batched_equals_one_by_one():
    waves = torch.randn(3, 2, 3000, generator=torch.Generator().manual_seed(0))
    together = log_mel(waves)
    for i in range(3):
        torch.testing.assert_close(together[i : i + 1], log_mel(waves[i]), rtol=0, atol=1e-5)


@pytest.mark.parametrize("shape", [(2,), (1, 1000), (3, 1000), (1, 1, 1000), (1, 2, 3, 1000)])
def test_rejects_wrong_layout(shape):
    with pytest.raises(ValueError, match="log_mel"):
        log_mel(torch.zeros(shape))


def test_silence_is_the_log_floor_everywhere():
    mel = log_mel(torch.zeros(2, 5000))
    assert torch.equal(mel, torch.full_like(mel, math.log(1e-5)))


@pytest.mark.parametrize("mel_bin", [6, 12, 20, 31, 44, 57, 62])
def test_sine_lands_in_its_mel_bin(mel_bin):
    hz = mel_edges_hz()[1 + mel_bin]
    t = torch.arange(SAMPLE_RATE, dtype=torch.float64) / SAMPLE_RATE
    wave = (0.5 * torch.sin(2 * math.pi * hz * t)).float().expand(2, -1)
    mel = log_mel(wave)[0]
    interior = mel[:, 10:-10].exp().mean(dim=1)
    assert interior.argmax(dim=-1).tolist() == [mel_bin, mel_bin]


@pytest.mark.parametrize("n", [300, 1024, 4321, 16_000])
def test_matches_numpy_reference(n):
    rng = np.random.default_rng(n)
    t = np.arange(n) / SAMPLE_RATE
    wave = 0.1 * rng.standard_normal((2, n)) + 0.4 * np.sin(2 * np.pi * np.array([[220.0], [3150.0]]) * t)
    ours = log_mel(torch.from_numpy(wave).float())[0].double().numpy()
    # |Δ log| is the relative error of the mel magnitude
    assert np.abs(ours - reference_log_mel(wave)).max() < 1e-4


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 3000), seed=st.integers(0, 2**32 - 1), scale=st.floats(1e-3, 1.0))
def test_matches_numpy_reference_in_float64(n, seed, scale):
    wave = scale * np.random.default_rng(seed).standard_normal((2, n))
    ours = log_mel(torch.from_numpy(wave))[0].numpy()
    np.testing.assert_allclose(ours, reference_log_mel(wave), rtol=0, atol=1e-9)
