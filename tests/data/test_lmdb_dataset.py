"""LMDB writer and dataset: bit-exact round trips, header, workers, map growth, atomicity."""

from __future__ import annotations

import os
from pathlib import Path

import lmdb
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from mlip import __version__
from mlip.data.lmdb import SCHEMA_VERSION, LmdbDataset, LmdbFormatError, split_indices
from mlip.data.lmdb_writer import LmdbWriter, write_metadata
from mlip.data.readers import iter_structures

torch.set_num_threads(1)


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def _write(path: Path, structures, **kwargs) -> None:
    with LmdbWriter(path, **kwargs) as writer:
        for s in structures:
            writer.add(s)


@pytest.mark.parametrize(
    ("folder", "relpath"),
    [("bundled_acac", "train_300K.xyz"), ("tiny", "cu_emt_10.xyz")],
    ids=["acac", "cu_emt"],
)
def test_round_trip_bit_exact(
    tmp_path: Path, request: pytest.FixtureRequest, folder: str, relpath: str, assert_identical
) -> None:
    originals = list(iter_structures(request.getfixturevalue(folder) / relpath))
    out = tmp_path / "out.lmdb"
    _write(out, originals)
    assert _leftovers(tmp_path) == ["out.lmdb"]
    dataset = LmdbDataset(out)
    assert len(dataset) == len(originals)
    for original, stored in zip(originals, dataset, strict=True):
        assert_identical(original, stored)
    if "cu_emt" in relpath:
        assert all(s.stress is not None for s in dataset)
    assert_identical(dataset[-1], originals[-1])
    with pytest.raises(IndexError):
        dataset[len(originals)]


def test_round_trip_random_structures(tmp_path: Path, random_structure, assert_identical) -> None:
    originals = [random_structure(seed=i, n=1 + i, labels=i % 2 == 0) for i in range(6)]
    _write(tmp_path / "r.lmdb", originals)
    dataset = LmdbDataset(tmp_path / "r.lmdb")
    for original, stored in zip(originals, dataset, strict=True):
        assert_identical(original, stored)
    assert stored.config_type == "dimer_ü" and stored.charge == -1.0
    assert stored.spin_multiplicity == 3.0


def test_header(tmp_path: Path, tiny: Path) -> None:
    acac = list(iter_structures(tiny / "acac_20.xyz"))
    cu = list(iter_structures(tiny / "cu_emt_10.xyz"))
    no_forces = list(iter_structures(tiny / "no_forces.xyz"))
    structures = acac + cu + no_forces
    out = tmp_path / "h.lmdb"
    _write(out, structures, key_mapping={"energy": "REF_energy", "forces": None, "stress": None})
    header = LmdbDataset(out).header
    assert header["format"] == "mlip-lmdb" and header["schema_version"] == SCHEMA_VERSION
    assert header["count"] == 33
    assert header["elements"] == [1, 6, 8, 29]
    assert header["atoms_per_element"] == {"1": 8 * 23, "6": 5 * 23, "8": 2 * 23, "29": 1078}
    assert header["atoms_per_structure"] == {
        "min": 15,
        "mean": pytest.approx(1423 / 33),
        "max": 108,
    }
    assert header["labels"] == {"energy": 33, "forces": 30, "stress": 10}
    assert header["units"] == {
        "energy": "eV",
        "forces": "eV/Å",
        "stress": "eV/Å^3",
        "positions": "Å",
    }
    assert header["key_mapping"]["energy"] == "REF_energy"
    assert header["creator"] == f"mlip {__version__}"
    assert header["created"].endswith("Z")
    assert header["sources"] == [
        str(tiny / f) for f in ("acac_20.xyz", "cu_emt_10.xyz", "no_forces.xyz")
    ]
    energies = np.array([s.energy for s in structures])
    stats = header["label_statistics"]
    assert stats["energy"]["mean"] == pytest.approx(energies.mean(), rel=1e-12)
    assert stats["energy"]["std"] == pytest.approx(energies.std(), rel=1e-9)
    per_atom = energies / np.array([s.num_atoms for s in structures])
    assert stats["energy_per_atom"]["min"] == per_atom.min()
    forces = np.concatenate([s.forces.ravel() for s in structures if s.forces is not None])
    assert stats["forces"]["rms"] == pytest.approx(np.sqrt(np.mean(forces**2)), rel=1e-12)
    assert stats["forces"]["max_abs_component"] == np.abs(forces).max()
    stress = np.stack([s.stress for s in cu])
    assert stats["stress"]["rms"] == pytest.approx(np.sqrt(np.mean(stress**2)), rel=1e-12)


def _read_batch(batch: list) -> list:
    return batch


def test_dataloader_workers_read_everything_once(
    tmp_path: Path, tiny: Path, assert_identical
) -> None:
    originals = list(iter_structures(tiny / "acac_20.xyz"))
    out = tmp_path / "w.lmdb"
    _write(out, originals)
    dataset = LmdbDataset(out)
    assert len(dataset) == 20 and dataset[0].frame == 0  # parent opens the env before forking
    loader = DataLoader(
        dataset,
        batch_size=3,
        shuffle=True,
        num_workers=2,
        collate_fn=_read_batch,
        multiprocessing_context="fork",
        generator=torch.Generator().manual_seed(0),
    )
    seen = [s for batch in loader for s in batch]
    assert sorted(s.frame for s in seen) == list(range(20))
    for s in seen:
        assert_identical(s, originals[s.frame])


