"""models/accel.py on the tiny LTX-2.3 transformer: settings, cache dir, FP8 layers and numerics, compile
graphs, block streaming. CUDA-only paths run where a GPU is (the device machine); the full-size proof is
bench/step_variants.py."""

from __future__ import annotations

import copy
import dataclasses
import os

import pytest
import torch
from torch import nn

from audioloop.models import accel, fp8
from audioloop.models.tiny import tiny_transformer
from audioloop.sampling.layout import refine_window
from tiny_inputs import sample, window_inputs

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="CUDA streams, pinned memory and FP8 matmuls need a GPU")


def _aligned(linear: nn.Linear) -> bool:
    return linear.in_features % 16 == 0 and linear.out_features % 16 == 0


def test_settings_refuse_unknown_names_and_list_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="cudnn"):
        accel.AccelSettings(attention="fast")
    with pytest.raises(ValueError, match="video-tensorwise"):
        accel.AccelSettings(fp8="int4")
    assert accel.AccelSettings(attention="flash", fp8=accel.DEFAULT_FP8, offload=True).fp8 == "all"


@pytest.mark.parametrize("settings", [accel.AccelSettings(fp8="video"), accel.AccelSettings(offload=True)])
def test_fp8_and_offload_are_refused_off_cuda(settings: accel.AccelSettings) -> None:
    with pytest.raises(ValueError, match="CUDA"):
        accel.check_device(settings, torch.device("cpu"))


def test_compile_cache_lives_under_the_audioloop_cache_dir(tmp_path, monkeypatch) -> None:
    assert accel.compile_cache_dir({"AUDIOLOOP_CACHE_DIR": str(tmp_path)}) == tmp_path / "inductor"
    assert accel.compile_cache_dir({"XDG_CACHE_HOME": str(tmp_path)}) == tmp_path / "audioloop" / "inductor"
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "/elsewhere")
    monkeypatch.delenv("TRITON_CACHE_DIR", raising=False)
    pinned = []
    monkeypatch.setattr(accel.compile_tasks, "_set_triton_ptxas_path", lambda: pinned.append(True))
    target = accel.use_compile_cache(tmp_path / "c" / "inductor")
    assert target.is_dir() and os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(target)
    assert os.environ["TRITON_CACHE_DIR"] == str(target / "triton")
    assert pinned == [True]  # the ptxas inductor compiles with, in every process: one Triton cache key


def test_video_recipe_takes_exactly_the_aligned_video_token_linears(model) -> None:
    names = accel.fp8_layer_names(model, accel.FP8_RECIPES["video"])
    candidates = [f"transformer_blocks.{i}.{layer}" for i in range(2) for layer in accel.VIDEO_LINEARS]
    aligned = [n for n in candidates if _aligned(model.get_submodule(n))]
    assert sorted(names) == sorted(aligned)
    assert "transformer_blocks.1.ff.net.2" in names and "transformer_blocks.0.attn1.to_out.0" in names
    assert not any("audio_attn" in name or "audio_ff" in name for name in names)


def test_recipes_keep_edge_blocks_and_misaligned_linears_in_bf16(model) -> None:
    assert accel.fp8_layer_names(model, accel.FP8_RECIPES["video-edges"]) == []  # 2 blocks: both are edges
    last_only = accel.fp8_layer_names(model, accel.Fp8Recipe(bf16_blocks=(-1,)))
    assert last_only and all(name.startswith("transformer_blocks.0.") for name in last_only)
    every = accel.fp8_layer_names(model, accel.FP8_RECIPES["all"])
    assert every and all(_aligned(model.get_submodule(name)) for name in every)
    assert not any("to_gate_logits" in name for name in every)  # 2 heads: no FP8 matmul for that


def test_quantize_fp8_swaps_only_the_named_linears_and_the_model_still_runs(model) -> None:
    quantised = copy.deepcopy(model).to(torch.bfloat16)
    names = accel.fp8_layer_names(quantised, accel.FP8_RECIPES["video"])
    accel.quantize_fp8(quantised, accel.FP8_RECIPES["video"], names)
    swapped = {name for name, module in quantised.named_modules() if isinstance(module, fp8.Fp8Linear)}
    assert swapped == set(names)
    x = window_inputs(dtype=torch.bfloat16)[1]
    out, ref = sample(quantised, x), sample(copy.deepcopy(model).to(torch.bfloat16), x)
    assert torch.isfinite(out).all()
    assert (out.float() - ref.float()).norm() / ref.float().norm() < 0.25


def test_compiled_blocks_build_one_graph_for_every_window_layout_and_never_recompile(model) -> None:
    compiled = copy.deepcopy(model)
    accel.compile_blocks(compiled, backend="eager")
    torch._dynamo.reset()
    counters = torch._dynamo.utils.counters["stats"]
    windows = window_inputs()
    tile = refine_window(torch.randn(1, 8, 4, 4, 6, generator=torch.Generator().manual_seed(3)), 1, 25.0)
    windows.append({**windows[1], "layout": tile})  # a stage-2 tile: twice the rows and columns, no guide
    assert len({x["layout"].clean.shape[1] for x in windows}) == 3
    before = counters["unique_graphs"]
    first = [sample(compiled, x) for x in windows]
    assert counters["unique_graphs"] - before == 1  # the token count is symbolic; every block shares it
    for _ in range(2):  # more windows, NAG installed and removed around each: no recompiles
        again = [sample(compiled, x) for x in windows]
    assert counters["unique_graphs"] - before == 1
    for got, want, x in zip(again, first, windows, strict=True):
        torch.testing.assert_close(got, want)
        torch.testing.assert_close(got, sample(model, x))


