"""CUDA graphs of a force call: one captured graph replayed per MD step.

A small system on a GPU spends most of a force call launching kernels (hundreds per call,
a few microseconds each). A CUDA graph records the launches once and replays them as one.
It replays on fixed memory, so it needs inputs whose shapes do not change:
:class:`mlip.graph.skin.SkinNeighborList` with ``fixed_shapes`` supplies them (the
``cutoff + skin`` list, padded; shapes change only when the list outgrows its capacity,
which means one new capture).

:class:`GraphedForceField` wraps any force function ``fn(data, stress) -> dict`` (the
eager model or the compiled package). At the first call of a shape it warms ``fn`` up on a
side stream (which also builds a compiled package), captures one call into a graph with
static copies of the inputs, and from then on copies the new inputs into those (only the
tensors that changed: in MD the positions) and replays. A capture that fails (an operation
that waits for the host, no CUDA) warns once and runs ``fn`` directly from then on.
Everything that runs inside the graph must be free of host round trips; the CPU tests
check that with :class:`mlip.testing.sync.HostSyncRecorder`.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch

__all__ = ["GraphedForceField"]

ForceFunction = Callable[[dict[str, torch.Tensor], bool], dict[str, torch.Tensor]]


def _signature(data: dict[str, torch.Tensor]) -> tuple:
    return tuple(sorted((k, tuple(v.shape), v.dtype, v.device) for k, v in data.items()))


class _Capture:
    """One captured call of ``fn`` on static copies of ``data``."""

    def __init__(self, fn: ForceFunction, data: dict[str, torch.Tensor], stress: bool,
                 warmup: int) -> None:
        device = next(iter(data.values())).device
        self.signature = _signature(data)
        self.inputs = {k: v.clone() for k, v in data.items()}
        self._sources = dict(data)  # the tensors last copied in (skip unchanged ones)
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):  # lazy initialisation, kernel loading, compilation
            for _ in range(warmup):
                fn(self.inputs, stress)
        torch.cuda.current_stream(device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.outputs = fn(self.inputs, stress)

    def __call__(self, data: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        for k, buffer in self.inputs.items():
            source = data[k]
            if source is not self._sources[k]:
                buffer.copy_(source)
                self._sources[k] = source
        self.graph.replay()
        # copies: the next replay overwrites the graph's outputs
        return {k: v.detach().clone() for k, v in self.outputs.items()}


class GraphedForceField:
    """``fn(data, stress)`` replayed from CUDA graphs, one per input signature (shapes,
    dtypes, device of every input) and stress flag; the previous graph of a stress flag is
    released when the shapes change.

    Args:
        fn: the force function (it must run on CUDA tensors without host round trips).
        warmup: calls on a side stream before each capture.

    Attributes:
        captures: graphs captured so far.
        failed: the reason capturing failed (then ``fn`` runs directly), else None.
    """

    def __init__(self, fn: ForceFunction, warmup: int = 2) -> None:
        self.fn = fn
        self.warmup = int(warmup)
        self.captures = 0
        self.failed: str | None = None
        self._graphs: dict[bool, _Capture] = {}

    def __call__(self, data: dict[str, torch.Tensor], stress: bool) -> dict[str, torch.Tensor]:
        if self.failed is not None:
            return self.fn(data, stress)
        capture = self._graphs.get(stress)
        if capture is None or capture.signature != _signature(data):
            self._graphs.pop(stress, None)  # frees the old graph and its memory pool
            try:
                capture = _Capture(self.fn, data, stress, self.warmup)
            except Exception as err:  # noqa: BLE001 - any failure means: run without graphs
                first = str(err).strip().splitlines()[0] if str(err).strip() else ""
                self.failed = f"{type(err).__name__}: {first[:200]}"
                warnings.warn(f"mlip: capturing a CUDA graph failed, running without ({self.failed})",
                              RuntimeWarning, stacklevel=2)
                return self.fn(data, stress)
            self._graphs[stress] = capture
            self.captures += 1
        return capture(data)
