"""tools/make_xtb_clusters.py: condensed-phase xTB frames of one molecule."""

from __future__ import annotations

import json
from pathlib import Path

import ase.io
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
ACAC = ROOT / "data" / "acac" / "train_300K.xyz"



def _distances(x: np.ndarray) -> np.ndarray:
    return np.linalg.norm(x[:, None] - x[None], axis=-1)


@pytest.fixture(scope="module")
def acac():
    frames = ase.io.read(ACAC, ":40")
    return frames[0].numbers, np.stack([a.positions for a in frames])


def _is_a_source_geometry(x: np.ndarray, geometries: np.ndarray) -> bool:
    d = _distances(x)
    return any(np.allclose(d, _distances(g), atol=1e-6) for g in geometries)


def test_dimer_contact_distance_and_rigid_molecules(acac, load_tool):
    tool = load_tool("make_xtb_clusters")
    _, geometries = acac
    rng = np.random.default_rng(3)
    contacts = []
    for _ in range(20):
        x = tool.make_dimer(geometries, 1.6, 5.0, rng)
        a, b = x[:15], x[15:]
        contacts.append(tool._min_distance(a, b))
        assert _is_a_source_geometry(a, geometries) and _is_a_source_geometry(b, geometries)
    contacts = np.array(contacts)
    assert contacts.min() >= 1.6 - 1e-6 and contacts.max() <= 5.0 + 1e-6
    assert contacts.max() - contacts.min() > 1.5  # spread over the range, not one distance


def test_clusters_are_first_shells_of_whole_molecules(acac, load_tool):
    tool = load_tool("make_xtb_clusters")
    numbers, geometries = acac
    clusters = tool.make_clusters(geometries, numbers, count=8, density=1.0, contact=2.0,
                                  shell=3.0, per_box=3, seed=1)
    assert len(clusters) == 3
    for x in clusters:
        assert len(x) % 15 == 0 and len(x) >= 30
        molecules = x.reshape(-1, 15, 3)
        core = molecules[0]
        np.testing.assert_allclose(core.mean(0), 0.0, atol=1e-9)
        for m in molecules:
            assert _is_a_source_geometry(m, geometries)
        for m in molecules[1:]:  # every member touches the centre molecule within the shell
            assert tool._min_distance(core, m) < 3.0
        # no molecule overlaps another: the packing's contacts only loosen by thermal motion
        for i in range(len(molecules)):
            for j in range(i):
                assert tool._min_distance(molecules[i], molecules[j]) > 0.9


def test_end_to_end_labels_splits_and_refusals(tmp_path, load_tool):
    pytest.importorskip("tblite", reason="tblite is part of mlip[dev]")
    tool = load_tool("make_xtb_clusters")
    out = tmp_path / "set"
    args = ["--molecule", str(ACAC), "--out", str(out), "--monomers", "3", "--dimers", "3",
            "--clusters", "2", "--box-count", "8", "--per-box", "2", "--shell", "2.6",
            "--val-fraction", "0.2", "--test-fraction", "0.2", "--workers", "1"]
    tool.main(args)
    manifest = json.loads((out / "manifest.json").read_text())
    files = {k: ase.io.read(out / f"{k}.xyz", ":") for k in ("train", "val", "test", "isolated_atoms")}
    assert {k: len(v) for k, v in files.items()} == manifest["counts"]
    frames = files["train"] + files["val"] + files["test"]
    assert len(frames) == 8 - manifest["failed_frames"]
    assert manifest["failed_frames"] == 0  # acac near equilibrium: every SCF converges
    kinds = [a.info["config_type"] for a in frames]
    assert {k: kinds.count(k) for k in set(kinds)} == {"monomer": 3, "dimer": 3, "cluster": 2}
    assert all(len(a) == 15 * a.info["n_molecules"] for a in frames)
    assert all(a.info["n_molecules"] >= 2 for a in frames if a.info["config_type"] == "cluster")
    assert sorted(int(a.numbers[0]) for a in files["isolated_atoms"]) == [1, 6, 8]
    xtb = tool._tool("make_xtb_dataset")
    fresh = xtb._label(ase.Atoms(frames[0].numbers, frames[0].positions), xtb._calculator())
    assert fresh.get_potential_energy() == pytest.approx(frames[0].get_potential_energy(), abs=1e-6)
    e0 = {int(a.numbers[0]): a.get_potential_energy() for a in files["isolated_atoms"]}
    for a in frames:  # bound, with forces of a few eV/Å
        assert a.get_potential_energy() < sum(e0[int(z)] for z in a.numbers)
        assert np.abs(a.get_forces()).max() < 50.0
    with pytest.raises(SystemExit, match="exists"):
        tool.main(args)
    mixed = tmp_path / "mixed.xyz"
    ase.io.write(mixed, [ase.io.read(ACAC, 0), ase.Atoms("H2O", positions=np.eye(3))])
    with pytest.raises(SystemExit, match="frame 1 of .*mixed.xyz"):
        tool.main(["--molecule", str(mixed), "--out", str(tmp_path / "other"), "--workers", "1"])
    assert not (tmp_path / "other").exists()
