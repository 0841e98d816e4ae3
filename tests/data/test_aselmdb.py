"""fairchem ASE-LMDB input (.aselmdb, the OMol25/OMat24 format), read natively.

The files are written here, two ways: rows encoded the way fairchem's writer does it (plain
JSON lists, zlib) by a few lines below, and through ase-db-backends' own writer."""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import lmdb
import numpy as np
import pytest
from ase.build import bulk, molecule
from ase.calculators.emt import EMT

from mlip.cli.main import main
from mlip.data.convert import convert
from mlip.data.lmdb import LmdbDataset
from mlip.data.structure import InvalidStructureError


def _systems(n: int = 6) -> list[dict]:
    """Rows as (atoms, labels, data): charged/spin molecules and periodic Cu with stress."""
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        if i % 3 == 2:
            atoms = bulk("Cu", "fcc", a=3.6, cubic=True) * (2, 1, 1)
            atoms.rattle(0.05, seed=i)
            atoms.calc = EMT()
            labels = {"energy": atoms.get_potential_energy(), "forces": atoms.get_forces(),
                      "stress": atoms.get_stress()}
            data = {}
        else:
            atoms = molecule("CH3OH")
            atoms.positions += rng.normal(scale=0.02, size=atoms.positions.shape)
            labels = {"energy": -100.0 - i, "forces": rng.normal(size=(len(atoms), 3))}
            data = {"charge": i % 2, "spin": 1 + i % 2}
        out.append({"atoms": atoms, "labels": labels, "data": data})
    return out


def _write_fairchem_style(path: Path, systems: list[dict], delete: tuple[int, ...] = ()) -> None:
    """Rows as fairchem's LMDBDatabase writes them: zlib(JSON) with arrays as plain lists."""
    env = lmdb.open(str(path), subdir=False, map_size=2**24, lock=False)
    with env.begin(write=True) as txn:
        for i, system in enumerate(systems, start=1):
            atoms = system["atoms"]
            row = {"numbers": atoms.numbers.tolist(), "positions": atoms.positions.tolist(),
                   "cell": atoms.cell.array.tolist(), "pbc": atoms.pbc.tolist(),
                   "unique_id": f"u{i}", "mtime": 1.0, "ctime": 1.0, "user": "test",
                   "calculator": "unknown", "calculator_parameters": {},
                   "data": system["data"]}
            row.update({k: np.asarray(v).tolist() for k, v in system["labels"].items()})
            if i in delete:
                continue
            txn.put(str(i).encode(), zlib.compress(json.dumps(row).encode()))
        txn.put(b"nextid", zlib.compress(json.dumps(len(systems) + 1).encode()))
        txn.put(b"deleted_ids", zlib.compress(json.dumps(list(delete)).encode()))
        txn.put(b"metadata", zlib.compress(json.dumps({"note": "test"}).encode()))
    env.close()


def _check(dataset: LmdbDataset, systems: list[dict]) -> None:
    assert len(dataset) == len(systems)
    for s, system in zip(dataset, systems, strict=True):
        atoms, labels = system["atoms"], system["labels"]
        np.testing.assert_array_equal(s.numbers, atoms.numbers)
        np.testing.assert_allclose(s.positions, atoms.positions, rtol=0, atol=1e-12)
        assert s.energy == pytest.approx(labels["energy"], abs=1e-12)
        np.testing.assert_allclose(s.forces, labels["forces"], atol=1e-12)
        if "stress" in labels:
            assert s.periodic
            np.testing.assert_allclose(s.cell, atoms.cell.array, atol=1e-12)
            voigt = s.stress[[0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1]]
            np.testing.assert_allclose(voigt, labels["stress"], atol=1e-12)
        else:
            assert s.stress is None and not s.periodic
        assert s.charge == system["data"].get("charge", 0)
        assert s.spin_multiplicity == system["data"].get("spin", 1)


