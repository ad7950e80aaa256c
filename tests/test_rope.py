"""models/rope.py and models/attention.py: the compact video RoPE tables expand to exactly diffusers' own,
the fusion-friendly split rotation equals diffusers', and `RotaryAttnProcessor` samples what the stock
processors sample, on the tiny LTX-2.3 transformer and on the full-size RoPE modules."""

from __future__ import annotations

import copy

import pytest
import torch
from diffusers import LTX2VideoTransformer3DModel
from diffusers.models.transformers.transformer_ltx2 import apply_split_rotary_emb
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from audioloop.models import accel
from audioloop.models.attention import (
    ROTARY_ATTENTIONS,
    RotaryAttnProcessor,
    split_rotary,
    use_rotary_attention,
)
from audioloop.models.configs import TRANSFORMER_2_3
from audioloop.models.rope import CompactRope, column_axes, distinct_positions, expand
from audioloop.parallel import TokenShard, shard_tokens
from audioloop.sampling.layout import first_window, next_window
from audioloop.sampling.sequence_parallel import _ShardHook, _Shards
from tiny_inputs import sample, window_inputs


@pytest.fixture(scope="module")
def full_size() -> nn.Module:
    """The full-size 2.3 transformer without weights: its RoPE modules hold none and run on the CPU."""
    with torch.device("meta"):
        return LTX2VideoTransformer3DModel(**TRANSFORMER_2_3)


def test_column_axes_follow_diffusers_layout_after_the_padding() -> None:
    # dim 16 over 3 axes: 16 // 6 = 2 frequencies per axis, 8 - 6 = 2 padding columns first, then axis-fastest
    assert column_axes(heads=2, half_dim=4, dim=16, num_axes=3).tolist() == [[0, 0, 0, 1], [2, 0, 1, 2]]
    assert column_axes(heads=1, half_dim=4, dim=8, num_axes=1).tolist() == [[0, 0, 0, 0]]


def test_distinct_positions_index_every_token_and_repeat_a_short_axis_last_value() -> None:
    # two axes, four tokens: axis 0 takes 2 distinct bounds, axis 1 takes 3
    coords = torch.tensor(
        [[[[0, 1], [0, 1], [1, 2], [1, 2]], [[0, 4], [4, 8], [0, 4], [8, 9]]]], dtype=torch.float32
    )
    pseudo, index = distinct_positions(coords)
    assert pseudo.shape == (1, 2, 3, 2)
    assert pseudo[0, 0].tolist() == [[0, 1], [1, 2], [1, 2]]  # the last distinct value fills the third row
    assert pseudo[0, 1].tolist() == [[0, 4], [4, 8], [8, 9]]
    assert index.tolist() == [[[0, 0, 1, 1], [0, 1, 0, 2]]]
    for a in range(2):  # each token's own bounds, read back through its index
        assert torch.equal(pseudo[0, a, index[0, a]], coords[0, a])


@pytest.mark.parametrize("window", [0, 1])
@pytest.mark.parametrize("name", ["rope", "cross_attn_rope"])
def test_tiny_tables_expand_to_exactly_diffusers_tables(model, window: int, name: str) -> None:
    coords = window_inputs()[window]["layout"].video_coords
    coords = coords if name == "rope" else coords[:, 0:1]
    inner = getattr(model, name)
    compact = CompactRope(inner)(coords)
    assert compact.cos.shape[2] < coords.shape[2]  # fewer pseudo-tokens than tokens
    for got, want in zip(expand(compact), inner(coords), strict=True):
        assert torch.equal(got, want)


@settings(max_examples=15, deadline=None)
@given(
    frames=st.integers(min_value=2, max_value=9),
    height=st.integers(min_value=1, max_value=5),
    width=st.integers(min_value=1, max_value=6),
    frozen=st.integers(min_value=1, max_value=8),
    first=st.booleans(),
)
def test_full_size_tables_expand_to_exactly_diffusers_tables(
    full_size, frames: int, height: int, width: int, frozen: int, first: bool
) -> None:
    image = torch.randn(1, 128, 1, height, width)
    if first or frozen >= frames:
        layout = first_window(image, frames, 25.0)
    else:
        layout = next_window(torch.randn(1, 128, frozen, height, width), image, frames, 25.0)
    coords = layout.video_coords
    for name, c in (("rope", coords), ("cross_attn_rope", coords[:, 0:1])):
        inner = getattr(full_size, name)
        for got, want in zip(
            expand(CompactRope(inner)(c, device="cpu")), inner(c, device="cpu"), strict=True
        ):
            assert torch.equal(got, want)


