"""Fixtures shared by the render and upscale tests."""

from typing import Any

import pytest
import torch


@pytest.fixture
def sampled(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The seed of every window (or upscale tile) sampled; both loops sample through render's sample_window,
    and window/tile i samples with seed 0 + i."""
    import audioloop.render

    calls: list[int] = []
    real = audioloop.render.sample_window

    def counting(*args: Any, **kwargs: Any) -> torch.Tensor:
        calls.append(kwargs["seed"])
        return real(*args, **kwargs)

    monkeypatch.setattr(audioloop.render, "sample_window", counting)
    return calls