def test_fairchem_rows_keep_labels_charge_and_spin(tmp_path: Path) -> None:
    systems = _systems()
    src = tmp_path / "data.aselmdb"
    _write_fairchem_style(src, systems, delete=(2,))
    report = convert([src], tmp_path / "out.lmdb", progress=False)
    kept = [s for i, s in enumerate(systems, start=1) if i != 2]  # id 2 was deleted
    assert report.written == len(kept)
    dataset = LmdbDataset(tmp_path / "out.lmdb")
    _check(dataset, kept)
    assert [s.frame for s in dataset] == list(range(len(kept)))  # positions among live rows


def test_ase_db_backends_writer(tmp_path: Path) -> None:
    pytest.importorskip("ase_db_backends", reason="ase-db-backends (mlip[dev]) not installed")
    import ase.db
    from ase.calculators.singlepoint import SinglePointCalculator

    systems = _systems()
    src = tmp_path / "ase.aselmdb"
    db = ase.db.connect(src)
    for system in systems:
        atoms = system["atoms"].copy()
        atoms.calc = SinglePointCalculator(atoms, **system["labels"])
        db.write(atoms, data=system["data"])
    db.close()
    convert([src], tmp_path / "out.lmdb", progress=False)
    _check(LmdbDataset(tmp_path / "out.lmdb"), systems)


def test_folder_of_files_and_workers_give_identical_output(tmp_path: Path, capsys) -> None:
    systems = _systems(12)
    folder = tmp_path / "omol"
    folder.mkdir()
    _write_fairchem_style(folder / "b.aselmdb", systems[6:])
    _write_fairchem_style(folder / "a.aselmdb", systems[:6])
    (folder / "README.txt").write_text("not data")
    outs = []
    for workers in (1, 2):
        out = tmp_path / f"w{workers}.lmdb"
        assert main(["data", "convert", str(folder), "-o", str(out), "--workers", str(workers),
                     "--no-progress", "--cutoff", "4.0"]) == 0
        outs.append(LmdbDataset(out))
    assert "wrote 12 frames" in capsys.readouterr().out
    _check(outs[0], systems)  # a.aselmdb first: sorted by name
    assert list(outs[0].iter_raw()) == list(outs[1].iter_raw())
    name = "statistics/split=all/cutoff=4"
    a, b = outs[0].metadata(name), outs[1].metadata(name)
    assert a["num_structures"] == b["num_structures"] == 12
    assert a["avg_num_neighbors"] == b["avg_num_neighbors"]
    assert a["e0s"] == pytest.approx(b["e0s"], rel=1e-9)


def _corrupt_row(path: Path, row_id: int) -> None:
    env = lmdb.open(str(path), subdir=False, map_size=2**24, lock=False)
    with env.begin(write=True) as txn:
        txn.put(str(row_id).encode(), b"\x80\x04not zlib, not json")
    env.close()


def test_broken_row_is_one_line_and_skipping_continues_past_it(tmp_path: Path, capsys) -> None:
    systems = _systems()
    src = tmp_path / "bad.aselmdb"
    _write_fairchem_style(src, systems)
    _corrupt_row(src, 3)
    out = tmp_path / "out.lmdb"
    with pytest.raises(InvalidStructureError, match=r"bad\.aselmdb, frame 2: undecodable row"):
        convert([src], out, progress=False)
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["bad.aselmdb"]
    assert main(["data", "convert", str(src), "-o", str(out), "--skip-invalid", "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert "skipped 1" in captured.out and "frame 2" in captured.err
    assert [s.frame for s in LmdbDataset(out)] == [0, 1, 3, 4, 5]


def test_not_an_ase_lmdb(tmp_path: Path, capsys) -> None:
    src = tmp_path / "x.aselmdb"
    src.write_bytes(b"plain text, no LMDB")
    assert main(["data", "convert", str(src), "-o", str(tmp_path / "o.lmdb")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "x.aselmdb" in err and "LMDB" in err
