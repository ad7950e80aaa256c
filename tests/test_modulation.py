"""models/modulation.py: the video adaLN modulation from each sample's two timestep levels gives the
stock per-token modulation, on the level math and through the tiny LTX-2.3 transformer."""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from audioloop.models import accel
from audioloop.models.modulation import (
    TwoLevelTimestepEmbed,
    select_levels,
    two_levels,
    use_two_level_modulation,
)
from audioloop.sampling.sampler import token_timesteps
from tiny_inputs import sample, window_inputs


def test_two_levels_of_frozen_and_noisy_tokens() -> None:
    levels, top = two_levels(torch.tensor([[0.0, 750.0, 750.0, 0.0], [300.0, 300.0, 0.0, 300.0]]))
    assert levels.tolist() == [[0.0, 750.0], [0.0, 300.0]]
    assert top.tolist() == [[0, 1, 1, 0], [1, 1, 0, 1]]


def test_a_third_timestep_value_is_refused() -> None:
    with pytest.raises(RuntimeError, match="more than two values"):
        two_levels(torch.tensor([[0.0, 500.0, 750.0]]))


def test_a_sample_with_one_level_selects_the_same_row_everywhere() -> None:
    levels, top = two_levels(torch.full((1, 5), 420.0))
    assert levels.tolist() == [[420.0, 420.0]]
    assert select_levels(levels, top).tolist() == [[420.0] * 5]


@settings(max_examples=50, deadline=None)
@given(
    mask=st.lists(st.lists(st.booleans(), min_size=1, max_size=40), min_size=1, max_size=3).filter(
        lambda rows: len({len(r) for r in rows}) == 1
    ),
    sigma=st.floats(min_value=1e-4, max_value=1.0),
)
def test_selecting_the_levels_rebuilds_every_sampler_timestep_exactly(mask: list, sigma: float) -> None:
    timestep = token_timesteps(torch.tensor(mask, dtype=torch.float32), sigma)
    levels, top = two_levels(timestep)
    assert torch.equal(select_levels(levels, top), timestep)
    per_level = torch.randn(len(mask), 2, 3, 4)  # any trailing shape: one row per level
    picked = select_levels(per_level, top)
    for b, row in enumerate(mask):
        for n in range(len(row)):
            level = int(top[b, n])
            assert levels[b, level] == timestep[b, n]  # the row picked embeds the token's own timestep
            assert torch.equal(picked[b, n], per_level[b, level])


def test_the_embedding_runs_on_two_rows_persample(model) -> None:
    fast = copy.deepcopy(model)
    use_two_level_modulation(fast)
    seen = []
    fast.time_embed.inner.register_forward_pre_hook(lambda _m, args: seen.append(args[0].shape))
    sample(fast, window_inputs()[1], sigmas=(1.0, 0.0))
    assert seen == [torch.Size([2])]


def test_generated_tokens_get_the_stock_output_and_the_output_embedding_is_a_view(model) -> None:
    fast = copy.deepcopy(model)
    use_two_level_modulation(fast)
    embedded = []
    fast.time_embed.register_forward_hook(lambda _m, _a, out: embedded.append(out[1]))
    x = window_inputs()[1]
    outputs = []
    for net in (model, fast):
        spy = net.register_forward_hook(lambda _m, _a, out: outputs.append(out[0]))
        sample(net, x, sigmas=(1.0, 0.0))
        spy.remove()
    generated = x["layout"].mask[0] != 0
    assert 0 < generated.sum() < generated.numel()  # both kinds of token present
    torch.testing.assert_close(outputs[1][:, generated], outputs[0][:, generated])
    assert embedded[0].stride(0) == 0  # one row for all tokens, no per-token copy


def test_installing_twice_wraps_once(model) -> None:
    fast = copy.deepcopy(model)
    use_two_level_modulation(fast)
    use_two_level_modulation(fast)
    assert isinstance(fast.time_embed, TwoLevelTimestepEmbed)
    assert not isinstance(fast.time_embed.inner, TwoLevelTimestepEmbed)


@pytest.mark.parametrize("window", [0, 1])
def test_two_level_modulation_samples_what_the_stock_model_samples(model, window: int) -> None:
    fast = copy.deepcopy(model)
    use_two_level_modulation(fast)
    x = window_inputs()[window]
    torch.testing.assert_close(sample(fast, x), sample(model, x))


def test_compiled_two_level_blocks_keep_one_graph_for_both_layouts(model) -> None:
    fast = copy.deepcopy(model)
    use_two_level_modulation(fast)
    accel.compile_blocks(fast, backend="eager")
    torch._dynamo.reset()
    counters = torch._dynamo.utils.counters["stats"]
    before = counters["unique_graphs"]
    windows = window_inputs()
    for _ in range(2):
        got = [sample(fast, x) for x in windows]
    assert counters["unique_graphs"] - before == 1
    for out, x in zip(got, windows, strict=True):
        torch.testing.assert_close(out, sample(model, x))
