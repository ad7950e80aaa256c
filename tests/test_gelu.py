"""models/gelu.py: the sigmoid form of the tanh GELU is the same function, the epilogue GEMM's plumbing
(shapes, bias, transposed weight) is right, and both are installed where the blocks compile. The CUDA
epilogue's own numbers are measured on the GPU (bench/projections.py, bench/step_variants.py)."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from diffusers.models.activations import GELU
from hypothesis import given, settings
from hypothesis import strategies as st

from audioloop.models import accel
from audioloop.models.gelu import FastGELU, addmm_gelu, gelu_tanh, use_fast_gelu
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


def test_the_epilogue_gemm_is_the_linear_then_the_gelu_for_any_leading_shape() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 5, 16, generator=gen)
    weight, bias = torch.randn(24, 16, generator=gen), torch.randn(24, generator=gen)
    got = addmm_gelu(x.transpose(1, 2), weight, bias)  # non-contiguous input
    want = F.gelu(F.linear(x.transpose(1, 2), weight, bias))  # the CPU kernel's GELU is the erf form
    assert got.shape == (2, 5, 3, 24)
    torch.testing.assert_close(got, want)


def test_the_fast_gelu_takes_the_epilogue_only_on_cuda_with_a_plain_biased_linear(monkeypatch) -> None:
    calls: list[torch.Size] = []
    monkeypatch.setattr(
        "audioloop.models.gelu.addmm_gelu",
        lambda x, w, b: calls.append(x.shape) or gelu_tanh(F.linear(x, w, b)),
    )
    module = GELU(16, 32, approximate="tanh")
    module.__class__ = FastGELU
    x = torch.randn(1, 4, 16)
    torch.testing.assert_close(module(x), F.gelu(module.proj(x), approximate="tanh"), rtol=2e-6, atol=1e-6)
    monkeypatch.setattr(torch.Tensor, "is_cuda", property(lambda _t: True))
    module(x)
    assert calls == [x.shape]
    module.proj.bias = None
    module(x)
    assert calls == [x.shape]


def test_install_covers_every_tanh_gelu_once_and_keeps_the_samples(model) -> None:
    fast = copy.deepcopy(model)
    gelus = [m for m in fast.modules() if isinstance(m, GELU)]
    weights = [m.proj.weight for m in gelus]
    assert use_fast_gelu(fast) == len(gelus) == 2 * len(fast.transformer_blocks)
    assert use_fast_gelu(fast) == len(gelus)  # again: the same modules, nothing stacked
    assert all(type(m) is FastGELU for m in gelus)
    assert all(m.proj.weight is w for m, w in zip(gelus, weights, strict=True))
    x = window_inputs()[1]
    torch.testing.assert_close(sample(fast, x), sample(model, x), rtol=1e-4, atol=1e-4)


def test_accelerate_installs_it_only_when_compiling(model) -> None:
    eager = copy.deepcopy(model)
    accel.accelerate(eager, accel.AccelSettings(compile=False), "cpu")
    assert not any(type(m) is FastGELU for m in eager.modules())
    compiled = copy.deepcopy(model)
    accel.accelerate(compiled, accel.AccelSettings(), "cpu")
    assert all(type(m) is FastGELU for m in compiled.modules() if isinstance(m, GELU))
