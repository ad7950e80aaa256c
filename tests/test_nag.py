"""NAG on the text cross-attention of the tiny LTX-2.3 transformer."""

from __future__ import annotations

import pytest
import torch
from diffusers.models.transformers.transformer_ltx2 import LTX2PerturbedAttnProcessor
from hypothesis import given, settings
from hypothesis import strategies as st

import audioloop.models.attention as attention_module
from audioloop.models.tiny import tiny_transformer
from audioloop.sampling.layout import next_window
from audioloop.sampling.nag import (
    NagAttnProcessor,
    NagSettings,
    install_nag,
    nag_attention,
    nag_combine,
    nag_guidance,
    nag_normalize,
    nag_text,
    remove_nag,
    restore_processors,
)
from audioloop.sampling.window import SamplerSettings, sample_window

TEXT_TOKENS = 6


def _inputs(seed: int = 0, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen).to(dtype)

    layout = next_window(rand(1, 8, 2, 2, 3), rand(1, 8, 1, 2, 3), lat_frames=4, fps=25.0)
    return {
        "hidden_states": layout.clean.to(dtype),
        "video_coords": layout.video_coords,
        "audio_hidden_states": rand(1, 13, 16),
        "text_video": rand(1, TEXT_TOKENS, 16),
        "text_audio": rand(1, TEXT_TOKENS, 8),
        "negative_video": rand(1, TEXT_TOKENS, 16),
        "negative_audio": rand(1, TEXT_TOKENS, 8),
        "timestep": (layout.mask * 700.0).float(),
    }


def _forward(model: torch.nn.Module, inputs: dict[str, torch.Tensor], text_video, text_audio, **extra):
    sigma = torch.tensor([700.0])
    with torch.inference_mode():
        video, audio = model(
            hidden_states=inputs["hidden_states"],
            audio_hidden_states=inputs["audio_hidden_states"],
            encoder_hidden_states=text_video,
            audio_encoder_hidden_states=text_audio,
            timestep=inputs["timestep"],
            audio_timestep=torch.zeros(1),
            sigma=sigma,
            audio_sigma=sigma,
            video_coords=inputs["video_coords"],
            audio_num_frames=inputs["audio_hidden_states"].shape[1],
            use_cross_timestep=True,
            return_dict=False,
            **extra,
        )
    return video, audio


def _nag_forward(model, inputs, settings: NagSettings):
    text_audio = inputs["text_audio"]
    if settings.audio:
        text_audio = nag_text(text_audio, inputs["negative_audio"])
    with nag_attention(model, settings):
        return _forward(model, inputs, nag_text(inputs["text_video"], inputs["negative_video"]), text_audio)


