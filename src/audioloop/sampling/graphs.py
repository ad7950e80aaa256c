"""A window's transformer calls replayed as one CUDA graph.

The sampler calls the transformer once per step with tensors of the same shapes. `ReplayedCall` runs the
first call as it is (it compiles and warms every kernel up), records the second as a CUDA graph over copies
of its inputs, and replays that graph from then on. A replay is one launch, so the host queues the rest of
a window in milliseconds instead of being held at the GPU's pace by ~3,000 kernel launches a step, and the
GPU has no gaps between kernels. Recording is per window: the graph reads the window's own tensors (text,
audio, RoPE tables), which live as long as the window's sampling.

The graph is recorded on a side stream in thread-local capture mode, so a decoder running on another
thread meanwhile is not disturbed. If recording fails, the calls run as they are from then on.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
from torch import Tensor


class ReplayedCall:
    """`fn(*inputs)` on CUDA tensors, recorded on the second call and replayed after. The result of a replay
    is the graph's own output tensor, overwritten by the next call: use it before calling again."""

    def __init__(self, fn: Callable[..., Tensor]) -> None:
        """Wrap `fn`, whose every call takes tensors of the same shapes, strides and dtypes."""
        self.fn = fn
        self.calls = 0
        self.graph: torch.cuda.CUDAGraph | None = None
        self.inputs: tuple[Tensor, ...] = ()
        self.output: Tensor | None = None
        self.failed = False

    def __call__(self, *inputs: Tensor) -> Tensor:
        """The first call (and every call once recording failed) as it is; later ones replayed."""
        self.calls += 1
        if self.calls == 1 or self.failed:
            return self.fn(*inputs)
        if self.graph is None:
            self._record(inputs)
            if self.failed:
                return self.fn(*inputs)
        else:
            for static, value in zip(self.inputs, inputs, strict=True):
                static.copy_(value)
        self.graph.replay()
        return self.output

    def _record(self, inputs: tuple[Tensor, ...]) -> None:
        """Record fn over copies of `inputs` on a side stream that first waits for the caller's."""
        self.inputs = tuple(value.clone() for value in inputs)
        device = self.inputs[0].device
        caller = torch.cuda.current_stream(device)
        side = torch.cuda.Stream(device)
        side.wait_stream(caller)
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.stream(side):
                graph.capture_begin(capture_error_mode="thread_local")
                try:
                    output = self.fn(*self.inputs)
                finally:
                    graph.capture_end()
        except RuntimeError as exc:
            self.failed = True
            warnings.warn(f"CUDA graph recording failed, sampling without it: {exc}", stacklevel=3)
            return
        caller.wait_stream(side)
        self.graph, self.output = graph, output


def replayed(fn: Callable[..., Tensor], enabled: bool) -> Callable[..., Tensor]:
    """`fn` replayed as a CUDA graph where `enabled`, else `fn` itself."""
    return ReplayedCall(fn) if enabled else fn
