"""Host round trips inside a function, observed on any device (the CPU included).

A CUDA graph can only capture work that never waits for the host: no value read back
(``.item()``, ``float(t)``, ``bool(t)``, data-dependent shapes such as ``nonzero`` or a
boolean mask), and no host data turned into a tensor (``torch.tensor([...])`` inside the
function). On the CPU nothing of that is slow, so it goes unnoticed until a GPU capture
fails. :class:`HostSyncRecorder` lists the ATen operations of that kind as they are
dispatched, so a CPU test can show that a force call is capturable.

>>> import torch
>>> with HostSyncRecorder() as rec:
...     x = torch.arange(4.0)
...     _ = float(x.sum()), x[x > 1]
>>> sorted(set(rec.operations))
['aten._local_scalar_dense.default', 'aten.index.Tensor']
"""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["HostSyncRecorder"]

# Operations that read device values on the host (or produce shapes that depend on them),
# or copy host data into a new tensor.
_ALWAYS = frozenset({
    "_local_scalar_dense", "nonzero", "nonzero_static_", "masked_select", "is_nonzero", "equal",
    "allclose", "unique_dim", "_unique", "_unique2", "unique_consecutive", "bincount",
    "histc", "lift_fresh", "lift_fresh_copy", "masked_scatter_",
})


def _is_sync(func: torch._ops.OpOverload, args: tuple, kwargs: dict) -> bool:
    name = func.overloadpacket.__name__
    if name in _ALWAYS:
        return True
    if name == "repeat_interleave":  # the output size comes from the repeats' values
        return kwargs.get("output_size") is None and isinstance(args[0], torch.Tensor) \
            and not args[0].is_floating_point()
    if name in ("index", "index_put", "index_put_"):  # a boolean mask index
        indices = args[1] if len(args) > 1 else kwargs.get("indices", ())
        return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in indices if i is not None)
    return False


class HostSyncRecorder(TorchDispatchMode):
    """Records, in ``operations``, every dispatched ATen operation that would make a CUDA
    stream wait for the host or copy host data into a tensor (see the module docstring).
    Operations run as usual. Use as a context manager around the code under test."""

    def __init__(self) -> None:
        super().__init__()
        self.operations: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if _is_sync(func, args, kwargs):
            self.operations.append(str(func))
        return func(*args, **kwargs)
