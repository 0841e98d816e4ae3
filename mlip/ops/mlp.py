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

    def forward(self, x: torch.Tensor, output_shape: tuple[int, int] | None = None) -> torch.Tensor:
        """Args:
            x: (..., sizes[0]).
            output_shape: (a, b) with a * b = sizes[-1]: return the output read as (a, b)
                and transposed, (..., b * a) with b-major order, produced directly by
                permuting the last layer's columns (no copy of the output).
        """
        last = len(self.weights) - 1
        for k, w in enumerate(self.weights):
            if k:
                x = self.act(x)
            w = w * (1.0 / math.sqrt(w.shape[0]))  # the scale on the small weight, not the output
            if k == last and output_shape is not None:
                w = w.unflatten(1, output_shape).transpose(1, 2).flatten(1)
            x = x @ w
        return x

    def forward_with_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The output (computed exactly as :meth:`forward`) and the last layer's scaled input
        g, with output = g @ weights[-1] up to rounding (the features of a last-layer
        uncertainty estimate, :mod:`mlip.model.uncertainty`).

        Returns:
            (..., sizes[-1]) output and (..., sizes[-2]) features.
        """
        last = len(self.weights) - 1
        features = x
        for k, w in enumerate(self.weights):
            if k:
                x = self.act(x)
            scale = 1.0 / math.sqrt(w.shape[0])
            if k == last:
                features = x * scale
            x = x @ (w * scale)
        return x, features
