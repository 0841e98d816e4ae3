"""Benchmark `mlip data convert`: frames/s for extxyz -> LMDB, and LMDB read-back speed.

Usage::

    python tools/bench_convert.py                      # shared acac train_300K, cu_emt train
    python tools/bench_convert.py --repeat 3 FILE.xyz  # any files

Prints one table row per input: frames, atoms, best-of-``repeat`` conversion time and
throughput, the same for statistics in the same pass (``--cutoff``-style, without a
neighbor counter), and random-access read throughput of the resulting LMDB.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from mlip.data.convert import convert
from mlip.data.lmdb import LmdbDataset

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
DEFAULT_INPUTS = ("acac/train_300K.xyz", "cu_emt/train.xyz")


def _best_convert(path: Path, out: Path, repeat: int, stats: bool) -> tuple[float, int, int]:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        report = convert([path], out, overwrite=True, progress=False, cutoff=5.0 if stats else None)
        best = min(best, time.perf_counter() - start)
    dataset = LmdbDataset(out)
    natoms = sum(int(n) for n in dataset.header["atoms_per_element"].values())
    return best, report.written, natoms


def _read_rate(out: Path) -> float:
    dataset = LmdbDataset(out)
    order = np.random.default_rng(0).permutation(len(dataset))
    start = time.perf_counter()
    for i in order:
        dataset[int(i)]
    return len(dataset) / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "inputs",
        nargs="*",
        type=Path,
        help=f"structure files (default: {', '.join(DEFAULT_INPUTS)} under --data-dir)",
    )
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA, help="shared data folder")
    parser.add_argument("--repeat", type=int, default=3, help="runs per input; the best counts")
    args = parser.parse_args(argv)
    inputs = args.inputs or [args.data_dir / p for p in DEFAULT_INPUTS]

    header = (
        f"{'input':<28} {'frames':>7} {'atoms':>8} {'convert s':>10} {'frames/s':>9} "
        f"{'atoms/s':>9} {'+stats f/s':>10} {'read f/s':>9}"
    )
    print(header)
    print("-" * len(header))
    with tempfile.TemporaryDirectory() as tmp:
        for path in inputs:
            out = Path(tmp) / f"{path.stem}.lmdb"
            seconds, frames, atoms = _best_convert(path, out, args.repeat, stats=False)
            stats_seconds, _, _ = _best_convert(path, out, args.repeat, stats=True)
            name = f"{path.parent.name}/{path.name}"
            print(
                f"{name:<28} {frames:>7} {atoms:>8} {seconds:>10.3f} {frames / seconds:>9.0f} "
                f"{atoms / seconds:>9.0f} {frames / stats_seconds:>10.0f} {_read_rate(out):>9.0f}"
            )


if __name__ == "__main__":
    main()
