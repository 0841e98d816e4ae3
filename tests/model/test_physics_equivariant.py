"""The physics test kit on the equivariant backbone with every exact tensor product
(CG reference, Gaunt on the sphere grid and in the 2D Fourier basis), float64 (tight) and float32."""

from __future__ import annotations

import ase.io
import numpy as np
import pytest
import torch
from ase.build import bulk

from mlip.model.build import build_potential
from mlip.testing import physics

TENSOR_PRODUCTS = ["mlip.ops.tp.cg.CGTensorProduct", "mlip.ops.tp.gaunt.GauntGridTensorProduct",
                   "mlip.ops.tp.gaunt.GauntFourierTensorProduct"]


@pytest.fixture(params=TENSOR_PRODUCTS, ids=["cg", "gaunt-grid", "gaunt-fourier"])
def tensor_product(request):
    return request.param


# float64 kit tolerances (relative) and float32 ones.
TOL = {torch.float64: 1e-9, torch.float32: 1e-5}


def make_model(tp, dtype, elements=(1, 6, 8), e0s=(-13.6, -1029.0, -2041.0), seed=0):
    torch.manual_seed(seed)
    backbone = {
        "class_path": "mlip.backbones.equivariant.EquivariantBackbone",
        "init_args": {
            "channels": 8,
            "lmax_hidden": 1,
            "lmax_sh": 2,
            "correlation": 3,
            "num_layers": 2,
            "tensor_product": tp,
        },
    }
    model = build_potential({"backbone": backbone}, list(elements), list(e0s), 0.7, -0.3, 4.0, 10.0)
    # Random-but-nonzero weights everywhere so no term hides behind an all-ones init.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model.to(dtype)


@pytest.fixture(scope="module")
def acac(bundled_acac):
    return ase.io.read(bundled_acac / "train_300K.xyz", ":3")


@pytest.fixture(scope="module")
def copper():
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True) * (2, 2, 1)
    atoms.set_cell(
        atoms.cell.array @ np.array([[1, 0.05, 0], [0.02, 1, 0.03], [0, 0, 1]]), scale_atoms=True
    )
    atoms.rattle(0.05, seed=3)
    return atoms


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("reflect", [False, True])
def test_rotation_reflection_molecule(tensor_product, acac, dtype, reflect):
    err = physics.measure_rotation_error(
        make_model(tensor_product, dtype), acac[0], num=3, reflect=reflect
    )
    assert err["energy"] < TOL[dtype] and err["forces"] < 10 * TOL[dtype], err


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_rotation_periodic(tensor_product, copper, dtype):
    model = make_model(tensor_product, dtype, elements=(29,), e0s=(-3.5,))
    err = physics.measure_rotation_error(model, copper, num=2, reflect=True)
    assert err["energy"] < TOL[dtype] and err["forces"] < 10 * TOL[dtype], err


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_translation_and_permutation(tensor_product, acac, dtype):
    model = make_model(tensor_product, dtype)
    for err in (
        physics.measure_translation_error(model, acac[1]),
        physics.measure_permutation_error(model, acac[1]),
    ):
        assert err["energy"] < TOL[dtype] and err["forces"] < 10 * TOL[dtype], err


def test_batched_equals_single(tensor_product, acac, copper):
    model = make_model(
        tensor_product, torch.float64, elements=(1, 6, 8, 29), e0s=(-13.6, -1029.0, -2041.0, -3.5)
    )
    err = physics.measure_batch_error(model, [*acac, copper])
    assert err["energy"] < 1e-12 and err["forces"] < 1e-10, err


def test_forces_are_minus_energy_gradient(tensor_product, acac):
    assert physics.measure_force_fd_error(make_model(tensor_product, torch.float64), acac[2]) < 1e-7


def test_stress_matches_strained_cells(tensor_product, copper):
    model = make_model(tensor_product, torch.float64, elements=(29,), e0s=(-3.5,))
    assert physics.measure_stress_fd_error(model, copper) < 1e-8


def test_locality_and_cutoff_continuity(tensor_product, acac):
    model = make_model(tensor_product, torch.float64)
    err = physics.measure_locality_error(model, acac[0])
    assert err["energy"] < 1e-12 and err["forces"] < 1e-12, err
    assert physics.measure_cutoff_continuity(model) < 1e-9


def test_isolated_atom_is_e0(tensor_product):
    assert physics.measure_isolated_atom_error(make_model(tensor_product, torch.float64)) < 1e-10


def test_periodic_images(tensor_product, copper):
    model = make_model(tensor_product, torch.float64, elements=(29,), e0s=(-3.5,))
    assert physics.measure_supercell_error(model, copper) < 1e-12


@pytest.mark.parametrize("tp", TENSOR_PRODUCTS + ["mlip.ops.tp.cp.CPTensorProduct"])
def test_mirrored_edges_give_the_same_energy_forces_and_stress(tp, acac, copper):
    """Radial weights on one direction of each pair (keys.EDGE_MIRRORED, the order every
    neighbour list has) equal the full evaluation: float64, 1e-12 relative."""
    from mlip.data import keys
    from mlip.graph.build import atoms_to_batch

    molecular, metal = make_model(tp, torch.float64), make_model(tp, torch.float64, (29,), (-0.5,))
    for model, frames, stress in ((molecular, acac, False), (metal, [copper], True)):
        data = atoms_to_batch(frames, model.cutoff, dtype=torch.float64)
        assert keys.EDGE_MIRRORED in data
        plain = {k: v for k, v in data.items() if k != keys.EDGE_MIRRORED}
        a = model(data, compute_forces=True, compute_stress=stress)
        b = model(plain, compute_forces=True, compute_stress=stress)
        for key in (keys.ENERGY, keys.FORCES) + ((keys.STRESS,) if stress else ()):
            scale = b[key].abs().max()
            assert ((a[key] - b[key]).abs().max() / scale) < 1e-12, key
