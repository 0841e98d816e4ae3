"""Gaunt tensor products (spherical grid and 2D Fourier): exactness, agreement, selection
rules, expressivity."""

from __future__ import annotations

import pytest
import torch

from mlip.ops.sh import num_components, spherical_harmonics
from mlip.ops.tp.cg import cg_path_tensor, cg_paths
from mlip.ops.tp.gaunt import (
    GauntFourierTensorProduct,
    GauntGridTensorProduct,
    gaunt_fourier_matrices,
    gaunt_fourier_product,
    gaunt_grid_matrices,
    sphere_grid,
)

GAUNT = [GauntGridTensorProduct, GauntFourierTensorProduct]


def coupling(lmax: int) -> torch.Tensor:
    """Gaunt coupling tensor G[b, c, a] (unnormalised) of the grid implementation."""
    to1, to2, proj = gaunt_grid_matrices(lmax, lmax, lmax, normalize=False)
    return torch.einsum("bg,cg,ga->bca", to1, to2, proj)


@pytest.mark.parametrize("lmax", [1, 3, 6])
def test_matches_brute_force_quadrature(lmax):
    """The exact small grid equals a far finer grid (80 x 160) to 1e-10."""
    g = torch.Generator().manual_seed(lmax)
    d = num_components(lmax)
    x1 = torch.randn(4, d, generator=g, dtype=torch.float64)
    x2 = torch.randn(4, d, generator=g, dtype=torch.float64)
    points, w = sphere_grid(80, 160)
    y = spherical_harmonics(points, lmax).T
    reference = ((x1 @ y) * (x2 @ y) * w) @ y.T
    to1, to2, proj = gaunt_grid_matrices(lmax, lmax, lmax, normalize=False)
    grid = ((x1 @ to1) * (x2 @ to2)) @ proj
    assert (grid - reference).abs().max() < 1e-10 * reference.abs().max()
    fourier = gaunt_fourier_product(x1, x2, *gaunt_fourier_matrices(lmax, lmax, lmax, normalize=False))
    assert (fourier - reference).abs().max() < 1e-10 * reference.abs().max()


@pytest.mark.parametrize("degrees", [(1, 1, 1), (2, 1, 3), (3, 3, 0), (0, 4, 4), (6, 6, 6),
                                     (6, 2, 4), (5, 6, 3)])
def test_grid_and_fourier_agree(degrees):
    """The two published algorithms compute the same weighted, normalised product (float64)."""
    g = torch.Generator().manual_seed(sum(degrees))
    grid = GauntGridTensorProduct(*degrees, shared_operand="native")
    fourier = GauntFourierTensorProduct(*degrees, shared_operand="native")
    x1 = torch.randn(7, 4, num_components(degrees[0]), generator=g, dtype=torch.float64)
    x2 = torch.randn(7, 1, num_components(degrees[1]), generator=g, dtype=torch.float64)
    w = torch.randn(7, 4, grid.weight_numel, generator=g, dtype=torch.float64)
    a, b = grid(x1, x2, w), fourier(x1, x2, w)
    assert (a - b).abs().max() < 1e-10 * a.abs().max()
    assert grid.weight_numel == fourier.weight_numel


@pytest.mark.parametrize("cls", GAUNT)
@pytest.mark.parametrize("degrees", [(0, 2, 2), (1, 2, 2), (2, 1, 3), (3, 3, 3), (5, 2, 4)])
def test_shared_operand_coupling_equals_the_native_form(cls, degrees):
    """The default path for a one-channel x2 (edge SH: the coupling tensor contracted with
    x2 first) is the native grid / Fourier product to 1e-12 in float64, weights included,
    and takes the same weights; with channels in x2 both paths are the native one."""
    g = torch.Generator().manual_seed(sum(degrees))
    fast, native = cls(*degrees), cls(*degrees, shared_operand="native")
    assert fast.weight_numel == native.weight_numel
    x1 = torch.randn(6, 5, num_components(degrees[0]), generator=g, dtype=torch.float64)
    x2 = spherical_harmonics(torch.randn(6, 3, generator=g, dtype=torch.float64), degrees[1]).unsqueeze(1)
    w = torch.randn(6, 5, fast.weight_numel, generator=g, dtype=torch.float64)
    a, b = fast(x1, x2, w), native(x1, x2, w)
    assert (a - b).abs().max() < 1e-12 * b.abs().max()
    assert (fast(x1, x2) - native(x1, x2)).abs().max() < 1e-12 * b.abs().max()
    x2c = torch.randn(6, 5, num_components(degrees[1]), generator=g, dtype=torch.float64)
    assert torch.equal(fast(x1, x2c, w), native(x1, x2c, w))
    a32 = fast.float()(x1.float(), x2.float(), w.float())
    assert (a32.double() - b).abs().max() < 1e-5 * b.abs().max()
    with pytest.raises(ValueError, match="shared_operand"):
        cls(*degrees, shared_operand="grid")


