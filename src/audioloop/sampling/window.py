"""Sampling one window end to end: frozen song audio, frozen context and guide frames, NAG, per-step AdaIN.

One transformer call per step (CFG 1). The audio tokens go in unchanged at every step with audio timestep
0, while `sigma = audio_sigma = 1000·σ_k` drive the 2.3 prompt modulation and, with
`use_cross_timestep=True`, the cross-modal modulation — as Lightricks' reference audio-to-video pipeline
does. The Euler state stays in the layout's dtype on the layout's device; model inputs are cast to the
transformer's compute dtype (that of its `scale_shift_table`, which layerwise FP8 casting and weight-only
quantisation leave alone).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch
from diffusers import LTX2VideoTransformer3DModel
from torch import Tensor

from audioloop.sampling.adain import per_step_adain
from audioloop.sampling.layout import WindowLayout, crop_guides
from audioloop.sampling.nag import NagSettings, nag_attention, nag_text
from audioloop.sampling.sampler import DISTILLED_SIGMAS, VelocityFn, check_sigmas, denoise, get_noise


@dataclass(frozen=True)
class SamplerSettings:
    """How a window is sampled: the sigma schedule, NAG (None = off), per-step AdaIN factors by step."""

    sigmas: tuple[float, ...] = DISTILLED_SIGMAS
    nag: NagSettings | None = field(default_factory=NagSettings)
    per_step_adain: tuple[float, ...] = ()
    per_step_adain_per_frame: bool = False

    def __post_init__(self) -> None:
        """Refuse a schedule the sampler cannot walk."""
        check_sigmas(self.sigmas)


def _check_tokens(name: str, tokens: Tensor) -> None:
    """Refuse anything but batch-1 tokens [1, N, C]."""
    if tokens.ndim != 3 or tokens.shape[0] != 1:
        raise ValueError(f"{name} must be [1, N, C] tokens, got {tuple(tokens.shape)}")


def _effective_nag(
    settings: NagSettings | None, negative_video: Tensor | None, negative_audio: Tensor | None
) -> NagSettings | None:
    """NAG only where a negative exists: none without a video negative, no audio NAG without an audio one."""
    if settings is None or negative_video is None:
        return None
    if settings.audio and negative_audio is None:
        return replace(settings, audio=False)
    return settings


def _velocity_fn(
    transformer: LTX2VideoTransformer3DModel,
    layout: WindowLayout,
    audio: Tensor,
    text_video: Tensor,
    text_audio: Tensor,
) -> VelocityFn:
    """The video velocity of one transformer call with the audio frozen at timestep 0."""
    dtype = audio.dtype
    coords = layout.video_coords.to(audio.device)
    audio_timestep = torch.zeros(1, device=audio.device, dtype=torch.float32)

    def velocity(x: Tensor, timesteps: Tensor, sigma: float) -> Tensor:
        """Video velocity at state x, per-token timesteps and schedule sigma."""
        scaled_sigma = torch.full((1,), 1000.0 * sigma, device=audio.device, dtype=torch.float32)
        video_velocity, _ = transformer(
            hidden_states=x.to(dtype),
            audio_hidden_states=audio,
            encoder_hidden_states=text_video,
            audio_encoder_hidden_states=text_audio,
            timestep=timesteps.to(torch.float32),
            audio_timestep=audio_timestep,
            sigma=scaled_sigma,
            audio_sigma=scaled_sigma,
            video_coords=coords,
            audio_num_frames=audio.shape[1],
            use_cross_timestep=True,
            return_dict=False,
        )
        return video_velocity.to(x.dtype)

    return velocity


def sample_window(
    transformer: LTX2VideoTransformer3DModel,
    layout: WindowLayout,
    audio_tokens: Tensor,
    text_video: Tensor,
    text_audio: Tensor,
    negative_video: Tensor | None,
    negative_audio: Tensor | None,
    seed: int,
    settings: SamplerSettings,
    reference: Tensor | None = None,
    on_step: Callable[[int, int], None] | None = None,
) -> Tensor:
    """Sample one window's video latents [1, C, F, h, w] (normalised, guides cropped) against frozen audio.

    `audio_tokens` [1, N_a, C_a] are the window's normalised song latents, starting at the window start;
    `text_*` / `negative_*` are connector outputs [1, T, D] (no negative: no NAG for that modality);
    `reference` [1, C, F_r, h, w] feeds per-step AdaIN. Same inputs and seed give the same latents, and the
    transformer's attention processors are as before on return.
    """
    _check_tokens("audio_tokens", audio_tokens)
    for name, text in (("text_video", text_video), ("text_audio", text_audio)):
        _check_tokens(name, text)
    device, dtype = layout.clean.device, transformer.scale_shift_table.dtype
    nag = _effective_nag(settings.nag, negative_video, negative_audio)
    if nag is not None:
        text_video = nag_text(text_video, negative_video)
        if nag.audio:
            text_audio = nag_text(text_audio, negative_audio)
    velocity = _velocity_fn(
        transformer,
        layout,
        audio_tokens.to(device=device, dtype=dtype),
        text_video.to(device=device, dtype=dtype),
        text_audio.to(device=device, dtype=dtype),
    )
    hook = per_step_adain(layout, reference, settings.per_step_adain, settings.per_step_adain_per_frame)
    noise = get_noise(layout.clean.shape, seed, layout.clean.dtype, device)
    with nag_attention(transformer, nag), torch.inference_mode():
        tokens = denoise(velocity, layout.clean, layout.mask, noise, settings.sigmas, hook, on_step)
    return crop_guides(tokens, layout).clone(memory_format=torch.contiguous_format)
