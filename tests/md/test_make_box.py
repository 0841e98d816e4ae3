"""tools/make_box.py: rigid molecules packed without intermolecular contacts."""

from __future__ import annotations

from pathlib import Path

import ase.io
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
ACAC = ROOT / "data" / "acac" / "train_300K.xyz"


def min_image_distances(atoms, i, j):
    d = atoms.positions[i] - atoms.positions[j]
    d -= atoms.cell.lengths() * np.round(d / atoms.cell.lengths())
    return np.linalg.norm(d, axis=-1)


def test_packed_box_has_no_contact_and_keeps_the_molecules_rigid(tmp_path, load_tool):
    out = tmp_path / "box.xyz"
    load_tool("make_box").main(["--molecule", str(ACAC), "--frame", "0", "--count", "12",
                                "--density", "0.8", "--min-distance", "2.0", "--out", str(out)])
    box = ase.io.read(out)
    mol = ase.io.read(ACAC, 0)
    n = len(mol)
    assert len(box) == 12 * n and box.pbc.all() and box.info["atoms_per_molecule"] == n
    mass = 12 * mol.get_masses().sum() / 6.02214076e23
    assert mass / (box.get_volume() * 1e-24) == pytest.approx(0.8, rel=1e-6)
    i, j = np.triu_indices(len(box), 1)
    inter = i // n != j // n
    assert min_image_distances(box, i[inter], j[inter]).min() >= 2.0
    ref = mol.get_all_distances()
    edge = box.cell.lengths()
    for k in range(12):  # unwrap each copy about its first atom (edge > 2x the molecule)
        x = box.positions[k * n:(k + 1) * n]
        x = x[0] + (x - x[0]) - edge * np.round((x - x[0]) / edge)
        d = np.linalg.norm(x[:, None] - x[None], axis=-1)
        np.testing.assert_allclose(d, ref, atol=1e-9)
    assert not (tmp_path / "box.xyz.tmp").exists()


def test_impossible_density_is_a_one_line_error(tmp_path, load_tool):
    out = tmp_path / "box.xyz"
    for density, scale in (("3.0", "1.5"), ("2.0", "3.0")):  # insertion / compression fails
        with pytest.raises(SystemExit, match="no contact-free packing|could not insert") as err:
            load_tool("make_box").main(["--molecule", str(ACAC), "--count", "8", "--density", density,
                                        "--start-scale", scale, "--min-distance", "2.5",
                                        "--max-moves", "2000", "--out", str(out)])
        message = str(err.value)
        assert message.startswith(f"error: {out}:") and "\n" not in message
    assert not out.exists()
