"""Optional ZBL repulsion: a physical wall at short range, nothing near equilibrium."""

from __future__ import annotations

import ase
import ase.io
import numpy as np
import pytest
import torch
import yaml

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


def test_zero_on_every_bundled_training_frame(bundled_acac):
    """The measurement behind the default: on the whole training set the wall is exactly
    zero (closest pair >= 0.82 x its covalent-radius sum), so training is unchanged by it."""
    frames = ase.io.read(bundled_acac / "train_300K.xyz", ":")
    plain, wall = model(None), model({})
    assert np.array_equal(physics.predict(wall, frames)["energy"],
                          physics.predict(plain, frames)["energy"])


def test_on_by_default_in_training_configs(tmp_path):
    """A run config that says nothing of repulsion trains a model with the wall: reference
    distances from the training data, and two carbons well inside 0.5 x their shortest
    training distance see the ZBL energy alone (a pair the data lacks gets the cutoff)."""
    from mlip.training.config import load_config
    from mlip.training.module import PotentialModule

    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"data": {"train": "train.xyz"},
                                    "model": {"dtype": "float64", "backbone": BACKBONE}}))
    config = load_config(path)
    info = {"atomic_numbers": [1, 6, 8], "e0s": [-13.6, -1029.0, -2041.0], "scale": 1.0,
            "shift": 0.0, "cutoff": 5.0, "avg_num_neighbors": 12.0,
            "closest_pairs": {"1-6": 0.95, "6-6": 1.30, "6-8": 1.15, "1-8": 0.90, "1-1": 1.6}}
    m = PotentialModule(config, info).model
    assert m.repulsion is not None
    c, o = (int(m.species_of(torch.tensor([z]))) for z in (6, 8))
    assert m.repulsion.pair_radii(c, c) == pytest.approx((0.5 * 1.30, 0.85 * 1.30), rel=1e-12)
    assert m.repulsion.pair_radii(o, o) == pytest.approx((0.5 * 5.0, 0.85 * 5.0), rel=1e-12)
    r = 0.4
    dimer = ase.Atoms("CC", positions=[[0, 0, 0], [0, 0, r]])
    zbl = float(zbl_pair_energy(torch.tensor([r], dtype=torch.float64), torch.tensor([6]),
                                torch.tensor([6])))
    expected = 2 * (-1029.0 + float(m.shift[c])) + zbl
    assert physics.predict(m, [dimer])["energy"][0] == pytest.approx(expected, abs=1e-9)


def test_inside_the_core_the_energy_is_zbl_alone():
    """Below r_on the learned part does not see the pair: E = E0s + shifts + ZBL exactly."""
    m = model({})
    for z1, z2, r in [(6, 1, 0.3), (1, 1, 0.2), (8, 6, 0.4)]:
        d = ase.Atoms(numbers=[z1, z2], positions=[[0, 0, 0], [0, 0, r]])
        sp = m.species_of(torch.tensor([z1, z2]))
        zbl = float(zbl_pair_energy(torch.tensor([r], dtype=torch.float64), torch.tensor([z1]),
                                    torch.tensor([z2])))
        expected = float(m.e0s[sp].sum() + m.shift[sp].sum()) + zbl
        assert physics.predict(m, [d])["energy"][0] == pytest.approx(expected, abs=1e-9)


def test_data_reference_is_each_pairs_shortest_training_distance(bundled_acac):
    """closest_pairs against brute force; a trained module's core sits below every training
    edge (weight exactly 1 on all of them)."""
    from mlip.data.readers import iter_structures
    from mlip.graph.build import atoms_to_batch
    from mlip.graph.stats import closest_pairs

    frames = ase.io.read(bundled_acac / "train_300K.xyz", ":20")
    found: dict = {}
    for s in list(iter_structures(bundled_acac / "train_300K.xyz"))[:20]:
        for k, d in closest_pairs(s, 5.0).items():
            found[k] = min(d, found.get(k, d))
    brute: dict = {}
    for a in frames:
        d = a.get_all_distances()
        for i in range(len(a)):
            for j in range(len(a)):
                if i != j and d[i, j] < 5.0:
                    k = tuple(sorted((int(a.numbers[i]), int(a.numbers[j]))))
                    brute[k] = min(d[i, j], brute.get(k, d[i, j]))
    assert found.keys() == brute.keys()
    assert all(found[k] == pytest.approx(brute[k], abs=1e-12) for k in brute)
    m = model({"inner": 0.5, "outer": 0.85, "reference": "data"})
    m.repulsion.set_reference(found, 5.0)
    data = atoms_to_batch(frames, 5.0, dtype=torch.float64)
    from mlip.data import keys
    from mlip.graph.edges import edge_vectors

    vec = edge_vectors(data[keys.POSITIONS], data[keys.EDGE_INDEX], data[keys.CELL_SHIFTS],
                       data[keys.CELL], data[keys.BATCH])
    species = m.species_of(data[keys.ATOMIC_NUMBERS])
    w = m.repulsion.learned_weights(vec.norm(dim=-1), species, data[keys.EDGE_INDEX])
    assert torch.all(w == 1.0)


def test_data_reference_must_be_set_before_use():
    m = model({"reference": "data", "inner": 0.5, "outer": 0.85})
    atoms = ase.Atoms("CH", positions=[[0, 0, 0], [0, 0, 1.1]])
    with pytest.raises(RuntimeError, match="no reference distances"):
        physics.predict(m, [atoms])
    m.repulsion.set_reference({(1, 6): 1.0}, 5.0)
    assert np.isfinite(physics.predict(m, [atoms])["energy"][0])
