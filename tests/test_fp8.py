"""models/fp8.py: row and tensor quantisation, `Fp8Linear`, and the FFs whose GELU and quantisation are one
pass (the PyTorch form here; the Triton kernel where a GPU is, and against the two-loop form on the full
shape in bench/quantize.py)."""

from __future__ import annotations

import copy

import pytest
import torch
from diffusers.models.attention import FeedForward
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from audioloop.models import accel, fp8
from audioloop.models.gelu import gelu_tanh
from tiny_inputs import sample, window_inputs

CUDA = torch.cuda.is_available()


def _cpu_rowwise_products() -> bool:
    """Whether this torch's CPU `_scaled_mm` takes one scale per row, as a row-wise `Fp8Linear` calls it
    (2.13's does; 2.11's, on the GPU machine, takes one scale per tensor only)."""
    try:
        with torch.random.fork_rng(devices=[]):  # the probe's random weights leave the tests' RNG alone
            layer = fp8.Fp8Linear(nn.Linear(16, 16), rowwise=True, fast_accum=True)
        layer(torch.ones(1, 16, dtype=torch.bfloat16))
    except RuntimeError:
        return False
    return True


rowwise_on_cpu = pytest.mark.skipif(
    not _cpu_rowwise_products(), reason="this torch's CPU _scaled_mm takes no row-wise scales"
)


def test_row_quantisation_maps_each_rows_absmax_to_448_and_survives_zero_rows() -> None:
    x = torch.randn(5, 64) * torch.tensor([1e-3, 1.0, 10.0, 1e3, 0.0]).unsqueeze(1)
    q, scale = fp8.quantize_rows(x)
    assert q.dtype == torch.float8_e4m3fn and scale.shape == (5, 1)
    back = q.float() * scale
    assert torch.equal(back[4], torch.zeros(64))
    assert torch.allclose(back[:4].abs().amax(dim=1), x[:4].abs().amax(dim=1), rtol=1e-6)
    assert ((back - x).norm(dim=1)[:4] / x[:4].norm(dim=1)).max() < 0.05  # e4m3: 3 mantissa bits


@pytest.mark.parametrize("rowwise", [pytest.param(True, marks=rowwise_on_cpu), False])
@pytest.mark.parametrize("bias", [True, False])
def test_fp8_linear_equals_its_dequantised_product_and_is_close_to_the_linear(
    rowwise: bool, bias: bool
) -> None:
    torch.manual_seed(0)
    linear = nn.Linear(64, 32, bias=bias).to(torch.bfloat16)
    x = torch.randn(3, 7, 64, dtype=torch.bfloat16)
    layer = fp8.Fp8Linear(linear, rowwise=rowwise, fast_accum=True)
    out = layer(x)
    assert out.shape == (3, 7, 32) and out.dtype == torch.bfloat16
    assert (layer.in_features, layer.out_features) == (64, 32)
    quantize = fp8.quantize_rows if rowwise else fp8.quantize_tensor
    q, scale = quantize(x.reshape(-1, 64))
    emulated = (q.float() * scale) @ (layer.weight.float() * layer.weight_scale.reshape(-1, 1)).t()
    if bias:
        emulated = emulated + linear.bias.float()
    torch.testing.assert_close(out.float(), emulated.reshape(3, 7, 32), rtol=1e-2, atol=1e-2)
    ref = linear(x).float()
    assert (out.float() - ref).norm() / ref.norm() < 0.06


def _e4m3_half_step(v: torch.Tensor) -> torch.Tensor:
    """Half the spacing of e4m3 values around |v| (3 mantissa bits; subnormals below 2⁻⁶ step by 2⁻⁹)."""
    exponent = torch.floor(torch.log2(v.abs().clamp(min=2.0**-6)))
    return 2.0 ** (exponent - 3) / 2


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, width=32), min_size=1, max_size=48),
    st.integers(min_value=1, max_value=4),
)
def test_row_quantisation_rounds_every_element_to_its_nearest_e4m3_step(
    values: list[float], rows: int
) -> None:
    x = torch.tensor(values * rows).reshape(rows, -1) * torch.arange(1, rows + 1).unsqueeze(1)
    q, scale = fp8.quantize_rows(x)
    scaled = x / scale
    err = (q.float() * scale - x).abs()
    assert (err <= _e4m3_half_step(scaled) * scale * (1 + 1e-5) + 1e-30).all()
    above_floor = x.abs().amax(dim=1) >= 1e-12  # the scale's floor: rows below it quantise to zeros
    assert (q.float().abs().amax(dim=1)[above_floor] == 448).all()


