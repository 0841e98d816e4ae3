"""Radial bases and smooth cutoff envelopes for edge lengths."""

from __future__ import annotations

import math

import torch
from torch import nn


class PolynomialCutoff(nn.Module):
    """Smooth envelope that goes to zero at ``r_max`` with ``p`` continuous derivatives.

    u(x) = 1 - (p+1)(p+2)/2 x^p + p(p+2) x^(p+1) - p(p+1)/2 x^(p+2), x = r / r_max,
    and 0 for x >= 1 (Klicpera et al., DimeNet). u(0) = 1; u, u', u'' vanish at r_max.

    >>> PolynomialCutoff(5.0)(torch.tensor([0.0, 5.0, 6.0])).tolist()
    [1.0, 0.0, 0.0]
    """

    def __init__(self, r_max: float, p: int = 6) -> None:
        super().__init__()
        self.r_max = float(r_max)
        self.p = int(p)

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        p = self.p
        x = r / self.r_max
        u = (
            1.0
            - 0.5 * (p + 1) * (p + 2) * x.pow(p)
            + p * (p + 2) * x.pow(p + 1)
            - 0.5 * p * (p + 1) * x.pow(p + 2)
        )
        return torch.where(x < 1.0, u, torch.zeros_like(u))  # +0 beyond r_max (u * mask gives -0)


class BesselBasis(nn.Module):
    """Radial Bessel functions sqrt(2/r_max) sin(n pi r / r_max) / r, n = 1..num_basis.

    Args:
        r_max: cutoff radius [Å].
        num_basis: number of functions.
        trainable: learn the frequencies (initialised at n pi / r_max).

    Shapes: (E,) lengths [Å] -> (E, num_basis).
    """

    def __init__(self, r_max: float, num_basis: int = 8, trainable: bool = False) -> None:
        super().__init__()
        freqs = torch.arange(1, num_basis + 1, dtype=torch.get_default_dtype()) * math.pi / r_max
        if trainable:
            self.freqs = nn.Parameter(freqs)
        else:
            self.register_buffer("freqs", freqs)
        self.prefactor = math.sqrt(2.0 / r_max)

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        r = r.unsqueeze(-1)
        return self.prefactor * torch.sin(self.freqs * r) / r


class RadialEmbedding(nn.Module):
    """Bessel basis times the polynomial envelope: (E,) lengths -> (E, num_basis)."""

    def __init__(self, r_max: float, num_basis: int = 8, p: int = 6) -> None:
        super().__init__()
        self.basis = BesselBasis(r_max, num_basis)
        self.cutoff = PolynomialCutoff(r_max, p)
        self.num_basis = num_basis

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        return self.basis(r) * self.cutoff(r).unsqueeze(-1)
