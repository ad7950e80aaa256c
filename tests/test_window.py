"""One window end to end on the tiny LTX-2.3 transformer: frozen audio, frozen video, guides, determinism."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
import torch

from audioloop.sampling.layout import WindowLayout, first_window, next_window
from audioloop.sampling.nag import NagSettings
from audioloop.sampling.sampler import DISTILLED_SIGMAS
from audioloop.sampling.window import SamplerSettings, sample_window

STEPS = len(DISTILLED_SIGMAS) - 1


@dataclass
class Inputs:
    layout: WindowLayout
    audio: torch.Tensor
    text_video: torch.Tensor
    text_audio: torch.Tensor
    negative_video: torch.Tensor | None
    negative_audio: torch.Tensor | None
    extra: dict[str, Any] = field(default_factory=dict)


def _inputs(kind: str, seed: int = 0) -> Inputs:
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen)

    image = rand(1, 8, 1, 2, 3)
    if kind == "first":
        layout = first_window(image, lat_frames=4, fps=25.0)
    else:
        layout = next_window(rand(1, 8, 2, 2, 3), image, lat_frames=5, fps=25.0)
    return Inputs(layout, rand(1, 17, 16), rand(1, 6, 16), rand(1, 6, 8), rand(1, 6, 16), rand(1, 6, 8))


def _sample(model, inputs: Inputs, seed: int = 0, settings: SamplerSettings | None = None, **kwargs):
    return sample_window(
        model,
        inputs.layout,
        inputs.audio,
        inputs.text_video,
        inputs.text_audio,
        inputs.negative_video,
        inputs.negative_audio,
        seed=seed,
        settings=settings or SamplerSettings(),
        **kwargs,
    )


def _spy(model) -> tuple[list[dict[str, Any]], Any]:
    calls: list[dict[str, Any]] = []

    def record(_module, _args, kwargs):
        calls.append({k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in kwargs.items()})

    return calls, model.register_forward_pre_hook(record, with_kwargs=True)


@pytest.mark.parametrize("kind", ["first", "next"])
def test_audio_is_frozen_at_timestep_zero_with_sigma_following_the_schedule(model, kind: str) -> None:
    inputs = _inputs(kind)
    audio_before = inputs.audio.clone()
    calls, handle = _spy(model)
    try:
        _sample(model, inputs)
    finally:
        handle.remove()
    assert torch.equal(inputs.audio, audio_before)
    assert len(calls) == STEPS
    for call, sigma in zip(calls, DISTILLED_SIGMAS, strict=False):
        assert torch.equal(call["audio_hidden_states"], audio_before)
        assert call["audio_timestep"].shape == (1,)
        assert torch.equal(call["audio_timestep"], torch.zeros(1))
        assert torch.equal(call["audio_sigma"], torch.tensor([1000.0 * sigma]))
        assert torch.equal(call["sigma"], torch.tensor([1000.0 * sigma]))
        assert call["use_cross_timestep"] is True
        assert call.get("encoder_attention_mask") is None
        assert call["audio_num_frames"] == 17


@pytest.mark.parametrize("kind", ["first", "next"])
def test_context_and_guide_tokens_stay_clean_and_the_guide_is_cropped(model, kind: str) -> None:
    inputs = _inputs(kind, seed=1)
    layout = inputs.layout
    frozen = layout.mask[0] == 0
    calls, handle = _spy(model)
    try:
        reference = torch.randn(1, 8, 3, 2, 3, generator=torch.Generator().manual_seed(10))
        out = _sample(model, inputs, settings=SamplerSettings(per_step_adain=(0.3, 0.2)), reference=reference)
    finally:
        handle.remove()
    for call, sigma in zip(calls, DISTILLED_SIGMAS, strict=False):
        assert torch.equal(call["hidden_states"][:, frozen], layout.clean[:, frozen])
        assert torch.equal(call["timestep"], layout.mask * (1000.0 * sigma))
        assert torch.equal(call["video_coords"], layout.video_coords)
    assert out.shape == (1, 8, layout.frames, layout.height, layout.width)
    assert torch.equal(out[:, :, : layout.context_frames], inputs_video_prefix(layout))
    assert torch.isfinite(out).all()


def inputs_video_prefix(layout: WindowLayout) -> torch.Tensor:
    per_frame = layout.height * layout.width
    prefix = layout.clean[:, : layout.context_frames * per_frame]
    return prefix.reshape(1, layout.context_frames, layout.height, layout.width, -1).permute(0, 4, 1, 2, 3)


def test_same_seed_same_latents_other_seed_other_latents(model) -> None:
    inputs = _inputs("next", seed=2)
    a, b = _sample(model, inputs, seed=11), _sample(model, inputs, seed=11)
    assert torch.equal(a, b)
    assert not torch.equal(a, _sample(model, inputs, seed=12))


def test_output_is_an_ordinary_tensor(model) -> None:
    out = _sample(model, _inputs("first", seed=3))
    assert not out.is_inference()
    out += 1.0


def test_nag_is_used_only_with_a_negative_and_processors_come_back(model) -> None:
    inputs = _inputs("next", seed=4)
    processors = [(b.attn2.processor, b.audio_attn2.processor) for b in model.transformer_blocks]
    calls, handle = _spy(model)
    try:
        with_nag = _sample(model, inputs)
        plain_inputs = Inputs(**{**inputs.__dict__, "negative_video": None, "negative_audio": None})
        without = _sample(model, plain_inputs)
        off = _sample(model, inputs, settings=SamplerSettings(nag=None))
        audio_nag = _sample(model, inputs, settings=SamplerSettings(nag=NagSettings(audio=True)))
    finally:
        handle.remove()
    text_tokens = [
        (c["encoder_hidden_states"].shape[1], c["audio_encoder_hidden_states"].shape[1]) for c in calls
    ]
    assert text_tokens == [(12, 6)] * STEPS + [(6, 6)] * 2 * STEPS + [(12, 12)] * STEPS
    assert torch.equal(without, off)
    assert (with_nag - without).abs().max() > 1e-3
    assert (audio_nag - with_nag).abs().max() > 1e-4
    assert [(b.attn2.processor, b.audio_attn2.processor) for b in model.transformer_blocks] == processors


def test_audio_nag_without_an_audio_negative_falls_back_to_video_nag(model) -> None:
    inputs = _inputs("next", seed=5)
    video_only = _sample(model, inputs)
    no_audio_negative = Inputs(**{**inputs.__dict__, "negative_audio": None})
    out = _sample(model, no_audio_negative, settings=SamplerSettings(nag=NagSettings(audio=True)))
    assert torch.equal(out, video_only)


def test_progress_is_reported_every_step(model) -> None:
    progress: list[tuple[int, int]] = []
    _sample(model, _inputs("first", seed=6), on_step=lambda done, total: progress.append((done, total)))
    assert progress == [(k + 1, STEPS) for k in range(STEPS)]


def test_per_step_adain_changes_the_window_and_needs_a_reference(model) -> None:
    inputs = _inputs("next", seed=7)
    reference = torch.randn(1, 8, 5, 2, 3, generator=torch.Generator().manual_seed(8)) * 2 + 1
    adain_settings = SamplerSettings(per_step_adain=(0.3, 0.2, 0.1, 0.05, 0, 0, 0, 0))
    plain = _sample(model, inputs)
    assert torch.equal(_sample(model, inputs, settings=adain_settings), plain)
    moved = _sample(model, inputs, settings=adain_settings, reference=reference)
    assert (moved - plain).abs().max() > 1e-3
    assert torch.equal(moved[:, :, :2], plain[:, :, :2])


def test_settings_and_inputs_are_validated(model) -> None:
    with pytest.raises(ValueError):
        SamplerSettings(sigmas=(1.0, 0.5, 0.5, 0.0))
    inputs = _inputs("first", seed=9)
    with pytest.raises(ValueError):
        _sample(model, Inputs(**{**inputs.__dict__, "audio": inputs.audio[0]}))
