"""Degree-wise linear maps (mlip/ops/linear.py) against a direct sum over channels, one
atom and degree at a time, and equivariance (a Wigner-D rotation commutes with the map)."""

import pytest
import torch

from mlip.ops.linear import DegreeLinear, ElementDegreeLinear, degree_mix
from mlip.ops.rotations import random_rotations
from mlip.ops.sh import wigner_d


def _reference(x: torch.Tensor, weight_of_atom_degree) -> torch.Tensor:
    """out[n, o, (l, m)] = sum_i W(n, l)[i, o] x[n, i, (l, m)], one atom and degree at a time."""
    n, _, d = x.shape
    lmax = int(round(d**0.5)) - 1
    rows = []
    for a in range(n):
        cols = [weight_of_atom_degree(a, l).T @ x[a, :, l * l:(l + 1) ** 2] for l in range(lmax + 1)]
        rows.append(torch.cat(cols, dim=1))
    return torch.stack(rows)


@pytest.mark.parametrize("lmax", [0, 1, 2, 3])
def test_degree_linear_matches_direct_sum(lmax):
    g = torch.Generator().manual_seed(lmax)
    layer = DegreeLinear(lmax, 5, 7).double()
    x = torch.randn(4, 5, (lmax + 1) ** 2, generator=g, dtype=torch.float64)
    ref = _reference(x, lambda a, l: layer.weight[l]) * layer.norm
    torch.testing.assert_close(layer(x), ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("lmax", [0, 1, 2])
def test_element_degree_linear_matches_direct_sum(lmax):
    g = torch.Generator().manual_seed(10 + lmax)
    layer = ElementDegreeLinear(lmax, 5, 6, num_elements=3).double()
    species = torch.tensor([0, 2, 1, 2, 0])
    onehot = torch.nn.functional.one_hot(species, 3).double()
    x = torch.randn(5, 5, (lmax + 1) ** 2, generator=g, dtype=torch.float64)
    ref = _reference(x, lambda a, l: layer.weight[species[a], l]) * layer.norm
    torch.testing.assert_close(layer(x, onehot), ref, rtol=1e-12, atol=1e-12)


def test_degree_linear_is_equivariant():
    g = torch.Generator().manual_seed(3)
    lmax = 2
    layer = DegreeLinear(lmax, 4, 6).double()
    x = torch.randn(3, 4, (lmax + 1) ** 2, generator=g, dtype=torch.float64)
    d = wigner_d(lmax, random_rotations(1, g, dtype=torch.float64)[0])  # (D, D)
    torch.testing.assert_close(layer(x @ d.T), layer(x) @ d.T, rtol=1e-12, atol=1e-12)


def test_degree_linear_backward_matches_direct_sum():
    """Forces differentiate through the map: gradients equal the direct sum's."""
    g = torch.Generator().manual_seed(4)
    layer = DegreeLinear(2, 3, 5).double()
    x = torch.randn(2, 3, 9, generator=g, dtype=torch.float64, requires_grad=True)
    (gx,) = torch.autograd.grad(layer(x).square().sum(), x)
    x_ref = x.detach().clone().requires_grad_(True)
    ref = _reference(x_ref, lambda a, l: layer.weight[l]) * layer.norm
    (gref,) = torch.autograd.grad(ref.square().sum(), x_ref)
    torch.testing.assert_close(gx, gref, rtol=1e-12, atol=1e-12)


def test_degree_mix_first_and_second_derivatives():
    """The hand-written backward of the batched product (forces), and the derivative of
    that backward (force training), against finite differences."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(3, 4, 9, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(9, 4, 5, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(degree_mix, (x, w))
    assert torch.autograd.gradgradcheck(degree_mix, (x, w))