@pytest.mark.parametrize("audio", [False, True])
def test_scale_one_reproduces_stock_attention(model, audio: bool) -> None:
    inputs = _inputs()
    stock = _forward(model, inputs, inputs["text_video"], inputs["text_audio"])
    nagged = _nag_forward(model, inputs, NagSettings(scale=1.0, audio=audio))
    for a, b in zip(stock, nagged, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_alpha_zero_reproduces_stock_attention_at_any_scale(model) -> None:
    inputs = _inputs(1)
    stock = _forward(model, inputs, inputs["text_video"], inputs["text_audio"])
    nagged = _nag_forward(model, inputs, NagSettings(scale=7.0, alpha=0.0))
    for a, b in zip(stock, nagged, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_scale_five_changes_the_forward(model) -> None:
    inputs = _inputs(2)
    stock_video, _ = _forward(model, inputs, inputs["text_video"], inputs["text_audio"])
    video, audio = _nag_forward(model, inputs, NagSettings(scale=5.0))
    assert (video - stock_video).abs().max() > 1e-3
    _, audio_nag = _nag_forward(model, inputs, NagSettings(scale=5.0, audio=True))
    assert (audio_nag - audio).abs().max() > 1e-3


def test_a_text_mask_is_split_with_the_text(model) -> None:
    inputs = _inputs(7)
    text = nag_text(inputs["text_video"], inputs["negative_video"])

    def forward(mask: torch.Tensor | None) -> torch.Tensor:
        with nag_attention(model, NagSettings()):
            return _forward(model, inputs, text, inputs["text_audio"], encoder_attention_mask=mask)[0]

    assert torch.equal(forward(torch.ones(1, 2 * TEXT_TOKENS)), forward(None))
    half_masked = torch.ones(1, 2 * TEXT_TOKENS)
    half_masked[:, TEXT_TOKENS + 2 :] = 0
    assert (forward(half_masked) - forward(None)).abs().max() > 1e-3


def test_nag_costs_one_extra_attention_over_the_text_keys_and_no_extra_pass(model, monkeypatch) -> None:
    key_lengths: list[int] = []
    original = attention_module.dispatch_attention_fn  # NAG attends through models/attention.attend

    def counting(query, key, value, **kwargs):
        key_lengths.append(key.shape[1])
        return original(query, key, value, **kwargs)

    monkeypatch.setattr(attention_module, "dispatch_attention_fn", counting)
    calls: list[int] = []
    handle = model.register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        _nag_forward(model, _inputs(3), NagSettings())
    finally:
        handle.remove()
    assert calls == [1]
    assert key_lengths == [TEXT_TOKENS] * 2 * len(model.transformer_blocks)


def test_block_modulates_the_negative_like_the_positive(model) -> None:
    """Negative = positive makes NAG plain attention at any scale: both halves got the same modulation."""
    inputs = _inputs(4)
    stock = _forward(model, inputs, inputs["text_video"], inputs["text_audio"])
    with nag_attention(model, NagSettings(scale=5.0)):
        nagged = _forward(
            model, inputs, nag_text(inputs["text_video"], inputs["text_video"]), inputs["text_audio"]
        )
    for a, b in zip(stock, nagged, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@settings(deadline=None, max_examples=80)
@given(
    batch=st.integers(1, 2),
    tokens=st.integers(1, 9),
    dim=st.integers(1, 24),
    scale=st.floats(1.0, 20.0),
    alpha=st.floats(0.0, 1.0),
    tau=st.floats(1.0, 10.0),
    spread=st.floats(1e-3, 1e3),
    seed=st.integers(0, 2**31 - 1),
)
def test_normalised_ratio_never_exceeds_tau(batch, tokens, dim, scale, alpha, tau, spread, seed) -> None:
    gen = torch.Generator().manual_seed(seed)
    z_pos = torch.randn(batch, tokens, dim, generator=gen)
    z_neg = spread * torch.randn(batch, tokens, dim, generator=gen)
    pos_norm = z_pos.abs().sum(-1)
    g = nag_normalize(nag_guidance(z_pos, z_neg, scale), z_pos, tau)
    assert torch.all(g.abs().sum(-1) <= tau * pos_norm * (1 + 1e-5))
    z = nag_combine(z_pos, z_neg, NagSettings(scale=scale, alpha=alpha, tau=tau))
    assert torch.all(z.abs().sum(-1) <= tau * pos_norm * (1 + 1e-5))


def test_normalisation_only_scales_tokens_over_the_cap() -> None:
    z_pos = torch.tensor([[[1.0, -1.0], [0.0, 0.0], [2.0, 0.0]]])
    g = torch.tensor([[[1.0, -2.0], [3.0, 0.0], [10.0, 10.0]]])
    out = nag_normalize(g, z_pos, tau=2.5)
    assert torch.equal(out[:, 0], g[:, 0])
    assert torch.equal(out[:, 1], torch.zeros(1, 2))
    torch.testing.assert_close(out[:, 2], torch.tensor([[2.5, 2.5]]))


def test_combine_at_scale_one_is_exactly_the_positive() -> None:
    gen = torch.Generator().manual_seed(5)
    z_pos, z_neg = torch.randn(2, 1, 7, 32, generator=gen)
    assert torch.equal(nag_guidance(z_pos, z_neg, 1.0), z_pos)
    assert torch.equal(nag_combine(z_pos, z_neg, NagSettings(scale=1.0, alpha=0.25, tau=1.0)), z_pos)


def test_guidance_formula() -> None:
    z_pos, z_neg = torch.tensor([2.0, 1.0]), torch.tensor([1.0, 3.0])
    assert torch.equal(nag_guidance(z_pos, z_neg, 5.0), 5.0 * z_pos - 4.0 * z_neg)


def test_negative_context_follows_a_dtype_move(model) -> None:
    """The negative is passed per call: sample_window casts it to the moved model's dtype every window."""
    model64 = tiny_transformer().to(torch.float64)
    inputs = _inputs(6)
    layout = next_window(torch.randn(1, 8, 2, 2, 3), torch.randn(1, 8, 1, 2, 3), lat_frames=4, fps=25.0)
    seen: list[torch.Tensor] = []
    handle = model64.register_forward_pre_hook(
        lambda _m, _a, kwargs: seen.append(kwargs["encoder_hidden_states"]), with_kwargs=True
    )
    try:
        out64 = sample_window(
            model64,
            layout,
            inputs["audio_hidden_states"],
            inputs["text_video"],
            inputs["text_audio"],
            inputs["negative_video"],
            inputs["negative_audio"],
            seed=0,
            settings=SamplerSettings(),
        )
    finally:
        handle.remove()
    assert all(t.dtype == torch.float64 and t.shape[1] == 2 * TEXT_TOKENS for t in seen)
    assert torch.equal(seen[0][:, TEXT_TOKENS:], inputs["negative_video"].double())
    out32 = sample_window(
        model,
        layout,
        inputs["audio_hidden_states"],
        inputs["text_video"],
        inputs["text_audio"],
        inputs["negative_video"],
        inputs["negative_audio"],
        seed=0,
        settings=SamplerSettings(),
    )
    torch.testing.assert_close(out64, out32, rtol=1e-4, atol=1e-4)


def test_install_remove_and_restore_processors(model) -> None:
    stock = {name: m.processor for name, m in model.named_modules() if name.endswith("attn2")}
    previous = install_nag(model, NagSettings())
    blocks = model.transformer_blocks
    assert all(isinstance(b.attn2.processor, NagAttnProcessor) for b in blocks)
    assert all(isinstance(b.audio_attn2.processor, LTX2PerturbedAttnProcessor) for b in blocks)
    assert all(isinstance(b.attn1.processor, LTX2PerturbedAttnProcessor) for b in blocks)
    installed = [b.attn2.processor for b in blocks]
    assert install_nag(model, NagSettings()) == {}
    assert [b.attn2.processor for b in blocks] == installed
    install_nag(model, NagSettings(audio=True))
    assert all(isinstance(b.audio_attn2.processor, NagAttnProcessor) for b in blocks)
    remove_nag(model)
    assert all(isinstance(b.attn2.processor, LTX2PerturbedAttnProcessor) for b in blocks)
    assert all(isinstance(b.audio_attn2.processor, LTX2PerturbedAttnProcessor) for b in blocks)
    restore_processors(model, previous)
    assert sorted(previous) == sorted(name for name in stock if name.endswith(".attn2"))
    assert all(m.processor is stock[name] for name, m in model.named_modules() if name in previous)


def test_context_manager_restores_and_none_means_stock(model) -> None:
    before = [b.attn2.processor for b in model.transformer_blocks]
    with nag_attention(model, NagSettings()):
        assert all(isinstance(b.attn2.processor, NagAttnProcessor) for b in model.transformer_blocks)
        with nag_attention(model, None):
            assert not any(isinstance(b.attn2.processor, NagAttnProcessor) for b in model.transformer_blocks)
        assert all(isinstance(b.attn2.processor, NagAttnProcessor) for b in model.transformer_blocks)
    assert [b.attn2.processor for b in model.transformer_blocks] == before


def test_install_keeps_the_attention_backend(model) -> None:
    model.transformer_blocks[0].attn2.processor._attention_backend = "_native_math"
    try:
        with nag_attention(model, NagSettings()):
            assert model.transformer_blocks[0].attn2.processor._attention_backend == "_native_math"
    finally:
        model.transformer_blocks[0].attn2.processor._attention_backend = None


def test_settings_and_text_validation() -> None:
    for bad in ({"scale": 0.5}, {"alpha": 1.5}, {"tau": 0.9}):
        with pytest.raises(ValueError):
            NagSettings(**bad)
    with pytest.raises(ValueError):
        nag_text(torch.zeros(1, 4, 16), torch.zeros(1, 5, 16))