@pytest.mark.parametrize("lmax", [2, 4, 6])
def test_proportional_to_cg_and_parity_rule(lmax):
    """Per (l1, l2, l3) block, Gaunt = c * CG (e3nn's 3j); blocks with l1+l2+l3 odd are 0."""
    gaunt = coupling(lmax)
    cg = cg_path_tensor(lmax, lmax, lmax)
    paths = cg_paths(lmax, lmax, lmax)
    for l1 in range(lmax + 1):
        for l2 in range(lmax + 1):
            for l3 in range(abs(l1 - l2), min(l1 + l2, lmax) + 1):
                block = gaunt[l1**2:(l1 + 1)**2, l2**2:(l2 + 1)**2, l3**2:(l3 + 1)**2]
                if (l1 + l2 + l3) % 2:
                    assert block.abs().max() < 1e-13, (l1, l2, l3)
                    continue
                ref = cg[paths.index((l1, l2, l3)), l1**2:(l1 + 1)**2, l2**2:(l2 + 1)**2,
                         l3**2:(l3 + 1)**2]
                c = (block * ref).sum() / ref.square().sum()
                assert (block - c * ref).abs().max() < 1e-12, (l1, l2, l3)
                assert abs(c) > 1e-6  # every parity-allowed coupling is present


@pytest.mark.parametrize("cls", GAUNT)
def test_cross_product_is_not_representable(cls):
    """1o x 1o -> 1e (the cross product) does not exist in a Gaunt product: the product of
    two sphere functions is symmetric, so tp(a, b) == tp(b, a) while a x b = -(b x a), and
    the degree-1 part of a vector-vector product is exactly zero. Not a bug: natural parity."""
    tp = cls(1, 1, 2)
    a = torch.zeros(1, 1, 4, dtype=torch.float64)
    b = torch.zeros(1, 1, 4, dtype=torch.float64)
    a[..., 1:], b[..., 1:] = torch.tensor([1.0, 0.2, -0.5]), torch.tensor([0.3, -1.0, 0.7])
    ab, ba = tp(a, b), tp(b, a)
    assert torch.allclose(ab, ba, atol=1e-14)
    assert ab[..., 1:4].abs().max() < 1e-14  # no vector (l = 1) output at all
    assert ab[..., 0].abs().max() > 0.1  # the dot product (l = 0) is there


@pytest.mark.parametrize("cls", GAUNT)
def test_output_variance_is_normalised(cls):
    g = torch.Generator().manual_seed(0)
    tp = cls(2, 2, 2)
    out = tp(torch.randn(20000, 1, 9, generator=g, dtype=torch.float64),
             torch.randn(20000, 1, 9, generator=g, dtype=torch.float64))
    var = out.square().mean(dim=(0, 1))
    assert torch.allclose(var, torch.ones(9, dtype=torch.float64), atol=0.1)


@pytest.mark.parametrize("cls", GAUNT)
def test_equivariant_to_lmax_6(cls):
    """tp(x1 D, x2 D) = tp(x1, x2) D for random rotations, l <= 6, float64, to 1e-10."""
    from e3nn import o3

    from mlip.ops.sh import wigner_d

    g = torch.Generator().manual_seed(6)
    tp = cls(6, 6, 6)
    x1 = torch.randn(3, 2, 49, generator=g, dtype=torch.float64)
    x2 = torch.randn(3, 1, 49, generator=g, dtype=torch.float64)
    w = torch.randn(3, 2, tp.weight_numel, generator=g, dtype=torch.float64)
    for _ in range(3):
        d = wigner_d(6, o3.rand_matrix(dtype=torch.float64))
        rotated = tp(x1 @ d.T, x2 @ d.T, w)
        expected = tp(x1, x2, w) @ d.T
        assert (rotated - expected).abs().max() < 1e-10 * expected.abs().max()


@pytest.mark.parametrize("cls", GAUNT)
def test_empty_batch(cls):
    """No edges (a lone atom): an empty result, not an FFT library error."""
    tp = cls(1, 2, 2)
    out = tp(torch.zeros(0, 3, 4), torch.zeros(0, 1, 9), torch.ones(0, 3, tp.weight_numel))
    assert out.shape == (0, 3, 9)
