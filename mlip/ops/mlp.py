"""Small invariant networks (radial weights, readouts)."""

from __future__ import annotations

import math

import torch
from torch import nn


class ScaledSiLU(nn.Module):
    """SiLU rescaled to keep unit second moment for unit-normal input."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.silu(x) * 1.679177


class MLP(nn.Module):
    """Bias-free MLP with 1/sqrt(fan_in) scaled weights and scaled SiLU between layers.

    Args:
        sizes: layer widths, e.g. (8, 64, 64, 96).

    Shapes: (..., sizes[0]) -> (..., sizes[-1]).
    """

    def __init__(self, sizes: tuple[int, ...] | list[int]) -> None:
        super().__init__()
        self.weights = nn.ParameterList(
            [nn.Parameter(torch.randn(a, b)) for a, b in zip(sizes[:-1], sizes[1:], strict=True)]
        )
        self.act = ScaledSiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for k, w in enumerate(self.weights):
            if k:
                x = self.act(x)
            x = x @ w / math.sqrt(w.shape[0])
        return x
