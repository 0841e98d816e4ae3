"""The physics kit on the CP backbone: exact where the math says so (translation,
permutation, forces = -dE/dr, locality), measured and bounded where it is approximate
(rotations)."""

from __future__ import annotations

import ase.io
import pytest
import torch

from mlip.model.build import build_potential
from mlip.testing import physics


@pytest.fixture(scope="module")
def cp_model():
    torch.manual_seed(0)  # CP factors fitted into the suite's cache folder (session_cache)
    config = {"backbone": {"class_path": "mlip.backbones.equivariant.EquivariantBackbone",
                           "init_args": {"channels": 8, "lmax_sh": 2, "correlation": 3,
                                         "tensor_product": "mlip.ops.tp.cp.CPTensorProduct"}}}
    return build_potential(config, [1, 6, 8], [-13.6, -1029.0, -2041.0], 0.7, -0.3, 5.0, 12.0).double()


@pytest.fixture(scope="module")
def acac(bundled_acac):
    return ase.io.read(bundled_acac / "train_300K.xyz", ":3")


def test_exact_symmetries_and_forces(cp_model, acac):
    for err in (physics.measure_translation_error(cp_model, acac[0]),
                physics.measure_permutation_error(cp_model, acac[0])):
        assert err["energy"] < 1e-12 and err["forces"] < 1e-10, err
    assert physics.measure_force_fd_error(cp_model, acac[1]) < 1e-7
    assert physics.measure_isolated_atom_error(cp_model) < 1e-10
    err = physics.measure_batch_error(cp_model, acac)
    assert err["energy"] < 1e-12 and err["forces"] < 1e-10


def test_rotation_error_is_small_but_measured(cp_model, acac):
    """Default rank 7 L^2 (fit errors 1e-7..1e-6): measured max force error 3.6e-9
    relative over 5 rotations (+ reflection), energy 2e-14; bound 1e-6."""
    err = physics.measure_rotation_error(cp_model, acac[2], num=5, reflect=True)
    assert err["forces"] < 1e-6, err
