"""Inputs of the tiny LTX-2.3 transformer for one window of each layout, and one window sampled from them:
shared by the tests of the transformer's speed and memory paths (models/accel.py, models/modulation.py)."""

from __future__ import annotations

import torch
from torch import nn

from audioloop.sampling.layout import first_window, next_window
from audioloop.sampling.window import SamplerSettings, sample_window


def window_inputs(seed: int = 0, device: str = "cpu", dtype: torch.dtype = torch.float32) -> list[dict]:
    """Window-0 and window-i inputs of the tiny model (different token counts: the two compiled layouts)."""
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen).to(device)

    image = rand(1, 8, 1, 2, 3)
    layouts = [first_window(image, 4, 25.0), next_window(rand(1, 8, 2, 2, 3), image, 4, 25.0)]
    shared = {
        name: rand(*shape).to(dtype)
        for name, shape in (
            ("audio", (1, 17, 16)),
            ("tv", (1, 6, 16)),
            ("ta", (1, 6, 8)),
            ("nv", (1, 6, 16)),
            ("na", (1, 6, 8)),
        )
    }
    return [{"layout": layout, **shared} for layout in layouts]


def sample(model: nn.Module, x: dict, sigmas: tuple[float, ...] = (1.0, 0.5, 0.0)) -> torch.Tensor:
    return sample_window(
        model,
        x["layout"],
        x["audio"],
        x["tv"],
        x["ta"],
        x["nv"],
        x["na"],
        seed=0,
        settings=SamplerSettings(sigmas=sigmas),
    )
