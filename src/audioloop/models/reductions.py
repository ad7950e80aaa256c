"""Row reductions in registers: inductor compiles each row reduction of up to `limit` elements as a
persistent one (the whole row held by one program) instead of a loop over the row.

Every block normalises [N, 4096] video rows (and [N, 2048] audio rows) again and again: adaLN norms,
q/k norms, each followed by modulation, RoPE or the FP8 row quantisation. Inductor keeps a row in
registers only up to 1,024 elements; longer rows get a loop per dependent reduction (the norm's mean
square, then the quantised row's absmax), each re-reading the row from memory. The limit is part of the
compile cache key, so kernels compiled under another limit are never reused.
"""

from __future__ import annotations

import os
from functools import partial

import torch
from torch._inductor.choices import InductorChoices
from torch._inductor.codegen.simd_kernel_features import SIMDKernelFeatures
from torch._inductor.runtime.hints import ReductionHint
from torch._inductor.virtualized import V

ROW_LIMIT = 4096  # the video stream's width; the FP8 FFs' [16384] rows have their own kernel (models/fp8.py)
# Contiguous rows, and rows inductor cannot classify: the gated attention output quantised before to_out, read
# through the attention kernel's [B, H, T, D] view, is one of those (a looped kernel at 0.76 TB/s otherwise).
ROW_HINTS = (ReductionHint.INNER, ReductionHint.DEFAULT)
TAG_VARIABLE = "TORCH_COMPILE_CACHE_KEY_TAG"  # torch.compiler.config.cache_key_tag's default, read at import


class PersistentRows(InductorChoices):
    """Inductor's heuristics, except that row reductions of up to `limit` elements are persistent."""

    TAG_PREFIX = "audioloop-persistent-rows-"

    def __init__(self, limit: int = ROW_LIMIT) -> None:
        """Persistent row reductions up to `limit` elements."""
        super().__init__()
        self.limit = limit

    def should_use_persistent_reduction(
        self, features: SIMDKernelFeatures, cooperative_reduction: bool
    ) -> bool:
        """True for a row reduction (not a column one) of at most `limit` elements; inductor's own rule
        otherwise."""
        if (
            torch._inductor.config.triton.persistent_reductions
            and not cooperative_reduction
            and features.get_reduction_hint() in ROW_HINTS
            and V.graph.sizevars.statically_known_leq(features.reduction_numel, self.limit)
        ):
            return True
        return InductorChoices.should_use_persistent_reduction(features, cooperative_reduction)

    def uuid(self) -> str:
        """What the compile cache key records of these heuristics."""
        return f"{self.TAG_PREFIX}{self.limit}"


def use_persistent_rows(limit: int = ROW_LIMIT) -> None:
    """Compile from now on with `PersistentRows(limit)` (0: inductor's own heuristics), on every thread,
    and add it to the compile cache's key tag (after the user's TORCH_COMPILE_CACHE_KEY_TAG, if any).

    The tag goes into the environment too: inductor's compile workers are subprocesses that read it when
    they import torch, and they key each kernel's saved best config. Without it they saved under a key
    the next process never looked up, and every warm process benchmarked its kernels' configs again."""
    choices = PersistentRows(limit) if limit else InductorChoices()
    torch._inductor.config.inductor_choices_class = partial(PersistentRows, limit) if limit else None
    V.set_choices_handler(choices)  # this thread may have made its handler already
    tags = [*users_tags(), choices.uuid() if limit else ""]
    tag = "+".join(tag for tag in tags if tag)
    torch.compiler.config.cache_key_tag = tag
    os.environ[TAG_VARIABLE] = tag


def users_tags() -> list[str]:
    """The parts of TORCH_COMPILE_CACHE_KEY_TAG that an earlier `use_persistent_rows` did not add."""
    tags = os.environ.get(TAG_VARIABLE, "").split("+")
    return [tag for tag in tags if not tag.startswith(PersistentRows.TAG_PREFIX)]
