"""The sampler's pure tensor math: hand examples, exact frozen tokens, and Euler on an exactly known flow."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from audioloop.sampling.sampler import (
    DISTILLED_SIGMAS,
    check_sigmas,
    denoise,
    euler_step,
    get_noise,
    initial_state,
    reimpose,
    to_x0,
    token_sigmas,
    token_timesteps,
)


def _exact_flow(target: torch.Tensor, calls: list[torch.Tensor] | None = None):
    """A velocity function whose flow ends exactly at `target`: v = (x − x0*)/σ."""

    def velocity(x: torch.Tensor, timesteps: torch.Tensor, sigma: float) -> torch.Tensor:
        if calls is not None:
            calls.append(x.clone())
        return (x - target) / sigma

    return velocity


def _problem(seed: int, tokens: int = 12, channels: int = 4) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    clean = torch.randn(1, tokens, channels, generator=gen)
    target = torch.randn(1, tokens, channels, generator=gen)
    noise = torch.randn(1, tokens, channels, generator=gen)
    mask = torch.ones(1, tokens)
    mask[:, :3] = 0
    mask[:, -2:] = 0
    return clean, target, noise, mask


def test_distilled_sigmas_are_the_ltx23_list() -> None:
    assert DISTILLED_SIGMAS == (1.0, 0.99375, 0.9875, 0.98125, 0.975, 0.909375, 0.725, 0.421875, 0.0)
    check_sigmas(DISTILLED_SIGMAS)


def test_noise_comes_from_a_cpu_generator_and_is_seeded() -> None:
    noise = get_noise((1, 5, 3), seed=7, dtype=torch.float64, device="cpu")
    expected = torch.randn((1, 5, 3), generator=torch.Generator().manual_seed(7)).to(torch.float64)
    assert noise.dtype == torch.float64
    assert torch.equal(noise, expected)
    assert not torch.equal(noise, get_noise((1, 5, 3), seed=8, dtype=torch.float64, device="cpu"))


def test_initial_state_hand_example() -> None:
    clean = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])
    noise = torch.tensor([[[10.0, 20.0], [30.0, 40.0]]])
    mask = torch.tensor([[1.0, 0.0]])
    state = initial_state(clean, noise, mask, 0.5)
    assert torch.equal(state, torch.tensor([[[5.5, 11.0], [3.0, 4.0]]]))
    assert torch.equal(initial_state(clean, noise, mask, 1.0), torch.tensor([[[10.0, 20.0], [3.0, 4.0]]]))


def test_timesteps_and_token_sigmas_hand_example() -> None:
    mask = torch.tensor([[1.0, 0.0, 1.0]])
    assert torch.equal(token_timesteps(mask, 0.5), torch.tensor([[500.0, 0.0, 500.0]]))
    assert torch.equal(token_timesteps(mask, 0.99375), torch.tensor([[993.75, 0.0, 993.75]]))
    assert torch.equal(token_sigmas(mask, 0.25), torch.tensor([[0.25, 0.0, 0.25]]))


def test_to_x0_and_euler_hand_example() -> None:
    x = torch.tensor([[[1.0, 2.0], [5.0, 6.0]]])
    v = torch.tensor([[[2.0, 4.0], [9.0, 9.0]]])
    x0 = to_x0(x, v, torch.tensor([[0.5, 0.0]]))
    assert torch.equal(x0, torch.tensor([[[0.0, 0.0], [5.0, 6.0]]]))
    step = euler_step(torch.tensor([3.0]), torch.tensor([1.0]), 0.5, 0.25)
    assert torch.equal(step, torch.tensor([2.0]))


def test_euler_to_zero_is_exactly_x0() -> None:
    x = torch.tensor([1.0, math.inf, math.nan])
    x0 = torch.tensor([0.3, -0.0, 2.5])
    out = euler_step(x, x0, 0.421875, 0.0)
    assert torch.equal(out.view(torch.int32), x0.view(torch.int32))


def test_reimpose_is_exact_even_on_non_finite_predictions() -> None:
    clean = torch.tensor([[[-0.0, 1.5], [2.0, 3.0]]])
    x = torch.tensor([[[math.nan, math.inf], [7.0, 8.0]]])
    out = reimpose(x, clean, torch.tensor([[0.0, 1.0]]))
    assert torch.equal(out[:, 0].view(torch.int32), clean[:, 0].view(torch.int32))
    assert torch.equal(out[:, 1], x[:, 1])


@pytest.mark.parametrize(
    "sigmas",
    [(1.0,), (1.0, 1.0, 0.0), (1.0, 0.5, 0.7, 0.0), (1.5, 0.0), (1.0, -0.1)],
)
def test_check_sigmas_refuses_unwalkable_schedules(sigmas: tuple[float, ...]) -> None:
    with pytest.raises(ValueError):
        check_sigmas(sigmas)


def test_denoise_reaches_the_exact_flow_target_on_the_distilled_list() -> None:
    clean, target, noise, mask = _problem(0)
    out = denoise(_exact_flow(target), clean, mask, noise, DISTILLED_SIGMAS)
    generated = mask[0] != 0
    torch.testing.assert_close(out[:, generated], target[:, generated], rtol=1e-5, atol=1e-5)
    assert torch.equal(out[:, ~generated], clean[:, ~generated])


@st.composite
def _decreasing_sigmas(draw: st.DrawFn) -> tuple[float, ...]:
    values = draw(st.lists(st.floats(0.01, 1.0), min_size=1, max_size=12, unique=True))
    return (*sorted(values, reverse=True), 0.0)


@settings(deadline=None, max_examples=60)
@given(sigmas=_decreasing_sigmas(), seed=st.integers(0, 2**31 - 1))
def test_denoise_reaches_the_exact_flow_target_on_any_decreasing_list(
    sigmas: tuple[float, ...], seed: int
) -> None:
    clean, target, noise, mask = _problem(seed)
    out = denoise(_exact_flow(target), clean, mask, noise, sigmas)
    generated = mask[0] != 0
    torch.testing.assert_close(out[:, generated], target[:, generated], rtol=1e-4, atol=1e-4)
    assert torch.equal(out[:, ~generated], clean[:, ~generated])


def test_frozen_tokens_stay_clean_bit_for_bit_at_every_step() -> None:
    clean, target, noise, mask = _problem(3)
    frozen = mask[0] == 0
    seen: list[torch.Tensor] = []
    x0s: list[torch.Tensor] = []

    def wild(x: torch.Tensor, timesteps: torch.Tensor, sigma: float) -> torch.Tensor:
        seen.append(x.clone())
        v = (x - target) / sigma
        v[:, frozen] = math.nan
        return v

    def hook(step: int, x0: torch.Tensor) -> torch.Tensor:
        x0s.append(x0.clone())
        return x0 + 1.0

    out = denoise(wild, clean, mask, noise, DISTILLED_SIGMAS, x0_hook=hook)
    assert len(seen) == len(DISTILLED_SIGMAS) - 1 == len(x0s)
    for x in [*seen, out]:
        assert torch.equal(x[:, frozen].view(torch.int32), clean[:, frozen].view(torch.int32))


def test_denoise_passes_token_timesteps_sigma_and_reports_progress() -> None:
    clean, target, noise, mask = _problem(4)
    timesteps: list[torch.Tensor] = []
    sigmas_seen: list[float] = []
    hook_steps: list[int] = []
    progress: list[tuple[int, int]] = []

    def velocity(x: torch.Tensor, t: torch.Tensor, sigma: float) -> torch.Tensor:
        timesteps.append(t)
        sigmas_seen.append(sigma)
        return (x - target) / sigma

    def hook(step: int, x0: torch.Tensor) -> torch.Tensor:
        hook_steps.append(step)
        return x0

    denoise(
        velocity, clean, mask, noise, DISTILLED_SIGMAS, x0_hook=hook, on_step=lambda *a: progress.append(a)
    )
    steps = len(DISTILLED_SIGMAS) - 1
    assert sigmas_seen == list(DISTILLED_SIGMAS[:-1])
    assert hook_steps == list(range(steps))
    assert progress == [(k + 1, steps) for k in range(steps)]
    for t, sigma in zip(timesteps, sigmas_seen, strict=True):
        assert torch.equal(t, mask * (1000.0 * sigma))


def test_denoise_is_plain_euler_along_the_straight_path() -> None:
    clean, target, noise, mask = _problem(5)
    seen: list[torch.Tensor] = []
    denoise(_exact_flow(target, seen), clean, mask, noise, DISTILLED_SIGMAS)
    generated = mask[0] != 0
    for x, sigma in zip(seen, DISTILLED_SIGMAS, strict=False):
        on_path = target + (noise - target) * sigma
        torch.testing.assert_close(x[:, generated], on_path[:, generated], rtol=1e-5, atol=1e-5)
