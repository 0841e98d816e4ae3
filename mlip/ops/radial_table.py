"""Tabulated radial networks: a function of the edge length, per element pair, as a
piecewise quintic Hermite spline, for inference.

A backbone's per-edge radial weights are a smooth function of one number, the edge length
r, for each (unordered) element pair: an MLP on a radial basis, times the pair's core
switch where the model has one. Evaluated through its MLP, each force call pays several
small matrix products per layer forward and backward. Tabulated, the same function costs
one row gather per edge and a degree-5 polynomial, and its derivative in r (what the
forces need) another pass over the same row.

The spline is the quintic Hermite interpolant of the value, first and second derivative
at every node (exact, by forward-mode autodiff): C2, with an error of order h^6 f^(6) for
node spacing h. Kinks of the function (where the core switch starts and ends, both C2) are
nodes: each pair's table has up to two segments, [r_on, r_off] and [r_off, r_cut], each
with its own uniform spacing, so the error bound holds inside every interval. Each
interval is stored as its polynomial's power-series coefficients. Below the first node
the table is constant (the core switch is 0 there; without a switch the first node is at
the spacing, 0.02 Å or less, far inside any physical distance).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn
from torch.func import jvp


def hermite_nodes(fn: Callable[[torch.Tensor], torch.Tensor], r: torch.Tensor) -> torch.Tensor:
    """(M, 3, F): value, first and second derivative of ``fn`` at the nodes ``r`` (M,).

    ``fn`` maps lengths (M,) to (M, F) row by row (row m depends on r[m] only), so one
    forward-mode pass with unit tangent gives every output's derivative.
    """
    one = torch.ones_like(r)

    def first(x: torch.Tensor) -> torch.Tensor:
        return jvp(fn, (x,), (torch.ones_like(x),))[1]

    value, d1 = jvp(fn, (r,), (one,))
    d2 = jvp(first, (r,), (one,))[1]
    return torch.stack([value, d1, d2], dim=1)


# Quintic Hermite basis on [0, 1] as power-series coefficients (rows: t^0..t^5), applied to
# (left value, right value, h * left slope, h * right slope, h^2 * left curvature,
# h^2 * right curvature).
_HERMITE = torch.tensor([
    [1.0, 0.0, 0.0, 0.0, 0.0, 0.0],
    [0.0, 0.0, 1.0, 0.0, 0.0, 0.0],
    [0.0, 0.0, 0.0, 0.0, 0.5, 0.0],
    [-10.0, 10.0, -6.0, -4.0, -1.5, 0.5],
    [15.0, -15.0, 8.0, 7.0, 1.5, -1.0],
    [-6.0, 6.0, -3.0, -3.0, -0.5, 0.5],
], dtype=torch.float64)


def interval_coefficients(nodes: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """(M - 1, 6, F) power-series coefficients in t = (x - r_k) / h_k of the quintic
    Hermite interpolant on each interval [r_k, r_k+1] (float64).

    Stored this way (not as node values), the slope of an interval is its own coefficient
    c_1 / h: rounded to float32, the derivative keeps float32's relative precision, where
    the node form would take it from differences of nearly equal values (an error of
    ulp(f) / h, measured 5x float32's own on acac forces).

    Args:
        nodes: (M, 3, F) value, first and second derivative at the nodes r (M,).
    """
    h = (r[1:] - r[:-1])[:, None]
    left, right = nodes[:-1], nodes[1:]
    parts = torch.stack([left[:, 0], right[:, 0], h * left[:, 1], h * right[:, 1],
                         h * h * left[:, 2], h * h * right[:, 2]], dim=1)  # (M - 1, 6, F)
    return torch.einsum("jp,kpf->kjf", _HERMITE.to(parts.device), parts)


def evaluate_series(t: torch.Tensor, coefficients: torch.Tensor) -> torch.Tensor:
    """sum_j c_j t^j by Horner's rule (pure function): t (E, 1), coefficients (E, 6, F)
    -> (E, F), differentiable in t.

    >>> c = torch.zeros(1, 6, 1); c[0, 0, 0], c[0, 1, 0] = 1.0, 2.0  # 1 + 2 t
    >>> evaluate_series(torch.tensor([[0.25]]), c)
    tensor([[1.5000]])
    """
    out = coefficients[:, 5]
    for j in range(4, -1, -1):
        out = coefficients[:, j] + t * out
    return out


def series_slope(t: torch.Tensor, coefficients: torch.Tensor) -> torch.Tensor:
    """d/dt of :func:`evaluate_series` (pure function): t (E, 1), coefficients (E, 6, F)
    -> (E, F).

    >>> c = torch.zeros(1, 6, 1); c[0, 1, 0], c[0, 2, 0] = 2.0, 1.0  # 2 t + t^2
    >>> series_slope(torch.tensor([[0.5]]), c)
    tensor([[3.]])
    """
    out = 5.0 * coefficients[:, 5]
    for j in range(4, 0, -1):
        out = j * coefficients[:, j] + t * out
    return out


# Inside the core switch the function changes on the scale of the switch width w, not of
# the radial basis: its segment gets spacing * w / _SWITCH_SCALE where w < _SWITCH_SCALE
# (measured: H-H behind the covalent switch, w = 0.16 Å, interpolated 1e5x worse than
# the rest of the table at equal spacing).
_SWITCH_SCALE = 0.64


def segment_nodes(start: float, end: float, spacing: float, switch: tuple[float, float] | None
                  ) -> tuple[torch.Tensor, int]:
    """Nodes (float64) of one pair's table and the node index of the segment boundary.

    With ``switch = (r_on, r_off)``: [r_on, r_off] and [r_off, end], the first split into
    intervals no longer than ``spacing * min(1, (r_off - r_on) / 0.64 Å)``, the second no
    longer than ``spacing``; r_off is node ``n1``. Without: [start, end] in one segment
    (``n1`` = the last node).

    >>> nodes, n1 = segment_nodes(0.5, 5.0, 0.5, (0.5, 0.82))
    >>> n1, round(float(nodes[n1]), 2), nodes.shape[0]
    (2, 0.82, 12)
    """
    def split(a: float, b: float, h: float) -> torch.Tensor:
        return torch.linspace(a, b, max(1, math.ceil((b - a) / h)) + 1, dtype=torch.float64)

    if switch is None:
        nodes = split(start, end, spacing)
        return nodes, nodes.shape[0] - 1
    r_on, r_off = switch
    fine = spacing * min(1.0, (r_off - r_on) / _SWITCH_SCALE)
    if r_off >= end:  # the switch reaches past the cutoff: one segment to the cutoff
        nodes = split(r_on, end, fine)
        return nodes, nodes.shape[0] - 1
    first = split(r_on, r_off, fine)
    return torch.cat([first, split(r_off, end, spacing)[1:]]), first.shape[0] - 1


class RadialTable(nn.Module):
    """Per-pair quintic Hermite tables of an (E,) -> (E, F) radial function.

    Built by :meth:`build`; ``forward(lengths, species_a, species_b)`` evaluates it.
    Buffers: the power-series coefficients of every interval (P I, 6, F) for P pairs padded
    to I intervals, and per pair its two segments' start and spacing, the node index of the
    segment boundary and the number of intervals.

    Attributes:
        max_error: the largest interpolation error measured at build time (float64, random
            points in every interval), of the values relative to the largest |value| or of
            the slopes relative to the largest |slope|, whichever is larger.
        spacing: the longest node interval asked for [Å].
    """

    def __init__(self, coefficients: torch.Tensor, starts: torch.Tensor, spacings: torch.Tensor,
                 boundary: torch.Tensor, intervals: torch.Tensor, pair_of: torch.Tensor,
                 spacing: float, max_error: float, cutoff: float) -> None:
        super().__init__()
        self.cutoff = float(cutoff)
        self.num_intervals = int(coefficients.shape[0] // starts.shape[0])
        self.register_buffer("coefficients", coefficients, persistent=False)  # (P I, 6, F)
        self.register_buffer("starts", starts, persistent=False)  # (P, 2) segment starts [Å]
        self.register_buffer("spacings", spacings, persistent=False)  # (P, 2) [Å]
        self.register_buffer("boundary", boundary, persistent=False)  # (P,) node of r_off
        self.register_buffer("intervals", intervals, persistent=False)  # (P,)
        self.register_buffer("pair_of", pair_of, persistent=False)  # (S, S) pair index
        self.spacing = float(spacing)
        self.max_error = float(max_error)

    @classmethod
    def build(cls, fn: Callable[[torch.Tensor, int, int], torch.Tensor], num_species: int,
              cutoff: float, spacing: float, switch: Callable[[int, int], tuple[float, float] | None],
              dtype: torch.dtype, device: torch.device | str = "cpu", check_points: int = 4,
              seed: int = 0) -> RadialTable:
        """Tabulate ``fn(r, a, b)`` ((M,) float64 lengths -> (M, F)) for every unordered
        species pair a <= b (the function must be symmetric in a, b).

        Args:
            fn: the radial function, evaluated in float64.
            num_species: S.
            cutoff: end of every table [Å].
            spacing: the longest node interval [Å].
            switch: (r_on, r_off) of pair (a, b) where fn is 0 below r_on and has C2
                kinks at r_on and r_off, or None (the table then starts at ``spacing``).
            dtype, device: of the stored coefficients.
            check_points: random points per interval at which the error is measured.
            seed: of those points.
        """
        pairs = [(a, b) for a in range(num_species) for b in range(a, num_species)]
        pair_of = torch.empty(num_species, num_species, dtype=torch.long)
        gen = torch.Generator().manual_seed(seed)
        tables, starts, spacings, boundary, intervals = [], [], [], [], []
        errors = [0.0, 0.0]  # largest |error| of value and slope
        scales = [0.0, 0.0]  # largest |value| and |slope|
        for p, (a, b) in enumerate(pairs):
            pair_of[a, b] = pair_of[b, a] = p
            sw = switch(a, b)
            r, n1 = segment_nodes(spacing if sw is None else sw[0], cutoff, spacing, sw)
            nodes = hermite_nodes(lambda x, a=a, b=b: fn(x, a, b), r).detach()
            coefficients = interval_coefficients(nodes, r)
            k = torch.arange(r.shape[0] - 1).repeat(check_points)
            t = torch.rand(k.shape[0], 1, dtype=torch.float64, generator=gen)
            h = (r[k + 1] - r[k]).unsqueeze(-1)
            x = (r[k] + t[:, 0] * h[:, 0]).detach()
            exact = hermite_nodes(lambda y, a=a, b=b: fn(y, a, b), x)[:, :2].detach()
            c = coefficients[k]
            for i, value in enumerate((evaluate_series(t, c), series_slope(t, c) / h)):
                errors[i] = max(errors[i], float((value - exact[:, i]).abs().max()))
                scales[i] = max(scales[i], float(exact[:, i].abs().max()))
            tables.append(coefficients)
            h1 = float(r[1] - r[0])
            h2 = float(r[-1] - r[-2]) if n1 < r.shape[0] - 1 else h1
            starts.append([float(r[0]), float(r[n1])])
            spacings.append([h1, h2])
            boundary.append(n1)
            intervals.append(r.shape[0] - 1)
        m = max(t.shape[0] for t in tables)
        table = torch.cat([torch.nn.functional.pad(t, (0, 0, 0, 0, 0, m - t.shape[0])) for t in tables])
        f64 = {"dtype": torch.float64, "device": device}
        max_error = max(e / max(s, 1e-300) for e, s in zip(errors, scales, strict=True))
        return cls(table.to(device=device, dtype=dtype), torch.tensor(starts, **f64).to(dtype),
                   torch.tensor(spacings, **f64).to(dtype),
                   torch.tensor(boundary, dtype=torch.long, device=device),
                   torch.tensor(intervals, dtype=torch.long, device=device), pair_of.to(device),
                   spacing, max_error, cutoff)

    def extra_repr(self) -> str:
        return (f"pairs={self.starts.shape[0]}, intervals={self.num_intervals}, "
                f"features={self.coefficients.shape[-1]}, spacing={self.spacing}, "
                f"max_error={self.max_error:.1e}")

    def forward(self, lengths: torch.Tensor, species_a: torch.Tensor, species_b: torch.Tensor) -> torch.Tensor:
        """(E, F) tabulated values at ``lengths`` (E,) [Å] for edges between species
        ``species_a`` and ``species_b`` (E,); differentiable in the lengths. Exactly 0 at
        and beyond the cutoff (the series there is zero only to round-off)."""
        pair = self.pair_of[species_a, species_b]
        starts, spacings = self.starts[pair], self.spacings[pair]  # (E, 2)
        boundary, intervals = self.boundary[pair], self.intervals[pair]
        r = lengths.to(starts.dtype)
        second = r >= starts[:, 1]
        u = torch.where(second, (r - starts[:, 1]) / spacings[:, 1] + boundary,
                        (r - starts[:, 0]) / spacings[:, 0])
        u = torch.minimum(u.clamp(min=0.0), intervals.to(u.dtype))
        k = torch.minimum(u.detach().floor().long(), intervals - 1)
        t = (u - k).unsqueeze(-1)
        c = self.coefficients[pair * self.num_intervals + k]  # (E, 6, F)
        # Value and slope from one read of the row; the slope enters as the derivative of a
        # first-order term that is zero in value, so the backward pass reads the (E, F)
        # slope instead of gathering the (E, 6, F) rows again (first derivatives only: the
        # table is for inference).
        value, slope = evaluate_series(t.detach(), c), series_slope(t.detach(), c)
        out = value + (t - t.detach()) * slope
        return torch.where((r < self.cutoff).unsqueeze(-1), out, torch.zeros_like(out))
