"""The sampler as pure tensor math: noise, frozen-token masks, per-token timesteps and plain Euler.

Tokens are `[B, N, C]`; the mask is `[B, N]` with 1 = generate and 0 = frozen (binary). Frozen tokens are
written with `torch.where`, the exact form of `x·m + clean·(1−m)` for a binary m, so they equal `clean`
bit for bit after every step whatever the model returns. Nothing here reads a tensor value back to the
host.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from itertools import pairwise

import torch
from torch import Tensor

DISTILLED_SIGMAS: tuple[float, ...] = (1.0, 0.99375, 0.9875, 0.98125, 0.975, 0.909375, 0.725, 0.421875, 0.0)

VelocityFn = Callable[[Tensor, Tensor, float], Tensor]
X0Hook = Callable[[int, Tensor], Tensor]


def check_sigmas(sigmas: Sequence[float]) -> None:
    """Refuse a schedule Euler cannot walk: at least one step, strictly decreasing within [0, 1]."""
    if len(sigmas) < 2:
        raise ValueError(f"a sigma schedule needs at least 2 values, got {len(sigmas)}")
    if not all(0.0 <= s <= 1.0 for s in sigmas):
        raise ValueError(f"sigmas must lie in [0, 1], got {tuple(sigmas)}")
    if not all(a > b for a, b in pairwise(sigmas)):
        raise ValueError(f"sigmas must be strictly decreasing, got {tuple(sigmas)}")


def get_noise(shape: Sequence[int], seed: int, dtype: torch.dtype, device: torch.device | str) -> Tensor:
    """Gaussian noise drawn on the CPU from `seed`, then moved: the same noise on every device."""
    generator = torch.Generator(device="cpu").manual_seed(seed)
    noise = torch.randn(tuple(shape), generator=generator, dtype=torch.float32)
    return noise.to(device=device, dtype=dtype)


def reimpose(x: Tensor, clean: Tensor, mask: Tensor) -> Tensor:
    """Frozen tokens ← clean exactly, generated ones keep x: re-imposes x0 and keeps the state model-ready."""
    return torch.where(mask.unsqueeze(-1) != 0, x, clean)


def initial_state(clean: Tensor, noise: Tensor, mask: Tensor, sigma0: float) -> Tensor:
    """The start state: σ0·noise + (1−σ0)·clean on generated tokens, clean on frozen ones."""
    return reimpose(sigma0 * noise + (1.0 - sigma0) * clean, clean, mask)


def token_sigmas(mask: Tensor, sigma: float) -> Tensor:
    """Per-token noise level σ·m: frozen tokens are clean (σ = 0)."""
    return mask * sigma


def token_timesteps(mask: Tensor, sigma: float) -> Tensor:
    """Per-token model timestep 1000·σ·m, the scale the LTX-2 transformer embeds."""
    return mask * (1000.0 * sigma)


def to_x0(x: Tensor, velocity: Tensor, sigma_tok: Tensor) -> Tensor:
    """The clean prediction of a flow-matching velocity, per token: x0 = x − v·σ_tok."""
    return x - velocity * sigma_tok.unsqueeze(-1)


def euler_step(x: Tensor, x0: Tensor, sigma: float, sigma_next: float) -> Tensor:
    """One plain (non-ancestral) Euler step σ → σ_next: x0 + (x − x0)·σ_next/σ, exactly x0 at σ_next = 0."""
    if sigma_next == 0.0:
        return x0
    return x0 + (x - x0) * (sigma_next / sigma)


def denoise(
    velocity_fn: VelocityFn,
    clean: Tensor,
    mask: Tensor,
    noise: Tensor,
    sigmas: Sequence[float],
    x0_hook: X0Hook | None = None,
    on_step: Callable[[int, int], None] | None = None,
) -> Tensor:
    """Walk `sigmas` with one velocity call per step; frozen tokens stay exactly `clean` throughout.

    `velocity_fn(x, timesteps, sigma)` gets the state (already exact on frozen tokens), the per-token
    timesteps `[B, N]` and σ_k as a float. `x0_hook(step, x0)` may edit the x0 prediction before
    re-imposition (per-step AdaIN); `on_step(done, total)` reports progress after each step.
    """
    check_sigmas(sigmas)
    steps = len(sigmas) - 1
    x = initial_state(clean, noise, mask, sigmas[0])
    for step, (sigma, sigma_next) in enumerate(pairwise(sigmas)):
        velocity = velocity_fn(x, token_timesteps(mask, sigma), sigma)
        x0 = to_x0(x, velocity, token_sigmas(mask, sigma))
        if x0_hook is not None:
            x0 = x0_hook(step, x0)
        x0 = reimpose(x0, clean, mask)
        x = reimpose(euler_step(x, x0, sigma, sigma_next), clean, mask)
        if on_step is not None:
            on_step(step + 1, steps)
    return x
