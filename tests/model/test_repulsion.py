"""Optional ZBL repulsion: a physical wall at short range, nothing near equilibrium."""

from __future__ import annotations

import ase
import ase.io
import numpy as np
import pytest
import torch

from mlip.model.build import build_potential
from mlip.model.io import load_model, save_model
from mlip.model.repulsion import smooth_switch, zbl_pair_energy
from mlip.testing import physics

BACKBONE = {"class_path": "mlip.backbones.equivariant.EquivariantBackbone",
            "init_args": {"channels": 8, "lmax_hidden": 1, "lmax_sh": 1, "correlation": 2,
                          "num_layers": 2, "radial_hidden": 16}}


def model(repulsion):
    torch.manual_seed(0)
    config = {"backbone": BACKBONE, "repulsion": repulsion}
    return build_potential(config, [1, 6, 8], [-13.6, -1029.0, -2041.0], 1.0, 0.0, 5.0, 12.0).double()


def test_zbl_pair_values():
    """H-H at 0.5 Å: the ZBL universal potential gives ~5.1 eV (k/r * phi(r/a), a = 0.2342 Å)."""
    r = torch.tensor([0.5], dtype=torch.float64)
    e = float(zbl_pair_energy(r, torch.tensor([1]), torch.tensor([1])))
    x = 0.5 / (0.46850 / 2)
    phi = (0.18175 * np.exp(-3.1998 * x) + 0.50986 * np.exp(-0.94229 * x)
           + 0.28022 * np.exp(-0.4029 * x) + 0.02817 * np.exp(-0.20162 * x))
    assert e == pytest.approx(14.399645 / 0.5 * phi, rel=1e-12) and 4.0 < e < 6.0
    s = smooth_switch(torch.tensor([0.1, 0.3, 0.5, 0.7]), torch.tensor(0.2), torch.tensor(0.6))
    assert s.tolist()[0] == 1.0 and s.tolist()[-1] == 0.0 and 0 < s[1] < 1


def test_no_effect_near_equilibrium_and_a_wall_at_short_range(bundled_acac):
    frame = ase.io.read(bundled_acac / "train_300K.xyz", 0)
    plain, wall = model(None), model({})
    e_plain = physics.predict(plain, [frame])["energy"][0]
    e_wall = physics.predict(wall, [frame])["energy"][0]
    assert e_wall == e_plain  # every bonded pair is beyond 0.6 x the covalent-radius sum
    # Push two carbons together: with the wall the energy climbs steeply and monotonically.
    energies = []
    for d in (0.8, 0.6, 0.45, 0.35, 0.25):
        dimer = ase.Atoms("CC", positions=[[0, 0, 0], [0, 0, d]])
        energies.append(physics.predict(wall, [dimer])["energy"][0])
    assert np.all(np.diff(energies[1:]) > 0) and energies[-1] - energies[1] > 50.0, energies


def test_forces_and_round_trip_with_repulsion(bundled_acac, tmp_path):
    frame = ase.io.read(bundled_acac / "train_300K.xyz", 1)
    # O 3 at 0.66 Å from C 4: inside the C-O switch region (0.50-0.85 Å), where s' != 0;
    # O 5 at 0.40 Å from C 6: fully on.
    frame.positions[3] = frame.positions[4] + [0.4, 0.5, 0.1]
    frame.positions[5] = frame.positions[6] + [0.0, 0.4, 0.0]
    wall = model({"inner": 0.35, "outer": 0.6})
    assert physics.measure_force_fd_error(wall, frame, h=1e-4, num_atoms=15) < 1e-6
    path = save_model(tmp_path / "m.pt", wall, {"backbone": BACKBONE,
                                                 "repulsion": {"inner": 0.35, "outer": 0.6}}, 12.0)
    again = load_model(path, dtype=torch.float64)
    assert physics.predict(again, [frame])["energy"][0] == physics.predict(wall, [frame])["energy"][0]
