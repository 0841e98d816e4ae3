"""Dataset statistics (E0s, scales, neighbors) against direct numpy computations."""

from __future__ import annotations

import json
from pathlib import Path

import ase.io
import numpy as np
import pytest
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator

from mlip.data.readers import iter_structures
from mlip.data.stats import (
    DatasetStatistics,
    MissingE0Error,
    compute_statistics,
    e0s_from_file,
    fit_e0s_least_squares,
    statistics_key,
)
from mlip.data.structure import Structure


@pytest.fixture(scope="module")
def acac_train(bundled_acac: Path) -> list:
    return list(iter_structures(bundled_acac / "train_300K.xyz"))


def _reference_isolated_energies(path: Path) -> dict[int, float]:
    return {int(a.numbers[0]): a.get_potential_energy() for a in ase.io.read(path, ":")}


def test_e0s_from_file(bundled_acac: Path) -> None:
    path = bundled_acac / "isolated_atoms.xyz"
    e0s = e0s_from_file(path)
    assert e0s == _reference_isolated_energies(path)
    assert list(e0s) == [1, 6, 8]


def test_e0_file_must_hold_single_atoms(tmp_path: Path, tiny: Path) -> None:
    with pytest.raises(ValueError, match=r"acac_20\.xyz, frame 0: .*has 15"):
        e0s_from_file(tiny / "acac_20.xyz")
    bare = tmp_path / "bare.xyz"
    ase.io.write(bare, Atoms("H"))
    with pytest.raises(ValueError, match=r"bare\.xyz, frame 0: isolated atom has no energy"):
        e0s_from_file(bare)


def test_statistics_with_file_e0s_match_numpy(bundled_acac: Path, acac_train: list) -> None:
    e0_path = bundled_acac / "isolated_atoms.xyz"
    e0 = _reference_isolated_energies(e0_path)
    stats = compute_statistics(acac_train, e0s=e0s_from_file(e0_path))

    frames = ase.io.read(bundled_acac / "train_300K.xyz", ":")
    energies = np.array([a.get_potential_energy() for a in frames])
    e0_sum = np.array([sum(e0[z] for z in a.numbers) for a in frames])
    natoms = np.array([len(a) for a in frames])
    per_atom = (energies - e0_sum) / natoms
    forces = np.concatenate([a.get_forces().ravel() for a in frames])

    assert stats.e0_method == "file" and stats.e0s == e0
    assert stats.num_structures == 500
    assert stats.energy_per_atom_mean == pytest.approx(per_atom.mean(), rel=1e-10)
    assert stats.energy_per_atom_rms == pytest.approx(np.sqrt(np.mean(per_atom**2)), rel=1e-10)
    assert stats.force_rms == pytest.approx(np.sqrt(np.mean(forces**2)), rel=1e-12)
    assert stats.avg_num_neighbors is None and stats.cutoff is None


def test_least_squares_e0s_match_numpy(acac_train: list, tiny: Path) -> None:
    cu = list(iter_structures(tiny / "cu_emt_10.xyz"))
    structures = acac_train + cu  # two compositions plus Cu; acac alone is rank-deficient
    species = [1, 6, 8, 29]
    a = np.array([[np.sum(s.numbers == z) for z in species] for s in structures], dtype=float)
    y = np.array([s.energy for s in structures])
    expected = np.linalg.lstsq(a, y, rcond=None)[0]

    e0s = fit_e0s_least_squares(iter(structures))
    assert list(e0s) == species
    np.testing.assert_allclose(list(e0s.values()), expected, rtol=1e-10, atol=1e-8)

    stats = compute_statistics(iter(structures))
    assert stats.e0_method == "least_squares"
    np.testing.assert_allclose(list(stats.e0s.values()), expected, rtol=1e-10, atol=1e-8)
    per_atom = (y - a @ expected) / a.sum(axis=1)
    assert stats.energy_per_atom_mean == pytest.approx(per_atom.mean(), abs=1e-9)
    assert stats.energy_per_atom_rms == pytest.approx(np.sqrt(np.mean(per_atom**2)), rel=1e-6)


def test_least_squares_on_one_molecule_is_minimum_norm(acac_train: list) -> None:
    species = [1, 6, 8]
    a = np.array([[np.sum(s.numbers == z) for z in species] for s in acac_train], dtype=float)
    y = np.array([s.energy for s in acac_train])
    expected = np.linalg.lstsq(a, y, rcond=None)[0]
    np.testing.assert_allclose(
        list(fit_e0s_least_squares(acac_train).values()), expected, rtol=1e-10
    )


def test_labels_missing_and_neighbor_counter() -> None:
    rng = np.random.default_rng(0)
    structures = [
        Structure(
            numbers=[1, 1], positions=rng.normal(size=(2, 3)), energy=-1.0, forces=np.ones((2, 3))
        ),
        Structure(numbers=[1, 8, 1], positions=rng.normal(size=(3, 3)), energy=-5.0),
        Structure(numbers=[8], positions=np.zeros((1, 3))),  # unlabelled: counts for neighbors only
    ]
    calls = []

    def counter(structure: Structure, cutoff: float) -> int:
        calls.append(cutoff)
        return structure.num_atoms * 2

    stats = compute_statistics(
        structures, e0s={1: -0.5, 8: -4.0}, cutoff=3.5, neighbor_counter=counter
    )
    assert calls == [3.5] * 3
    assert stats.avg_num_neighbors == 2.0 and stats.cutoff == 3.5
    assert stats.force_rms == 1.0
    assert stats.energy_per_atom_mean == pytest.approx(0.0)
    assert compute_statistics(structures[:1], e0s={1: 0.0}, cutoff=3.5).avg_num_neighbors is None
    with pytest.raises(ValueError, match="no structure has an energy"):
        compute_statistics(structures[2:])


def test_missing_e0_element_is_a_clear_error() -> None:
    s = Structure(numbers=[1, 7], positions=np.eye(2, 3), energy=1.0, source="x.xyz", frame=4)
    with pytest.raises(MissingE0Error, match=r"x\.xyz, frame 4: no E0 for N \(Z=7\)"):
        compute_statistics([s], e0s={1: -13.6})


def test_to_dict_round_trip_is_json_safe() -> None:
    stats = DatasetStatistics(
        e0s={8: -2041.5, 1: -13.6},
        e0_method="file",
        energy_per_atom_mean=0.1,
        energy_per_atom_rms=0.2,
        force_rms=1.5,
        avg_num_neighbors=12.25,
        cutoff=5.0,
        num_structures=10,
    )
    data = json.loads(json.dumps(stats.to_dict()))
    assert data["e0s"] == {"1": -13.6, "8": -2041.5}
    assert DatasetStatistics.from_dict(data) == stats
    assert statistics_key("train", 5.0) == "statistics/split=train/cutoff=5"
    assert statistics_key() == "statistics/split=all/cutoff=none"


def test_isolated_atoms_through_calculator_results(tmp_path: Path) -> None:
    atoms = Atoms("O")
    atoms.calc = SinglePointCalculator(atoms, energy=-2041.5)
    path = tmp_path / "iso.traj"
    ase.io.write(path, atoms)
    assert e0s_from_file(path) == {8: -2041.5}
