"""Persistent row reductions (models/reductions.py): which reductions become persistent, what the cache key
records, and (CUDA) that the compiled norm is one persistent kernel with the eager result."""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest
import sympy
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch._inductor.choices import InductorChoices
from torch._inductor.runtime.hints import ReductionHint
from torch._inductor.virtualized import V

from audioloop.models.reductions import ROW_LIMIT, TAG_VARIABLE, PersistentRows, use_persistent_rows


class Sizes:
    """The size queries the heuristics make, on plain integers."""

    @staticmethod
    def statically_known_leq(a: sympy.Expr, b: int) -> bool:
        return bool(a <= b)

    @staticmethod
    def optimization_hint(a: sympy.Expr) -> int:
        return int(a)


def features(numel: int, hint: ReductionHint) -> SimpleNamespace:
    """What the heuristics read of a kernel: its reduction size and hint, and its size (24,960 rows)."""
    return SimpleNamespace(
        reduction_numel=sympy.Integer(numel), numel=sympy.Integer(24960), get_reduction_hint=lambda: hint
    )


@pytest.fixture
def graph():
    with V.set_graph_handler(SimpleNamespace(sizevars=Sizes())):
        yield


@pytest.fixture
def restore(monkeypatch: pytest.MonkeyPatch):
    tag = torch.compiler.config.cache_key_tag
    monkeypatch.delenv(TAG_VARIABLE, raising=False)
    yield
    use_persistent_rows(0)
    torch.compiler.config.cache_key_tag = tag


@pytest.mark.usefixtures("graph")
@given(numel=st.integers(1025, 1 << 16), hint=st.sampled_from([ReductionHint.INNER, ReductionHint.DEFAULT]))
def test_rows_up_to_the_limit_are_persistent(numel: int, hint: ReductionHint) -> None:
    decide = PersistentRows().should_use_persistent_reduction
    assert decide(features(numel, hint), False) is (numel <= ROW_LIMIT)
    assert PersistentRows(numel).should_use_persistent_reduction(features(numel, hint), False)


@pytest.mark.usefixtures("graph")
@pytest.mark.parametrize("hint", [ReductionHint.OUTER, ReductionHint.OUTER_TINY])
@pytest.mark.parametrize("numel", [8, 64, 2048, 4096])
def test_other_reductions_keep_inductors_rule(hint: ReductionHint, numel: int) -> None:
    kernel = features(numel, hint)
    ours = PersistentRows().should_use_persistent_reduction(kernel, False)
    assert ours == InductorChoices.should_use_persistent_reduction(kernel, False)


@pytest.mark.usefixtures("graph")
def test_cooperative_reductions_keep_inductors_rule() -> None:
    kernel = features(2048, ReductionHint.INNER)
    ours = PersistentRows().should_use_persistent_reduction(kernel, True)
    assert ours == InductorChoices.should_use_persistent_reduction(kernel, True) is False


@pytest.mark.usefixtures("graph", "restore")
def test_install_sets_the_factory_the_handler_and_the_cache_tag() -> None:
    use_persistent_rows(2048)
    choices = torch._inductor.config.inductor_choices_class()
    assert isinstance(choices, PersistentRows) and choices.limit == 2048
    assert isinstance(V.choices, PersistentRows) and V.choices.limit == 2048
    assert torch.compiler.config.cache_key_tag == "audioloop-persistent-rows-2048"
    use_persistent_rows(0)
    assert torch._inductor.config.inductor_choices_class is None
    assert type(V.choices) is InductorChoices
    assert torch.compiler.config.cache_key_tag == ""


@pytest.mark.usefixtures("graph", "restore")
def test_the_users_cache_tag_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_COMPILE_CACHE_KEY_TAG", "mine")
    use_persistent_rows()
    assert torch.compiler.config.cache_key_tag == f"mine+audioloop-persistent-rows-{ROW_LIMIT}"
    use_persistent_rows(0)
    assert torch.compiler.config.cache_key_tag == "mine"


@pytest.mark.usefixtures("graph", "restore")
def test_the_tag_reaches_compile_workers_through_the_environment_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(TAG_VARIABLE, "mine")
    use_persistent_rows(2048)
    use_persistent_rows()
    assert os.environ[TAG_VARIABLE] == torch.compiler.config.cache_key_tag
    assert os.environ[TAG_VARIABLE] == f"mine+audioloop-persistent-rows-{ROW_LIMIT}"
    use_persistent_rows(0)
    assert os.environ[TAG_VARIABLE] == "mine"


def norm(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """An adaLN input: RMS norm, then modulation."""
    y = x.float()
    y = y * torch.rsqrt(y.square().mean(dim=-1, keepdim=True) + 1e-6)
    return (y * (1 + scale.float())).to(x.dtype)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="Triton kernels need CUDA")
@pytest.mark.usefixtures("restore")
def test_a_4096_wide_norm_compiles_to_one_persistent_kernel() -> None:
    from torch._inductor.utils import run_and_get_code

    x = torch.randn(300, 4096, device="cuda", dtype=torch.bfloat16)
    scale = torch.randn(4096, device="cuda", dtype=torch.bfloat16)
    codes = {}
    for rows in (0, ROW_LIMIT):
        torch._dynamo.reset()
        use_persistent_rows(rows)
        out, code = run_and_get_code(torch.compile(norm, fullgraph=True), x, scale)
        codes[rows] = "\n".join(code)
        torch.testing.assert_close(out, norm(x, scale), rtol=1e-2, atol=1e-2)
    assert "@triton_heuristics.persistent_reduction" in codes[ROW_LIMIT]
    assert "@triton_heuristics.persistent_reduction" not in codes[0]
