"""models/gelu.py: the sigmoid form of the tanh GELU is the same function, and it is installed where the
blocks compile."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from diffusers.models.activations import GELU
from hypothesis import given, settings
from hypothesis import strategies as st

from audioloop.models import accel
from audioloop.models.gelu import gelu_tanh, use_sigmoid_gelu
from tiny_inputs import sample, window_inputs

finite = st.floats(min_value=-1e4, max_value=1e4, allow_nan=False, width=32)


@settings(max_examples=200, deadline=None)
@given(st.lists(finite, min_size=1, max_size=64))
def test_sigmoid_form_equals_the_tanh_approximation_in_fp32(values: list[float]) -> None:
    x = torch.tensor(values, dtype=torch.float32)
    want = F.gelu(x.double(), approximate="tanh")
    torch.testing.assert_close(gelu_tanh(x).double(), want, rtol=2e-6, atol=1e-7)


def test_bf16_inputs_give_what_torch_gives_to_a_bf16_ulp() -> None:
    x = torch.linspace(-12, 12, 20001).to(torch.bfloat16)
    got, want = gelu_tanh(x), F.gelu(x, approximate="tanh")
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), want.float(), rtol=2**-8, atol=1e-6)
    assert torch.equal(gelu_tanh(torch.tensor([0.0, -40.0, 40.0])), torch.tensor([0.0, -0.0, 40.0]))


def test_install_covers_every_tanh_gelu_once_and_keeps_the_samples(model) -> None:
    fast = copy.deepcopy(model)
    gelus = [m for m in fast.modules() if isinstance(m, GELU)]
    assert use_sigmoid_gelu(fast) == len(gelus) == 2 * len(fast.transformer_blocks)
    assert use_sigmoid_gelu(fast) == len(gelus)  # again: the same modules, nothing stacked
    assert all(vars(m)["gelu"] is gelu_tanh for m in gelus)
    x = window_inputs()[1]
    torch.testing.assert_close(sample(fast, x), sample(model, x), rtol=1e-4, atol=1e-4)


def test_accelerate_installs_it_only_when_compiling(model) -> None:
    eager = copy.deepcopy(model)
    accel.accelerate(eager, accel.AccelSettings(compile=False), "cpu")
    assert not any("gelu" in vars(m) for m in eager.modules() if isinstance(m, GELU))
