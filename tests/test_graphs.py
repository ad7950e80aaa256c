"""Replaying a window's transformer calls as a CUDA graph: off it is the plain call, on the CPU it is never
used, and on CUDA every call returns what the plain call would (the CUDA tests run on the GPU machine)."""

from __future__ import annotations

import pytest
import torch

from audioloop.sampling.graphs import ReplayedCall, replayed
from audioloop.sampling.window import SamplerSettings
from test_window import _inputs, _sample

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")


def affine(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """A stand-in for the transformer call: several kernels, a fresh output."""
    return (x * 2.0 + t.unsqueeze(-1)).sin() + x.mean()


def test_off_is_the_function_itself() -> None:
    assert replayed(affine, enabled=False) is affine
    assert isinstance(replayed(affine, enabled=True), ReplayedCall)


def test_graphs_are_off_unless_asked_and_a_cpu_window_ignores_them(model) -> None:
    assert SamplerSettings().cuda_graphs is False
    inputs = _inputs("next", seed=4)
    plain = _sample(model, inputs, seed=3)
    asked = _sample(model, inputs, seed=3, settings=SamplerSettings(cuda_graphs=True))
    assert torch.equal(plain, asked)


@cuda
def test_every_call_returns_the_plain_result_and_the_second_records() -> None:
    call = ReplayedCall(affine)
    gen = torch.Generator(device="cuda").manual_seed(0)
    for step in range(5):
        x = torch.randn(4, 64, 8, device="cuda", generator=gen)
        t = torch.full((4, 64), float(step), device="cuda")
        out = call(x, t)
        torch.testing.assert_close(out, affine(x, t), rtol=0, atol=0)
        assert (call.graph is None) == (step == 0)
    assert not call.failed


@cuda
def test_a_call_that_cannot_be_recorded_runs_as_it_is() -> None:
    def syncs(x: torch.Tensor) -> torch.Tensor:
        return x * float(x.sum().item())  # reads a value back: not allowed while recording

    call = ReplayedCall(syncs)
    x = torch.ones(3, device="cuda")
    call(x)
    with pytest.warns(UserWarning, match="CUDA graph recording failed"):
        out = call(x * 2)
    assert call.failed
    torch.testing.assert_close(out, torch.full((3,), 12.0, device="cuda"))
    torch.testing.assert_close(call(x), torch.full((3,), 3.0, device="cuda"))
