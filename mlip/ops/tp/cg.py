"""Clebsch-Gordan tensor product (the reference implementation).

Coefficients are e3nn's real Wigner-3j symbols (``e3nn.o3.wigner_3j``), so this product
agrees with ``e3nn.o3.TensorProduct`` in "uvu" mode (tested). Paths are all
(l1, l2, l3) with |l1 - l2| <= l3 <= l1 + l2 and l1 + l2 + l3 even (natural parity in,
natural parity out); one learnable weight per path and channel.
"""

from __future__ import annotations

import functools
import math

import torch
from e3nn import o3

from mlip.ops.sh import num_components
from mlip.ops.tp.base import SharedFactors, TensorProduct


def cg_paths(lmax_in1: int, lmax_in2: int, lmax_out: int) -> list[tuple[int, int, int]]:
    """Parity-allowed CG paths, in a fixed order.

    >>> cg_paths(1, 1, 1)
    [(0, 0, 0), (0, 1, 1), (1, 0, 1), (1, 1, 0)]
    """
    return [
        (l1, l2, l3)
        for l1 in range(lmax_in1 + 1)
        for l2 in range(lmax_in2 + 1)
        for l3 in range(abs(l1 - l2), min(l1 + l2, lmax_out) + 1)
        if (l1 + l2 + l3) % 2 == 0
    ]


@functools.lru_cache(maxsize=64)
def cg_path_tensor(lmax_in1: int, lmax_in2: int, lmax_out: int) -> torch.Tensor:
    """Stacked, normalised CG blocks, (P, D1, D2, Dout) float64 (cached, CPU).

    Each path is scaled by sqrt(2 l3 + 1) / sqrt(#paths into l3), so unit-variance
    component-normalised inputs give unit-variance outputs.
    """
    paths = cg_paths(lmax_in1, lmax_in2, lmax_out)
    d1, d2, d3 = (num_components(lmax) for lmax in (lmax_in1, lmax_in2, lmax_out))
    fan_in = [sum(1 for p in paths if p[2] == l3) for l3 in range(lmax_out + 1)]
    m = torch.zeros(len(paths), d1, d2, d3, dtype=torch.float64)
    for p, (l1, l2, l3) in enumerate(paths):
        w3j = o3.wigner_3j(l1, l2, l3, dtype=torch.float64)
        scale = math.sqrt(2 * l3 + 1) / math.sqrt(fan_in[l3])
        m[p, l1**2 : (l1 + 1) ** 2, l2**2 : (l2 + 1) ** 2, l3**2 : (l3 + 1) ** 2] = scale * w3j
    return m


@functools.lru_cache(maxsize=64)
def cg_compact_paths(lmax_in1: int, lmax_in2: int, lmax_out: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The path tensor restricted to the (component i of x1, path p) pairs that couple,
    i.e. deg(i) = l1(p): (K, D2, Dout) float64 with the index vectors of i and p (K,).

    A path only reads the x1 components of its own degree l1, so of the D1 * P products
    x1_i w_p only K = sum_p (2 l1(p) + 1) are used (15 of 28 for the (1, 2, 2) message).
    """
    paths = cg_paths(lmax_in1, lmax_in2, lmax_out)
    full = cg_path_tensor(lmax_in1, lmax_in2, lmax_out)
    pairs = [(i, p) for p, (l1, _, _) in enumerate(paths) for i in range(l1**2, (l1 + 1) ** 2)]
    index_i = torch.tensor([i for i, _ in pairs], dtype=torch.long)
    index_p = torch.tensor([p for _, p in pairs], dtype=torch.long)
    return full[index_p, index_i], index_i, index_p


def cg_product(
    x1: torch.Tensor, x2: torch.Tensor, weight: torch.Tensor, paths: torch.Tensor
) -> torch.Tensor:
    """Channel-wise weighted CG product (pure function).

    Args:
        x1: (..., C, D1).
        x2: (..., C or 1, D2).
        weight: (..., C, P) per-path weights (broadcastable).
        paths: (P, D1, D2, Dout) path tensor from :func:`cg_path_tensor`.

    Returns:
        (..., C, Dout).
    """
    p, d1, d2, d3 = paths.shape
    outer = (x1.unsqueeze(-1) * x2.unsqueeze(-2)).flatten(-2)  # (..., C, D1*D2)
    per_path = outer @ paths.permute(1, 2, 0, 3).reshape(d1 * d2, p * d3)  # (..., C, P*Dout)
    per_path = per_path.unflatten(-1, (p, d3))
    return (per_path * weight.unsqueeze(-1)).sum(-2)


class CGTensorProduct(TensorProduct):
    """Channel-wise CG tensor product with one weight per (channel, path).

    >>> tp = CGTensorProduct(1, 1, 1)
    >>> tp(torch.randn(5, 8, 4), torch.randn(5, 1, 4), torch.randn(5, 8, tp.weight_numel)).shape
    torch.Size([5, 8, 4])
    """

    short_names = ("cg",)  # accepted wherever a class path is (mlip.ops.tp.short_names)

    def __init__(self, lmax_in1: int, lmax_in2: int, lmax_out: int) -> None:
        super().__init__(lmax_in1, lmax_in2, lmax_out)
        self.paths = cg_paths(lmax_in1, lmax_in2, lmax_out)
        self.weight_numel = len(self.paths)
        _, index_i, index_p = cg_compact_paths(lmax_in1, lmax_in2, lmax_out)
        self.register_buffer("index_i", index_i, persistent=False)
        self.register_buffer("index_p", index_p, persistent=False)
        self.register_constants()

    def build_constants(self) -> dict[str, torch.Tensor]:
        degrees = (self.lmax_in1, self.lmax_in2, self.lmax_out)
        return {"paths": cg_path_tensor(*degrees), "compact": cg_compact_paths(*degrees)[0]}

    def shared_operand_factors(self, x2: torch.Tensor) -> SharedFactors:
        # Only the K (component of x1, path) pairs that couple: u = x2 . compact, (..., K, Dout).
        compact = self.constant("compact", x2)
        k, d2, d3 = compact.shape
        u = (x2 @ compact.permute(1, 0, 2).reshape(d2, k * d3)).unflatten(-1, (k, d3))
        return SharedFactors(u, self.index_i, self.index_p, None)

    def forward(
        self, x1: torch.Tensor, x2: torch.Tensor, weight: torch.Tensor | None = None
    ) -> torch.Tensor:
        shared = self.shared_forward(x1, x2, weight)
        if shared is not None:
            return shared
        if weight is None:
            weight = x1.new_ones(self.weight_numel)
        return cg_product(x1, x2, weight, self.constant("paths", x1))
