"""tools/make_xtb_dataset.py: the multi-molecule GFN2-xTB set."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import ase.io
import numpy as np
import pytest

pytest.importorskip("tblite", reason="tblite is part of mlip[dev]")

TOOL = Path(__file__).resolve().parents[2] / "tools" / "make_xtb_dataset.py"
MOLECULES = "CH4,H2O,C2H6,CH3OH,HCOOH,NH3"


def load_tool():
    spec = importlib.util.spec_from_file_location("make_xtb_dataset", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    tool = load_tool()
    out = tmp_path_factory.mktemp("xtb") / "set"
    tool.main(["--out", str(out), "--molecules", MOLECULES, "--frames", "10", "--workers", "1",
               "--test-molecules", "0.34"])
    return tool, out


def test_files_splits_and_labels(dataset):
    tool, out = dataset
    manifest = json.loads((out / "manifest.json").read_text())
    files = {k: ase.io.read(out / f"{k}.xyz", ":") for k in
             ("train", "val", "test_frames", "test_molecules", "isolated_atoms")}
    assert {k: len(v) for k, v in files.items()} == manifest["counts"]
    assert sum(len(v) for k, v in files.items() if k != "isolated_atoms") == 6 * 10 - manifest["failed_frames"]
    held = {a.info["molecule"] for a in files["test_molecules"]}
    seen = {a.info["molecule"] for k in ("train", "val", "test_frames") for a in files[k]}
    assert held == set(manifest["molecules"]["test_molecules"]) and len(held) == 2
    assert not held & seen and held | seen == set(MOLECULES.split(","))
    assert {a.info["sampling"] for a in files["train"]} == {"md", "displace"}
    # The labels are GFN2-xTB at the documented settings: recompute two frames.
    for frame in (files["train"][0], files["test_molecules"][-1]):
        fresh = tool._label(ase.Atoms(frame.numbers, frame.positions), tool._calculator())
        assert fresh.get_potential_energy() == pytest.approx(frame.get_potential_energy(), abs=1e-6)
        np.testing.assert_allclose(fresh.get_forces(), frame.get_forces(), atol=5e-4)  # SCF restart noise
    # Isolated atoms in their ground-state multiplicity, one per element of the data.
    assert sorted(int(a.numbers[0]) for a in files["isolated_atoms"]) == [1, 6, 7, 8]
    assert {int(a.numbers[0]): a.info["multiplicity"] for a in files["isolated_atoms"]} == {1: 2, 6: 3, 7: 4, 8: 3}
    # Distorted but physical: bound relative to the free atoms, forces of a few eV/Å.
    e0 = {int(a.numbers[0]): a.get_potential_energy() for a in files["isolated_atoms"]}
    for a in files["train"]:
        assert a.get_potential_energy() < sum(e0[int(z)] for z in a.numbers)
        assert np.abs(a.get_forces()).max() < 50.0


def test_deterministic_and_refuses_existing_output(dataset, tmp_path):
    tool, out = dataset
    again = tmp_path / "again"
    tool.main(["--out", str(again), "--molecules", MOLECULES, "--frames", "10", "--workers", "1",
               "--test-molecules", "0.34"])
    for name in ("train", "test_molecules"):
        a = ase.io.read(out / f"{name}.xyz", ":")
        b = ase.io.read(again / f"{name}.xyz", ":")
        # same frames; in-process tblite may use several OpenMP threads (last-digit noise)
        np.testing.assert_allclose([f.get_potential_energy() for f in a],
                                   [f.get_potential_energy() for f in b], rtol=0, atol=1e-8)
        np.testing.assert_allclose(np.concatenate([f.positions for f in a]),
                                   np.concatenate([f.positions for f in b]), rtol=0, atol=1e-8)
    with pytest.raises(SystemExit, match="exists"):
        tool.main(["--out", str(again), "--molecules", "CH4"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again"]  # no temporary folder left


def test_eligible_molecules_are_closed_shell():
    tool = load_tool()
    names = tool.select_molecules({"H", "C", "N", "O"}, None)
    assert len(names) == 58 and "CH3" not in names and "CH4" in names
    with pytest.raises(SystemExit, match="not in ASE's g2"):
        tool.select_molecules({"H"}, ["unobtainium"])
