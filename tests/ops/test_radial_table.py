"""Tabulated radial functions: the quintic Hermite table reproduces a function with C2
kinks and its slope to the measured error, and puts the kinks on nodes."""

from __future__ import annotations

import pytest
import torch

from mlip.model.repulsion import smooth_switch
from mlip.ops.radial_table import RadialTable, segment_nodes

CUTOFF = 5.0
SWITCH = {(0, 0): (0.4, 0.7), (0, 1): (0.55, 0.9), (1, 1): (0.3, 0.5)}


def function(r: torch.Tensor, a: int, b: int) -> torch.Tensor:
    """(M,) -> (M, 3), symmetric in the pair: smooth in r, zero below r_on with C2 kinks at r_on and r_off (the
    shape of a radial network behind the ZBL core switch), zero at the cutoff."""
    r_on, r_off = SWITCH[min(a, b), max(a, b)]
    weight = 1.0 - smooth_switch(r, torch.tensor(r_on), torch.tensor(r_off))
    envelope = (1 - r / CUTOFF).clamp(min=0) ** 3
    base = torch.stack([torch.sin(2.1 * r), torch.cos(1.3 * r) / (1 + r), torch.exp(-r)], -1)
    return base * (weight * envelope).unsqueeze(-1) * (1.0 + a + b + 3.0 * a * b)


def exact_slope(r: torch.Tensor, a: int, b: int) -> torch.Tensor:
    return torch.func.jvp(lambda x: function(x, a, b), (r,), (torch.ones_like(r),))[1]


def test_switch_radii_are_nodes():
    nodes, boundary = segment_nodes(0.55, CUTOFF, 0.02, (0.55, 0.9))
    assert nodes[0] == 0.55 and nodes[boundary] == pytest.approx(0.9, abs=1e-15)
    assert nodes[-1] == CUTOFF and float((nodes[1:] - nodes[:-1]).max()) <= 0.02 + 1e-12
    nodes, boundary = segment_nodes(0.02, CUTOFF, 0.02, None)
    assert nodes[0] == 0.02 and boundary == nodes.shape[0] - 1


@pytest.mark.parametrize("spacing", [0.04, 0.01])
def test_table_reproduces_function_and_slope(spacing):
    table = RadialTable.build(function, 2, CUTOFF, spacing, lambda a, b: SWITCH[min(a, b), max(a, b)],
                              torch.float64)
    gen = torch.Generator().manual_seed(1)
    r = 0.2 + 4.8 * torch.rand(4000, dtype=torch.float64, generator=gen)
    a = torch.randint(0, 2, (4000,), generator=gen)
    b = torch.randint(0, 2, (4000,), generator=gen)
    r.requires_grad_(True)
    got = table(r, a, b)
    slope = torch.autograd.grad(got.sum(), r)[0]  # each row depends on its own r only
    for pair in ((0, 0), (0, 1), (1, 0), (1, 1)):
        mask = (a == pair[0]) & (b == pair[1])
        ref = function(r.detach()[mask], *pair)
        ref_slope = exact_slope(r.detach()[mask], *pair).sum(-1)
        value_error = float((got[mask].detach() - ref).abs().max() / ref.abs().max())
        slope_error = float((slope[mask] - ref_slope).abs().max() / ref_slope.abs().max())
        assert value_error <= 2 * table.max_error and slope_error <= 10 * table.max_error
    # h^6 (values) / h^5 (slopes): the finer table is orders of magnitude closer
    assert table.max_error < (5e-5 if spacing == 0.04 else 1e-7)
    below = table(torch.tensor([0.1, 0.2], dtype=torch.float64, requires_grad=True),
                  torch.tensor([0, 1]), torch.tensor([1, 1]))
    assert below.abs().max() == 0.0  # inside the core the function is exactly zero
