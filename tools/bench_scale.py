"""Benchmark the data side at scale (issue 15): conversion of a synthetic ASE-LMDB input
(OMol25's format) into shards with 1 and 2 workers (frames/s, peak RSS), data-loader
structures/s from the shards, and atom-budget vs fixed-count batching on mixed sizes.

Usage::

    python tools/bench_scale.py --frames 200000            # writes into a temporary folder
    python tools/bench_scale.py --frames 50000 --keep DIR  # keep the files

The synthetic input: molecules of 5-60 atoms (H, C, N, O) at random positions with
random energies and forces, one fairchem-style row each (zlib JSON). Conversions run as
``mlip data convert`` subprocesses; peak RSS is the largest resident size of that process
or any of its workers (``getrusage(RUSAGE_CHILDREN)``, measured in a fresh process each).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

import lmdb
import numpy as np


def write_synthetic(path: Path, frames: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    env = lmdb.open(str(path), subdir=False, map_size=2**36, lock=False, sync=False)
    txn = env.begin(write=True)
    for i in range(1, frames + 1):
        n = int(rng.integers(5, 61))
        numbers = rng.choice([1, 6, 7, 8], size=n)
        # atoms on a jittered cubic grid 1.3 Å apart: no two closer than ~0.7 Å
        side = int(np.ceil(n ** (1 / 3)))
        grid = np.stack(np.meshgrid(*[np.arange(side)] * 3, indexing="ij"), -1).reshape(-1, 3)[:n]
        positions = 1.3 * grid + rng.uniform(-0.3, 0.3, size=(n, 3))
        row = {"numbers": numbers.tolist(), "positions": positions.round(6).tolist(),
               "cell": [[0.0] * 3] * 3, "pbc": [False] * 3,
               "energy": float(-50.0 * n + rng.normal()),
               "forces": rng.normal(size=(n, 3)).round(6).tolist(),
               "data": {"charge": int(rng.integers(-1, 2)), "spin": 1}}
        txn.put(str(i).encode(), zlib.compress(json.dumps(row).encode()))
        if i % 10000 == 0:
            txn.commit()
            txn = env.begin(write=True)
    txn.put(b"nextid", zlib.compress(json.dumps(frames + 1).encode()))
    txn.commit()
    env.sync(True)
    env.close()


def convert_once(src: Path, out: Path, workers: int, shard_size: int) -> dict:
    code = (
        "import resource, subprocess, sys, time\n"
        "t = time.perf_counter()\n"
        "p = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
        "dt = time.perf_counter() - t\n"
        "print(p.returncode, dt, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
        "print(p.stdout.strip().splitlines()[0] if p.returncode == 0 else p.stderr[-500:])\n"
    )
    cmd = [sys.executable, "-c", code, sys.executable, "-m", "mlip", "data", "convert", str(src),
           "-o", str(out), "--shard-size", str(shard_size), "--workers", str(workers),
           "--overwrite", "--no-progress", "--cutoff", "5.0"]
    lines = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.splitlines()
    rc, seconds, rss_kb = lines[0].split()
    if rc != "0":
        raise RuntimeError(lines[1:])
    return {"seconds": float(seconds), "peak_rss_mb": int(rss_kb) / 1024, "line": lines[1]}


def loader_throughput(folder: Path, workers: int, batches: int = 200) -> float:
    import torch

    from mlip.data import keys
    from mlip.data.shards import ShardedDataset
    from mlip.graph.build import GraphDataset, collate
    from mlip.training.batching import StructureBatchSampler

    ds = ShardedDataset(folder)
    sampler = StructureBatchSampler(ds.sizes(), batch_size=32, seed=0)
    loader = torch.utils.data.DataLoader(GraphDataset(ds, 5.0, dtype=torch.float32),
                                         batch_sampler=sampler, collate_fn=collate,
                                         num_workers=workers)
    it = iter(loader)
    next(it)  # workers started
    t = time.perf_counter()
    count = 0
    for _ in range(batches):
        count += int(next(it)[keys.NUM_ATOMS].shape[0])
    return count / (time.perf_counter() - t)


def batching_table(folder: Path, budget: int, batch_size: int) -> dict:
    from mlip.data.shards import ShardedDataset
    from mlip.training.batching import StructureBatchSampler

    sizes = ShardedDataset(folder).sizes()
    out = {}
    for name, kw in (("fixed", {"batch_size": batch_size}), ("budget", {"max_atoms": budget})):
        batches = StructureBatchSampler(sizes, seed=0, **kw).all_batches()
        atoms = np.array([sizes[b].sum() for b in batches])
        out[name] = {"steps": len(batches), "atoms_mean": float(atoms.mean()),
                     "atoms_max": int(atoms.max()), "atoms_cv": float(atoms.std() / atoms.mean())}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=200_000)
    parser.add_argument("--shard-size", type=int, default=50_000)
    parser.add_argument("--keep", type=Path, help="folder to keep the files in")
    args = parser.parse_args()
    root = args.keep or Path(tempfile.mkdtemp(prefix="mlip-scale-"))
    root.mkdir(parents=True, exist_ok=True)
    src = root / "synthetic.aselmdb"
    t = time.perf_counter()
    write_synthetic(src, args.frames)
    print(f"wrote {args.frames} synthetic rows in {time.perf_counter() - t:.1f} s "
          f"({src.stat().st_size / 2**20:.0f} MiB)")
    for workers in (1, 2):
        r = convert_once(src, root / "shards", workers, args.shard_size)
        print(f"convert, {workers} worker(s): {r['seconds']:.1f} s, "
              f"{args.frames / r['seconds']:.0f} frames/s, peak RSS {r['peak_rss_mb']:.0f} MB")
    for workers in (0, 2):
        print(f"data loader, num_workers {workers}: "
              f"{loader_throughput(root / 'shards', workers):.0f} structures/s (graphs at 5 Å)")
    table = batching_table(root / "shards", budget=32 * 32, batch_size=32)
    for name, row in table.items():
        print(f"batching {name}: {row['steps']} steps/epoch, atoms per batch mean "
              f"{row['atoms_mean']:.0f}, max {row['atoms_max']}, CV {row['atoms_cv']:.3f}")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"(this process: peak RSS {peak:.0f} MB)")


if __name__ == "__main__":
    main()
