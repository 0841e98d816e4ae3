"""Corrupt datasets: truncated and byte-flipped LMDB files are refused
with a clear error when opened or read, never decoded into other numbers and never a
crash (SIGBUS/SIGSEGV) of the reading process."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from mlip.cli.main import main
from mlip.data.lmdb import LmdbDataset, LmdbFormatError
from mlip.data.lmdb_writer import LmdbWriter, write_metadata
from mlip.data.structure import Structure


def _dataset(path: Path, n: int = 60) -> list[Structure]:
    rng = np.random.default_rng(0)
    structures = [
        Structure(numbers=rng.integers(1, 9, size=12), positions=rng.normal(size=(12, 3)) * 3,
                  energy=float(rng.normal()), forces=rng.normal(size=(12, 3)), frame=i)
        for i in range(n)
    ]
    with LmdbWriter(path) as writer:
        for s in structures:
            writer.add(s)
    write_metadata(path, "statistics/test", {"scale": 1.25, "e0s": {"1": -13.6}})
    return structures


@pytest.mark.parametrize("fraction", [0.0, 0.01, 0.3, 0.7, 0.99])
def test_truncated_file_is_refused_on_open(tmp_path: Path, fraction: float, capsys) -> None:
    full = tmp_path / "full.lmdb"
    _dataset(full)
    cut = tmp_path / "cut.lmdb"
    shutil.copy(full, cut)
    with open(cut, "r+b") as fh:
        fh.truncate(int(os.path.getsize(full) * fraction))
    with pytest.raises(LmdbFormatError, match="cut.lmdb"):
        len(LmdbDataset(cut))
    assert main(["data", "info", str(cut)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(cut) in err, err


def test_flipped_metadata_and_header_bytes_are_detected(tmp_path: Path) -> None:
    path = tmp_path / "d.lmdb"
    _dataset(path, n=3)
    data = path.read_bytes()
    for needle, what in ((b'"scale": 1.25', "metadata"), (b'"count": 3', "__header__")):
        broken = tmp_path / f"flip-{what}.lmdb"
        flipped = bytearray(data)
        at = data.find(needle)
        while at >= 0:  # every copy (stale pages of earlier transactions hold some)
            flipped[at + len(needle) - 1] ^= 0x01  # the last digit: still valid JSON
            at = data.find(needle, at + 1)
        broken.write_bytes(bytes(flipped))
        dataset = LmdbDataset(broken)
        with pytest.raises(LmdbFormatError, match=f"{what}.*checksum"):
            assert dataset.header
            dataset.metadata("statistics/test")
        dataset.close()


_FLIPPER = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    from mlip.data.lmdb import LmdbDataset, LmdbFormatError

    src, work, n_flips = sys.argv[1], sys.argv[2], int(sys.argv[3])
    reference = LmdbDataset(src)
    good = [reference[i] for i in range(len(reference))]
    meta = reference.metadata("statistics/test")
    reference.close()
    data = open(src, "rb").read()
    rng = np.random.default_rng(0)
    outcome = {"error": 0, "identical": 0, "changed": []}
    for k in range(n_flips):
        pos = int(rng.integers(len(data)))
        flipped = bytearray(data)
        flipped[pos] ^= 1 << int(rng.integers(8))
        path = f"{work}/flip{k}.lmdb"  # a new name: no cached environment
        open(path, "wb").write(bytes(flipped))
        dataset = LmdbDataset(path)
        try:
            got = [dataset[i] for i in range(len(dataset))]
            got_meta = dataset.metadata("statistics/test")
        except LmdbFormatError:
            outcome["error"] += 1
        else:
            same = len(got) == len(good) and got_meta == meta and all(
                a.energy == b.energy and np.array_equal(a.numbers, b.numbers)
                and np.array_equal(a.positions, b.positions)
                and np.array_equal(a.forces, b.forces) for a, b in zip(got, good))
            if same:
                outcome["identical"] += 1
            else:
                outcome["changed"].append(pos)
        dataset.close()
    print(json.dumps(outcome))
    """
)


def test_byte_flips_give_an_error_or_the_original_data(tmp_path: Path) -> None:
    """Flip one random bit at 300 random offsets (pages of records, B-tree, header, meta,
    free space): each copy either reads back identical or raises LmdbFormatError. Runs in
    a subprocess so that a crash of the reader would fail the test instead of pytest."""
    src = tmp_path / "src.lmdb"
    _dataset(src)
    work = tmp_path / "work"
    work.mkdir()
    proc = subprocess.run(
        [sys.executable, "-c", _FLIPPER, str(src), str(work), "300"],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    outcome = json.loads(proc.stdout.strip().splitlines()[-1])
    assert outcome["changed"] == [], outcome
    assert outcome["error"] > 0 and outcome["error"] + outcome["identical"] == 300