def test_a_window_beyond_the_token_bound_compiles_a_static_graph_of_its_own(model, monkeypatch) -> None:
    compiled = copy.deepcopy(model)
    accel.compile_blocks(compiled, backend="eager")
    torch._dynamo.reset()
    windows = window_inputs()  # 24 and 30 tokens
    monkeypatch.setattr(accel, "MAX_VIDEO_TOKENS", 24)
    counters = torch._dynamo.utils.counters["stats"]
    before = counters["unique_graphs"]
    got = [sample(compiled, x) for x in windows + windows]
    assert counters["unique_graphs"] - before == 2
    for out, x in zip(got, windows + windows, strict=True):
        torch.testing.assert_close(out, sample(model, x))


def test_accelerate_without_compile_leaves_the_numbers_alone(model) -> None:
    fast = copy.deepcopy(model)
    assert accel.accelerate(fast, accel.AccelSettings(compile=False, attention="sdpa"), "cpu") is None
    x = window_inputs()[1]
    torch.testing.assert_close(sample(fast, x), sample(model, x))


def test_block_packing_is_aligned_and_disjoint() -> None:
    tensors = [torch.empty(3, dtype=torch.bfloat16), torch.empty(5, 7), torch.empty(1, dtype=torch.uint8)]
    offsets, size = accel._offsets(tensors)
    assert offsets == [0, 256, 512] and size == 513
    buffer = torch.zeros(size, dtype=torch.uint8)
    views = [accel._view(buffer, o, t) for o, t in zip(offsets, tensors, strict=True)]
    assert [(v.shape, v.dtype) for v in views] == [(t.shape, t.dtype) for t in tensors]


@needs_cuda
def test_streamed_blocks_compute_exactly_what_resident_blocks_do() -> None:
    resident = tiny_transformer().to("cuda", torch.bfloat16)
    streamed = tiny_transformer().to(torch.bfloat16)
    streamer = accel.accelerate(
        streamed, accel.AccelSettings(compile=False, attention="sdpa", offload=True), "cuda"
    )
    assert streamer is not None and len(streamer.host) == 2 and all(h.is_pinned() for h in streamer.host)
    windows = window_inputs(device="cuda", dtype=torch.bfloat16)
    for _ in range(2):  # the second pass uses the blocks prefetched at the end of the first
        for x in windows:
            torch.testing.assert_close(sample(streamed, x), sample(resident, x), rtol=0, atol=0)


@needs_cuda
def test_streaming_recovers_from_an_interrupted_forward() -> None:
    resident = tiny_transformer().to("cuda", torch.bfloat16)
    streamed = tiny_transformer().to(torch.bfloat16)
    accel.accelerate(streamed, accel.AccelSettings(compile=False, attention="sdpa", offload=True), "cuda")
    x = window_inputs(device="cuda", dtype=torch.bfloat16)[1]

    def stop(*_: object) -> None:
        raise KeyboardInterrupt

    handle = streamed.transformer_blocks[0].register_forward_hook(stop)
    with pytest.raises(KeyboardInterrupt):
        sample(streamed, x)
    handle.remove()
    torch.testing.assert_close(sample(streamed, x), sample(resident, x), rtol=0, atol=0)


@needs_cuda
@pytest.mark.parametrize("recipe", ["video", "video-exact", "video-tensorwise"])
def test_fp8_on_cuda_equals_its_dequantised_product(recipe: str) -> None:
    if torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("this GPU has no FP8 matmuls")
    torch.manual_seed(0)
    linear = nn.Linear(256, 128).to("cuda", torch.bfloat16)
    x = torch.randn(300, 256, device="cuda", dtype=torch.bfloat16)  # 300 rows: M need not be aligned
    spec = accel.FP8_RECIPES[recipe]
    layer = fp8.Fp8Linear(linear, spec.rowwise, spec.fast_accum)
    q, scale = (fp8.quantize_rows if spec.rowwise else fp8.quantize_tensor)(x)
    emulated = (q.float() * scale) @ (layer.weight.float() * layer.weight_scale.reshape(-1, 1)).t()
    torch.testing.assert_close(layer(x).float(), emulated + linear.bias.float(), rtol=2e-2, atol=2e-2)


@needs_cuda
def test_accelerate_fp8_offload_compiled_runs_both_layouts(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("AUDIOLOOP_CACHE_DIR", str(tmp_path))
    if torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("this GPU has no FP8 matmuls")
    reference = tiny_transformer().to("cuda", torch.bfloat16)
    fast = tiny_transformer().to(torch.bfloat16)
    settings = dataclasses.replace(accel.AccelSettings(fp8="video", offload=True), attention="sdpa")
    accel.accelerate(fast, settings, "cuda")
    assert (tmp_path / "inductor").is_dir()
    for x in window_inputs(device="cuda", dtype=torch.bfloat16):
        out, ref = sample(fast, x).float(), sample(reference, x).float()
        assert (out - ref).norm() / ref.norm() < 0.25


def test_accelerate_installs_the_two_level_modulation(model) -> None:
    fast = copy.deepcopy(model)
    accel.accelerate(fast, accel.AccelSettings(compile=False), "cpu")
    assert type(fast.time_embed).__name__ == "TwoLevelTimestepEmbed"


def test_choosing_the_transformers_attention_leaves_every_other_model_on_its_own(model) -> None:
    chosen = copy.deepcopy(model)
    accel.set_attention(chosen, "cudnn")  # a CUDA-only kernel: another model on the CPU must not inherit it
    assert chosen.transformer_blocks[0].attn1.processor._attention_backend == accel.ATTENTION["cudnn"]
    other = copy.deepcopy(model)
    x = window_inputs()[1]
    torch.testing.assert_close(sample(other, x), sample(model, x))