def test_map_grows_when_full(tmp_path: Path, random_structure) -> None:
    big = [random_structure(seed=i, n=400) for i in range(20)]  # ~ 20 x 25 kB
    out = tmp_path / "grow.lmdb"
    with LmdbWriter(out, map_size=64 * 1024, commit_every=7) as writer:
        for s in big:
            writer.add(s)
        writer.set_metadata("blob", {"x": list(range(20000))})
    dataset = LmdbDataset(out)
    assert len(dataset) == 20
    assert np.array_equal(dataset[19].positions, big[19].positions)
    assert dataset.metadata("blob")["x"][-1] == 19999
    dataset.close()
    assert os.path.getsize(out) > 64 * 1024
    with lmdb.open(str(out), subdir=False, readonly=True, lock=False) as env:
        assert env.info()["map_size"] > 64 * 1024
    assert _leftovers(tmp_path) == ["grow.lmdb"]


def test_exception_mid_stream_leaves_nothing(tmp_path: Path, random_structure) -> None:
    out = tmp_path / "broken.lmdb"
    with pytest.raises(RuntimeError, match="boom"), LmdbWriter(out, commit_every=2) as writer:
        for i in range(5):
            writer.add(random_structure(seed=i))
        assert any(p.name.startswith("broken.lmdb.partial-") for p in tmp_path.iterdir())
        raise RuntimeError("boom")
    assert _leftovers(tmp_path) == []


def test_refuses_existing_output_unless_overwrite(tmp_path: Path, random_structure) -> None:
    out = tmp_path / "o.lmdb"
    _write(out, [random_structure(seed=0)])
    with pytest.raises(FileExistsError, match="o.lmdb"):
        _write(out, [random_structure(seed=1)])
    _write(out, [random_structure(seed=1), random_structure(seed=2)], overwrite=True)
    assert len(LmdbDataset(out)) == 2
    assert _leftovers(tmp_path) == ["o.lmdb"]


def test_metadata(tmp_path: Path, random_structure) -> None:
    out = tmp_path / "m.lmdb"
    _write(out, [random_structure()])
    dataset = LmdbDataset(out)
    assert dataset.metadata("statistics/split=train/cutoff=5") is None
    write_metadata(out, "statistics/split=train/cutoff=5", {"e0s": {"1": -13.6}})
    write_metadata(out, "other", {"a": 1})
    write_metadata(out, "other", {"a": 2})
    assert dataset.metadata("other") == {"a": 2}  # an open dataset sees the new blobs
    dataset = LmdbDataset(out)
    assert dataset.metadata("statistics/split=train/cutoff=5") == {"e0s": {"1": -13.6}}
    assert dataset.metadata_names() == ["other", "statistics/split=train/cutoff=5"]
    assert len(dataset) == 1


def test_not_an_mlip_lmdb(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.lmdb"
    garbage.write_bytes(os.urandom(8192))
    with pytest.raises(LmdbFormatError, match="garbage.lmdb is not an LMDB file"):
        len(LmdbDataset(garbage))
    plain = tmp_path / "plain.lmdb"
    with lmdb.open(str(plain), subdir=False, lock=False) as env, env.begin(write=True) as txn:
        txn.put(b"a", b"b")
    with pytest.raises(LmdbFormatError, match="not an mlip dataset"):
        len(LmdbDataset(plain))
    with pytest.raises(FileNotFoundError, match="missing.lmdb"):
        len(LmdbDataset(tmp_path / "missing.lmdb"))


def test_newer_schema_is_refused(tmp_path: Path, random_structure) -> None:
    out = tmp_path / "new.lmdb"
    writer = LmdbWriter(out)
    writer.header = lambda: {"format": "mlip-lmdb", "schema_version": SCHEMA_VERSION + 1}
    with writer:
        writer.add(random_structure())
    with pytest.raises(LmdbFormatError, match="newer than this mlip reads"):
        len(LmdbDataset(out))


def test_split_indices() -> None:
    train, val = split_indices(100, val_fraction=0.1, seed=3)
    assert len(val) == 10 and len(train) == 90
    assert not set(train) & set(val)
    assert sorted([*train, *val]) == list(range(100))
    again = split_indices(100, val_fraction=0.1, seed=3)
    assert np.array_equal(again[0], train) and np.array_equal(again[1], val)
    other = split_indices(100, val_fraction=0.1, seed=4)
    assert not np.array_equal(other[1], val)
    assert len(split_indices(100, val_size=7, seed=0)[1]) == 7
    assert len(split_indices(5, val_fraction=0.01)[1]) == 1
    with pytest.raises(ValueError, match="exactly one"):
        split_indices(10)
    with pytest.raises(ValueError, match="no training data"):
        split_indices(3, val_size=3)
