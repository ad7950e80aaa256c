"""Fixtures shared by the test modules: the tiny transformer, and the render and upscale tests' own."""

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from audioloop.models.tiny import tiny_transformer


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    """The tiny LTX-2.3 transformer, built once per test module (module scope), as each had its own."""
    return tiny_transformer()


@pytest.fixture(scope="module")
def text_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A text-embedding cache of the module's own (AUDIOLOOP_CACHE_DIR), so no test reads another's."""
    with pytest.MonkeyPatch.context() as patch:
        cache = tmp_path_factory.mktemp("cache")
        patch.setenv("AUDIOLOOP_CACHE_DIR", str(cache))
        yield cache


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