def _fp8_ff(dim: int = 64, inner: int = 256) -> FeedForward:
    """A diffusers FF (tanh GELU) with both projections in row-wise FP8, as recipe "all" makes them."""
    torch.manual_seed(0)
    ff = FeedForward(dim, inner_dim=inner, activation_fn="gelu-approximate").to(torch.bfloat16).eval()
    ff.net[0].proj = fp8.Fp8Linear(ff.net[0].proj, rowwise=True, fast_accum=True)
    ff.net[2] = fp8.Fp8Linear(ff.net[2], rowwise=True, fast_accum=True)
    return ff


@rowwise_on_cpu
def test_the_fused_ff_computes_what_the_unfused_one_does_with_the_same_weights() -> None:
    ff = _fp8_ff()
    holder = nn.Sequential(ff)
    assert fp8.use_fused_gelu(holder, torch.device("cpu")) == 1
    fused = holder[0]
    assert isinstance(fused, fp8.Fp8FeedForward) and fused.up is ff.net[0].proj and fused.down is ff.net[2]
    assert fp8.use_fused_gelu(holder, torch.device("cpu")) == 0  # idempotent
    x = torch.randn(2, 9, 64, dtype=torch.bfloat16)
    want = ff.net[2](gelu_tanh(ff.net[0].proj(x)))
    torch.testing.assert_close(fused(x), want, rtol=0, atol=0)
    assert fused(x).shape == (2, 9, 64)


def test_only_ffs_in_fp8_with_a_row_wise_down_projection_and_no_dropout_are_fused() -> None:
    plain = FeedForward(64, inner_dim=256, activation_fn="gelu-approximate")
    tensorwise = _fp8_ff()
    tensorwise.net[2] = fp8.Fp8Linear(nn.Linear(256, 64), rowwise=False, fast_accum=True)
    dropping = _fp8_ff()
    dropping.net[1] = nn.Dropout(0.1)
    exact_gelu = _fp8_ff()
    exact_gelu.net[0].approximate = "none"
    for ff in (plain, tensorwise, dropping, exact_gelu):
        holder = nn.Sequential(ff)
        assert not fp8.fusable(ff)
        assert fp8.use_fused_gelu(holder, torch.device("cpu")) == 0 and holder[0] is ff
    assert fp8.fusable(_fp8_ff())


def _fp8_model(model: nn.Module) -> nn.Module:
    """A copy of the tiny transformer with recipe "all" applied (its aligned linears in FP8)."""
    quantised = copy.deepcopy(model).to(torch.bfloat16)
    accel.quantize_fp8(
        quantised, accel.FP8_RECIPES["all"], accel.fp8_layer_names(quantised, accel.FP8_RECIPES["all"])
    )
    return quantised


@rowwise_on_cpu
def test_recipe_all_has_every_fp8_ff_fused_and_the_samples_stay_close(model) -> None:
    quantised = _fp8_model(model)
    unfused = copy.deepcopy(quantised)
    in_fp8 = [name for name, ff in quantised.named_modules() if fp8.fusable(ff)]
    assert in_fp8 and fp8.use_fused_gelu(quantised, torch.device("cpu")) == len(in_fp8)
    assert all(isinstance(quantised.get_submodule(name), fp8.Fp8FeedForward) for name in in_fp8)
    x = window_inputs(dtype=torch.bfloat16)[1]
    out, ref = sample(quantised, x).float(), sample(unfused, x).float()
    assert (out - ref).norm() / ref.norm() < 0.05  # same math; the tanh and sigmoid forms round apart


@rowwise_on_cpu
def test_fused_blocks_still_compile_to_one_graph_for_both_layouts(model) -> None:
    quantised = _fp8_model(model)
    fp8.use_fused_gelu(quantised, torch.device("cpu"))
    accel.compile_blocks(quantised, backend="eager")  # Dynamo's graphs and guards; no inductor compile
    torch._dynamo.reset()
    counters = torch._dynamo.utils.counters["stats"]
    before = counters["unique_graphs"]
    for x in window_inputs(dtype=torch.bfloat16):
        sample(quantised, x)
    assert counters["unique_graphs"] - before == 1  # window 0 and windows ≥ 1, shared by every block


@pytest.mark.skipif(not CUDA, reason="the Triton kernel needs a GPU")
@pytest.mark.parametrize("k", [256, 1000, 16384])
def test_the_triton_kernel_matches_the_pytorch_form_to_an_e4m3_step(k: int) -> None:
    kernel = fp8.triton_gelu_quantize_rows()
    x = torch.randn(37, k, device="cuda", dtype=torch.bfloat16) * 3
    q, s = kernel(x)
    q_ref, s_ref = fp8.gelu_quantize_rows(x)
    torch.testing.assert_close(s, s_ref, rtol=1e-6, atol=0)
    back, ref = q.float() * s, q_ref.float() * s_ref
    assert (back - ref).abs().max() <= (s * 32).max()  # at most one e4m3 step (32 at the top binade)
