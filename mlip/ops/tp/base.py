"""The tensor-product protocol every implementation (CG, Gaunt, CP) follows.

Features use the layout of :mod:`mlip.ops.sh`: ``(..., C, (L+1)^2)`` with natural parity.
A tensor product is *channel-wise*: channel c of the output is built from channel c of
``x1`` and channel c of ``x2`` (or the single channel of ``x2`` when it has one, as for
edge spherical harmonics). How the weights act is the implementation's business (per CG
path, per degree, or shared over paths); ``weight_numel`` says how many it takes per
channel, so a radial network or an element table can produce them.

Constants, the same way for every implementation:

- derived constants (CG coefficients, grid matrices) come from :meth:`TensorProduct.build_constants`,
  the one declared step: a pure, cheap, deterministic function of the degrees returning
  float64 tensors, registered by :meth:`TensorProduct.register_constants` at the end of
  ``__init__`` as non-persistent exact buffers (:mod:`mlip.ops.buffers`): ``.to(device)``
  moves them like any buffer, ``.to(dtype)`` keeps their float64 precision, and
  ``torch.compile`` / export see ordinary tensors. Read them with :meth:`constant`.
- fitted constants (CP factors) are persistent exact buffers allocated in ``__init__`` and
  filled by :meth:`TensorProduct.prepare`, the explicit step that may take time or read a
  cache (``build_potential`` calls it for new models; loading a saved model restores them
  from its state dict instead). The default ``prepare`` does nothing.
"""

from __future__ import annotations

import torch
from torch import nn

from mlip.ops.buffers import exact_like, register_exact


class TensorProduct(nn.Module):
    """Base class: ``forward(x1, x2, weight) -> out``.

    Args:
        lmax_in1: maximum degree of ``x1``.
        lmax_in2: maximum degree of ``x2``.
        lmax_out: maximum degree of the output.

    Subclasses set ``weight_numel``, call :meth:`register_constants` at the end of
    ``__init__`` and implement ``forward``:

    - ``x1``: (..., C, (lmax_in1+1)^2)
    - ``x2``: (..., C or 1, (lmax_in2+1)^2)
    - ``weight``: (..., C, weight_numel) or None (all weights one)
    - returns (..., C, (lmax_out+1)^2)
    """

    weight_numel: int

    def __init__(self, lmax_in1: int, lmax_in2: int, lmax_out: int) -> None:
        super().__init__()
        self.lmax_in1 = int(lmax_in1)
        self.lmax_in2 = int(lmax_in2)
        self.lmax_out = int(lmax_out)

    def build_constants(self) -> dict[str, torch.Tensor]:
        """Derived constants as float64 (or complex128) tensors, by name. Default: none."""
        return {}

    def register_constants(self) -> None:
        """Register :meth:`build_constants` as non-persistent exact buffers."""
        for name, value in self.build_constants().items():
            register_exact(self, name, value)

    def constant(self, name: str, like: torch.Tensor) -> torch.Tensor:
        """Constant ``name`` in ``like``'s precision (complex ones in the matching complex)."""
        return exact_like(self, name, like)

    def prepare(self) -> None:
        """Fill fitted constants (see the module docstring). Default: nothing to do."""

    def extra_repr(self) -> str:
        return (
            f"lmax_in1={self.lmax_in1}, lmax_in2={self.lmax_in2}, lmax_out={self.lmax_out}, "
            f"weight_numel={self.weight_numel}"
        )

    def forward(  # pragma: no cover - abstract
        self, x1: torch.Tensor, x2: torch.Tensor, weight: torch.Tensor | None = None
    ) -> torch.Tensor:
        raise NotImplementedError
