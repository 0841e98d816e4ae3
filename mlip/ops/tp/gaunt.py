"""Gaunt tensor product on a spherical grid ("The Price of Freedom", Xie et al. 2025;
Gaunt products after Luo, Chen, Krishnapriyan, ICLR 2024).

Coefficient vectors are read as functions on the sphere, f(s) = sum_lm x_lm Y_lm(s); the
Gaunt product multiplies two such functions pointwise and projects the product back onto
SH of degree <= L_out. On a Gauss-Legendre (in cos theta) x uniform (azimuth) grid this is
exact when the grid resolves the integrand f1 f2 Y_out (degree L1 + L2 + L_out):
n_theta = ceil((L1 + L2 + L_out + 1) / 2) nodes and n_phi = L1 + L2 + L_out + 1 angles.

Weights act per degree, not per path: per channel, one weight for each degree of x1
and one for each output degree, so ``weight_numel = (lmax_in1 + 1) + (lmax_out + 1)``
(x2 is left unweighted so a shared edge operand is evaluated on the grid once per edge).

Natural parity in, natural parity out: only l1 + l2 + l3 even couplings exist, so the
cross product of two vectors (1o x 1o -> 1e) is not representable (tested).
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch

from mlip.ops.sh import degree_of_components, num_components, spherical_harmonics
from mlip.ops.tp.base import TensorProduct


def grid_size(lmax_in1: int, lmax_in2: int, lmax_out: int) -> tuple[int, int]:
    """(n_theta, n_phi) of the smallest exact product grid.

    >>> grid_size(2, 2, 2)
    (4, 7)
    """
    degree = lmax_in1 + lmax_in2 + lmax_out
    return math.ceil((degree + 1) / 2), degree + 1


@functools.lru_cache(maxsize=64)
def sphere_grid(n_theta: int, n_phi: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Grid points (G, 3) on the unit sphere and quadrature weights (G,) summing to 1
    (float64): Gauss-Legendre in cos theta times the trapezoidal rule in phi."""
    nodes, weights = np.polynomial.legendre.leggauss(n_theta)
    phi = 2 * np.pi * np.arange(n_phi) / n_phi
    cos_t = np.repeat(nodes, n_phi)
    sin_t = np.sqrt(1 - cos_t**2)
    ph = np.tile(phi, n_theta)
    points = np.stack([sin_t * np.cos(ph), sin_t * np.sin(ph), cos_t], axis=1)
    w = np.repeat(weights, n_phi) / (2 * n_phi)  # sum(weights) = 2 over cos theta
    return torch.from_numpy(points), torch.from_numpy(w)


@functools.lru_cache(maxsize=64)
def gaunt_grid_matrices(
    lmax_in1: int, lmax_in2: int, lmax_out: int, normalize: bool = True
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(to_grid1 (D1, G), to_grid2 (D2, G), from_grid (G, Dout)) in float64.

    ``from_grid`` projects with component normalisation: coefficient_a = mean over the
    sphere of f * Y_a; each output degree is then rescaled so unit-variance inputs give
    unit-variance outputs (the same convention as the CG product).
    """
    points, w = sphere_grid(*grid_size(lmax_in1, lmax_in2, lmax_out))
    lmax = max(lmax_in1, lmax_in2, lmax_out)
    y = spherical_harmonics(points, lmax).T  # (D, G), component-normalised
    to1, to2 = y[: num_components(lmax_in1)], y[: num_components(lmax_in2)]
    proj = (y[: num_components(lmax_out)] * w).T  # (G, Dout)
    if not normalize:
        return to1, to2, proj
    # Variance normalisation from the exact coupling tensor G_abc = sum_g Y_b Y_c Y_a w.
    coupling = torch.einsum("bg,cg,ga->abc", to1, to2, proj)
    var = coupling.square().sum(dim=(1, 2))  # (Dout,)
    degree = degree_of_components(lmax_out)
    per_degree = torch.zeros(lmax_out + 1, dtype=torch.float64).index_add_(0, degree, var)
    per_degree = per_degree / (2 * torch.arange(lmax_out + 1, dtype=torch.float64) + 1)
    scale = torch.where(per_degree > 0, per_degree.rsqrt(), torch.zeros_like(per_degree))
    return to1, to2, proj * scale[degree]


def gaunt_grid_product(
    x1: torch.Tensor, x2: torch.Tensor, to1: torch.Tensor, to2: torch.Tensor,
    from_grid: torch.Tensor,
) -> torch.Tensor:
    """Pointwise product on the grid (pure function).

    Args:
        x1: (..., C, D1); x2: (..., C or 1, D2); matrices from :func:`gaunt_grid_matrices`.

    Returns:
        (..., C, Dout).
    """
    return ((x1 @ to1) * (x2 @ to2)) @ from_grid


class GauntGridTensorProduct(TensorProduct):
    """Gaunt tensor product evaluated on an exact spherical quadrature grid.

    >>> tp = GauntGridTensorProduct(1, 2, 2)
    >>> tp(torch.randn(4, 3, 4), torch.randn(4, 1, 9), torch.ones(4, 3, tp.weight_numel)).shape
    torch.Size([4, 3, 9])
    """

    def __init__(self, lmax_in1: int, lmax_in2: int, lmax_out: int) -> None:
        super().__init__(lmax_in1, lmax_in2, lmax_out)
        self.weight_numel = (lmax_in1 + 1) + (lmax_out + 1)
        self._constants: dict[tuple, tuple[torch.Tensor, ...]] = {}

    def _matrices(self, like: torch.Tensor) -> tuple[torch.Tensor, ...]:
        key = (like.dtype, like.device)
        if key not in self._constants:
            mats = gaunt_grid_matrices(self.lmax_in1, self.lmax_in2, self.lmax_out)
            deg1 = degree_of_components(self.lmax_in1)
            deg_out = degree_of_components(self.lmax_out)
            self._constants[key] = tuple(
                t.to(device=like.device, dtype=like.dtype if t.is_floating_point() else t.dtype)
                for t in (*mats, deg1, deg_out)
            )
        return self._constants[key]

    def forward(
        self, x1: torch.Tensor, x2: torch.Tensor, weight: torch.Tensor | None = None
    ) -> torch.Tensor:
        to1, to2, from_grid, deg1, deg_out = self._matrices(x1)
        if weight is not None:
            w1, w_out = weight[..., : self.lmax_in1 + 1], weight[..., self.lmax_in1 + 1 :]
            x1 = x1 * w1[..., deg1]
        out = gaunt_grid_product(x1, x2, to1, to2, from_grid)
        if weight is not None:
            out = out * w_out[..., deg_out]
        return out