def test_tables_are_kept_while_the_coordinates_are_the_same_tensor(model) -> None:
    rope = CompactRope(model.cross_attn_rope)
    calls = []
    rope.inner.register_forward_pre_hook(lambda _m, args: calls.append(args[0].shape))
    coords = window_inputs()[1]["layout"].video_coords
    first = rope(coords[:, 0:1])
    assert rope(coords[:, 0:1]) is first  # a view rebuilt each call, as diffusers' forward slices it
    other = coords.clone()
    other[:, :, :, :] += 1.0
    moved = rope(other[:, 0:1])
    assert len(calls) == 2
    for got, want in zip(expand(moved), model.cross_attn_rope(other[:, 0:1]), strict=True):
        assert torch.equal(got, want)


@settings(max_examples=30, deadline=None)
@given(
    batch=st.integers(min_value=1, max_value=2),
    heads=st.integers(min_value=1, max_value=3),
    tokens=st.integers(min_value=1, max_value=9),
    half=st.integers(min_value=1, max_value=5),
    seed=st.integers(min_value=0, max_value=2**16),
)
def test_split_rotary_is_diffusers_rotation(
    batch: int, heads: int, tokens: int, half: int, seed: int
) -> None:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, tokens, heads * 2 * half, generator=gen)
    cos, sin = (torch.randn(batch, heads, tokens, half, generator=gen) for _ in range(2))
    want = apply_split_rotary_emb(x, (cos, sin))
    torch.testing.assert_close(split_rotary(x, cos, sin), want, rtol=1e-6, atol=1e-6)
    rotated = split_rotary(x.bfloat16(), cos, sin)
    assert rotated.dtype == torch.bfloat16
    torch.testing.assert_close(rotated, apply_split_rotary_emb(x.bfloat16(), (cos, sin)))


def test_split_rotary_turns_each_head_pair_by_its_angle() -> None:
    # one head, halves (x1, x2) = (1, 0) turned by 90°: (cos, sin) = (0, 1) gives (0, 1)
    x = torch.tensor([[[1.0, 0.0]]])
    out = split_rotary(x, torch.zeros(1, 1, 1, 1), torch.ones(1, 1, 1, 1))
    assert out.tolist() == [[[0.0, 1.0]]]


@pytest.mark.parametrize("window", [0, 1])
def test_rotary_attention_samples_what_the_stock_model_samples(model, window: int) -> None:
    fast = copy.deepcopy(model)
    use_rotary_attention(fast)
    x = window_inputs()[window]
    torch.testing.assert_close(sample(fast, x), sample(model, x))


def test_installing_twice_wraps_once_and_keeps_the_attention_backend(model) -> None:
    fast = copy.deepcopy(model)
    for block in fast.transformer_blocks:
        for name in ROTARY_ATTENTIONS:
            getattr(block, name).processor._attention_backend = "chosen"
    use_rotary_attention(fast)
    use_rotary_attention(fast)
    assert isinstance(fast.rope, CompactRope) and not isinstance(fast.rope.inner, CompactRope)
    assert isinstance(fast.cross_attn_rope, CompactRope)
    for block in fast.transformer_blocks:
        for name in ROTARY_ATTENTIONS:
            processor = getattr(block, name).processor
            assert isinstance(processor, RotaryAttnProcessor)
            assert processor._attention_backend == "chosen"
        assert not isinstance(block.attn2.processor, RotaryAttnProcessor)  # text attention: no RoPE


def test_the_processor_refuses_spatio_temporal_guidance(model) -> None:
    attn = copy.deepcopy(model.transformer_blocks[0].attn1)
    with pytest.raises(ValueError, match="STG"):
        RotaryAttnProcessor()(attn, torch.zeros(1, 3, attn.query_dim), perturbation_mask=torch.zeros(1, 1, 1))


def test_compiled_rotary_blocks_keep_one_graph_for_both_layouts(model) -> None:
    fast = copy.deepcopy(model)
    use_rotary_attention(fast)
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


def test_accelerate_installs_the_rotary_attention(model) -> None:
    fast = copy.deepcopy(model)
    accel.accelerate(fast, accel.AccelSettings(compile=False), "cpu")
    assert isinstance(fast.rope, CompactRope)
    assert isinstance(fast.transformer_blocks[0].attn1.processor, RotaryAttnProcessor)


def test_sequence_parallel_keeps_one_coordinate_shard_per_coordinate_tensor() -> None:
    hook = _ShardHook(_Shards(group=None, world=2, rank=1))
    coords = window_inputs()[1]["layout"].video_coords
    shard = TokenShard(coords.shape[2], 2, 1)
    first = hook._local_coords(coords, shard)
    assert hook._local_coords(coords, shard) is first  # the compact RoPE then keeps its tables
    assert torch.equal(first, shard_tokens(coords, shard, dim=2))
    assert hook._local_coords(coords.clone(), shard) is not first
