"""Reading structures with ASE: labels, key mapping, bad frames, other formats."""

from __future__ import annotations

from pathlib import Path

import ase.io
import numpy as np
import pytest
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator

from mlip.data.readers import FrameReadError, iter_structures
from mlip.data.structure import InvalidStructureError


def test_acac_frames(tiny: Path) -> None:
    path = tiny / "acac_20.xyz"
    structures = list(iter_structures(path))
    reference = ase.io.read(path, ":")
    assert len(structures) == 20
    for i, (s, atoms) in enumerate(zip(structures, reference, strict=True)):
        assert (s.source, s.frame, s.num_atoms) == (str(path), i, 15)
        assert s.energy == atoms.get_potential_energy()
        np.testing.assert_array_equal(s.forces, atoms.get_forces())
        np.testing.assert_array_equal(s.positions, atoms.positions)
        assert s.stress is None and not s.pbc.any()
        assert not s.cell.any()  # the dummy 50 Å box of a free molecule is dropped
        assert s.config_type == "300K_MD"
        assert (s.charge, s.spin_multiplicity) == (0.0, 1.0)


def test_cu_stress_is_3x3(tiny: Path) -> None:
    path = tiny / "cu_emt_10.xyz"
    s = next(iter_structures(path))
    atoms = ase.io.read(path, 0)
    np.testing.assert_allclose(s.stress, atoms.get_stress(voigt=False), rtol=0, atol=1e-15)
    np.testing.assert_array_equal(s.cell, atoms.cell.array)
    assert s.pbc.all() and s.stress.shape == (3, 3)


def test_no_forces_is_not_an_error(tiny: Path) -> None:
    structures = list(iter_structures(tiny / "no_forces.xyz"))
    assert len(structures) == 3
    assert all(s.forces is None and s.energy is not None for s in structures)


def test_nan_forces_fail_validation(tiny: Path) -> None:
    path = tiny / "nan_forces.xyz"
    frames = iter_structures(path)
    assert next(frames).frame == 0
    with pytest.raises(
        InvalidStructureError, match=r"nan_forces\.xyz, frame 1: forces contain NaN"
    ):
        next(frames)
    assert len(list(iter_structures(path, validate=False))) == 3


def test_malformed_frame_names_file_and_frame(tiny: Path) -> None:
    frames = iter_structures(tiny / "malformed.xyz")
    assert next(frames).frame == 0
    with pytest.raises(
        FrameReadError, match=r"malformed\.xyz, frame 1: .*9 atoms, expected 15"
    ) as e:
        next(frames)
    assert e.value.frame == 1


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.xyz"):
        next(iter_structures(tmp_path / "nope.xyz"))


def _labelled(n_frames: int = 3) -> list[Atoms]:
    rng = np.random.default_rng(0)
    frames = []
    for i in range(n_frames):
        atoms = Atoms("H2O", positions=rng.normal(size=(3, 3)), cell=np.eye(3) * 6, pbc=True)
        atoms.calc = SinglePointCalculator(
            atoms, energy=-1.0 - i, forces=rng.normal(size=(3, 3)), stress=rng.normal(size=6)
        )
        atoms.info.update(REF_energy=10.0 + i, total_charge=-1, spin=2, config_type="water")
        atoms.info["REF_stress"] = rng.normal(size=(3, 3))
        atoms.arrays["REF_forces"] = rng.normal(size=(3, 3))
        frames.append(atoms)
    return frames


def test_key_mapping_reads_info_and_arrays(tmp_path: Path) -> None:
    frames = _labelled()
    path = tmp_path / "mapped.xyz"
    ase.io.write(path, frames)
    default = list(iter_structures(path))
    mapped = list(iter_structures(path, "REF_energy", "REF_forces", "REF_stress"))
    for atoms, d, m in zip(frames, default, mapped, strict=True):
        assert d.energy == atoms.calc.results["energy"]
        assert m.energy == atoms.info["REF_energy"]
        # extxyz stores per-atom arrays with 8 decimals
        np.testing.assert_allclose(m.forces, atoms.arrays["REF_forces"], atol=1e-8)
        np.testing.assert_allclose(m.stress, atoms.info["REF_stress"])
        np.testing.assert_allclose(d.forces, atoms.calc.results["forces"], atol=1e-8)
        assert (m.charge, m.spin_multiplicity, m.config_type) == (-1.0, 2.0, "water")
    unknown = next(iter_structures(path, energy_key="no_such_key"))
    assert unknown.energy is None


@pytest.mark.parametrize("suffix", [".traj", ".db"])
def test_ase_traj_and_db(tmp_path: Path, suffix: str) -> None:
    frames = _labelled()
    path = tmp_path / f"frames{suffix}"
    ase.io.write(path, frames)
    structures = list(iter_structures(path))
    assert [s.frame for s in structures] == [0, 1, 2]
    for atoms, s in zip(frames, structures, strict=True):
        assert s.energy == atoms.calc.results["energy"]
        np.testing.assert_array_equal(s.forces, atoms.calc.results["forces"])
        np.testing.assert_allclose(s.stress, atoms.get_stress(voigt=False))
        np.testing.assert_array_equal(s.positions, atoms.positions)


def test_unconvertible_value_names_frame(tmp_path: Path) -> None:
    atoms = _labelled(1)[0]
    atoms.info["charge"] = "minus one"
    path = tmp_path / "bad_charge.traj"
    ase.io.write(path, atoms)
    with pytest.raises(InvalidStructureError, match=r"bad_charge\.traj, frame 0: charge"):
        next(iter_structures(path))


def test_broken_count_line_names_its_frame(tmp_path: Path, tiny: Path) -> None:
    good = (tiny / "acac_20.xyz").read_text()
    path = tmp_path / "bad_count.xyz"
    path.write_text(good + "abc\n" + good)
    with pytest.raises(FrameReadError, match=r"bad_count\.xyz, frame 20: .*Expected xyz header"):
        list(iter_structures(path))


def test_duplicate_check_paths_agree() -> None:
    """All-pairs (molecules up to 512 atoms) and cell-list (larger) duplicate checks find
    the same closest pair."""
    import numpy as np

    from mlip.data import structure as st

    rng = np.random.default_rng(0)
    pos = rng.uniform(0, 40, size=(600, 3))
    pos[417] = pos[23] + [0.05, 0.0, 0.0]
    big = st.closest_duplicate(pos, np.zeros((3, 3)), np.zeros(3, bool))
    assert big[:2] == (23, 417) and abs(big[2] - 0.05) < 1e-12
    small = pos[:500].copy()
    small[417] = small[23] + [0.5, 0.0, 0.0]  # (it is in the first 500 too)
    small[300] = small[23] + [0.0, 0.07, 0.0]
    found = st.closest_duplicate(small, np.zeros((3, 3)), np.zeros(3, bool))
    assert found[:2] == (23, 300) and abs(found[2] - 0.07) < 1e-12
    pos[417] = pos[23] + [0.5, 0.0, 0.0]
    assert st.closest_duplicate(pos, np.zeros((3, 3)), np.zeros(3, bool)) is None
    assert st.closest_duplicate(pos[:500], np.zeros((3, 3)), np.zeros(3, bool)) is None
