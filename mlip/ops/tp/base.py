"""The tensor-product protocol every implementation (CG, Gaunt, CP) follows.

Features use the layout of :mod:`mlip.ops.sh`: ``(..., C, (L+1)^2)`` with natural parity.
A tensor product is *channel-wise*: channel c of the output is built from channel c of
``x1`` and channel c of ``x2`` (or the single channel of ``x2`` when it has one, as for
edge spherical harmonics). How the weights act is the implementation's business (per CG
path, per degree, or shared over paths); ``weight_numel`` says how many it takes per
channel, so a radial network or an element table can produce them.
"""

from __future__ import annotations

import torch
from torch import nn


class TensorProduct(nn.Module):
    """Base class: ``forward(x1, x2, weight) -> out``.

    Args:
        lmax_in1: maximum degree of ``x1``.
        lmax_in2: maximum degree of ``x2``.
        lmax_out: maximum degree of the output.

    Subclasses set ``weight_numel`` in ``__init__`` and implement ``forward``:

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

    def extra_repr(self) -> str:
        return (
            f"lmax_in1={self.lmax_in1}, lmax_in2={self.lmax_in2}, lmax_out={self.lmax_out}, "
            f"weight_numel={self.weight_numel}"
        )

    def forward(  # pragma: no cover - abstract
        self, x1: torch.Tensor, x2: torch.Tensor, weight: torch.Tensor | None = None
    ) -> torch.Tensor:
        raise NotImplementedError
