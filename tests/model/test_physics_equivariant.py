"""Mirrored edges on the equivariant backbone with every tensor product. The generic
physics checks of each tensor product live in the backbone suite's modules
(test_physics_cg.py, test_physics_gaunt_grid.py, test_physics_gaunt_fourier.py,
test_physics_cp.py)."""

from __future__ import annotations

import ase.io
import numpy as np
import pytest
import torch
from ase.build import bulk

from mlip.model.build import build_potential

TENSOR_PRODUCTS = ["mlip.ops.tp.cg.CGTensorProduct", "mlip.ops.tp.gaunt.GauntGridTensorProduct",
                   "mlip.ops.tp.gaunt.GauntFourierTensorProduct"]


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


@pytest.mark.parametrize("tp", TENSOR_PRODUCTS + ["mlip.ops.tp.cp.CPTensorProduct"])
def test_any_mirrored_order_gives_the_same_energy_forces_and_stress(tp, acac, copper):
    """The backbone evaluates radial weights on the first half of the edges and copies them
    to the reversed pairs (the mirrored order every batch has, mlip.data.keys). Any other
    mirrored order of the same pairs (pairs shuffled, some pairs read the other way round)
    must give the same energy, forces and stress: float64, 1e-12 relative. A backbone that
    paired the halves wrongly, or used the halves' order, fails this."""
    from mlip.data import keys
    from mlip.graph.build import atoms_to_batch

    g = torch.Generator().manual_seed(0)
    molecular, metal = make_model(tp, torch.float64), make_model(tp, torch.float64, (29,), (-0.5,))
    for model, frames, stress in ((molecular, acac, False), (metal, [copper], True)):
        data = atoms_to_batch(frames, model.cutoff, dtype=torch.float64)
        ei, shifts = data[keys.EDGE_INDEX], data[keys.CELL_SHIFTS]
        half = ei.shape[1] // 2
        order = torch.randperm(half, generator=g)
        flip = torch.rand(half, generator=g) < 0.5  # read these pairs the other way round
        first = torch.where(flip, order + half, order)
        second = torch.where(flip, order, order + half)
        picked = torch.cat([first, second])
        other = {**data, keys.EDGE_INDEX: ei[:, picked], keys.CELL_SHIFTS: shifts[picked]}
        assert torch.equal(other[keys.EDGE_INDEX][:, half:], other[keys.EDGE_INDEX][:, :half].flip(0))
        a = model(data, compute_forces=True, compute_stress=stress)
        b = model(other, compute_forces=True, compute_stress=stress)
        for key in (keys.ENERGY, keys.FORCES) + ((keys.STRESS,) if stress else ()):
            scale = b[key].abs().max()
            assert ((a[key] - b[key]).abs().max() / scale) < 1e-12, key
