"""Benchmark the data side at scale: conversion of a synthetic ASE-LMDB input
(OMol25's format) into shards with 1 and 2 workers (frames/s, peak RSS), data-loader
structures/s from the shards, and atom-budget vs fixed-count batching on mixed sizes.

Usage::

    python tools/bench_scale.py --frames 200000            # writes into a temporary folder
    python tools/bench_scale.py --frames 50000 --keep DIR  # keep the files
    python tools/bench_scale.py --input DIR/synthetic.aselmdb --only-convert

The synthetic input: molecules of 5-60 atoms (H, C, N, O) at random positions with
random energies and forces, one fairchem-style row each (zlib JSON). Conversions run as
``mlip data convert`` subprocesses; peak RSS is the largest resident size of that process
summed over its workers, sampled every 0.1 s from /proc: total RSS (which counts the pages
of the memory-mapped LMDB files it read, page cache) and anonymous memory (the heap).
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

ROOT = Path(__file__).resolve().parents[1]


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


def _tree(root: int) -> list[int]:
    """``root`` and its descendants (from /proc)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            parents.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(parents.get(pid, []))
    return out


def _memory_kb(pids: list[int]) -> tuple[int, int]:
    """(total RSS, anonymous RSS) [kB] of ``pids``: RSS includes the pages of the memory-
    mapped LMDB files read (page cache, reclaimable); anonymous memory is the heap."""
    rss = anon = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    rss += int(line.split()[1])
                elif line.startswith("RssAnon:"):
                    anon += int(line.split()[1])
        except OSError:
            pass
    return rss, anon


def convert_once(src: Path, out: Path, workers: int, shard_size: int) -> dict:
    """One ``mlip data convert`` subprocess; memory of its process tree sampled every 0.1 s."""
    cmd = [sys.executable, "-m", "mlip", "data", "convert", str(src), "-o", str(out),
           "--shard-size", str(shard_size), "--workers", str(workers), "--overwrite",
           "--no-progress", "--cutoff", "5.0"]
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak_rss = peak_anon = 0
    while proc.poll() is None:
        rss, anon = _memory_kb(_tree(proc.pid))
        peak_rss, peak_anon = max(peak_rss, rss), max(peak_anon, anon)
        time.sleep(0.1)
    seconds = time.perf_counter() - t
    stdout, stderr = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(stderr[-500:])
    return {"seconds": seconds, "peak_rss_mb": peak_rss / 1024, "peak_anon_mb": peak_anon / 1024,
            "line": stdout.strip().splitlines()[0]}


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


def training_throughput(folder: Path, structures: int, threads: int, **batching) -> dict:
    """One epoch of ``mlip train`` (the quickstart CG model, float32) on ``structures`` of the
    shards, batched as given (``batch_size=`` or ``max_atoms_per_batch=``); the summary's
    structures/s (the epoch's fit time, including a 64-structure validation pass)."""
    run = Path(tempfile.mkdtemp(prefix="mlip-scale-train-"))
    name = "_".join(f"{k}{v}" for k, v in batching.items())
    cmd = [sys.executable, "-m", "mlip", "train", "--config", str(ROOT / "configs/quickstart.yaml"),
           f"data.train=[{folder}]", "data.val_size=64", f"data.max_train={structures}",
           "data.test=[]", "data.e0s=least_squares", "training.schedule.max_epochs=1",
           "training.schedule.max_time=null", f"training.trainer.threads={threads}",
           "training.trainer.enable_progress_bar=false", f"output_dir={run}", f"run_name={name}",
           *(f"data.{k}={v}" for k, v in batching.items())]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-1000:])
    summary = json.loads((run / name / "summary.json").read_text())
    return {"seconds": summary["fit_seconds"], "per_s": summary["train_structures_per_second"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=200_000)
    parser.add_argument("--shard-size", type=int, default=50_000)
    parser.add_argument("--keep", type=Path, help="folder to keep the files in")
    parser.add_argument("--input", type=Path, help="an existing synthetic .aselmdb (no writing)")
    parser.add_argument("--only-convert", action="store_true", help="skip loader and batching")
    parser.add_argument("--skip-convert", action="store_true",
                        help="reuse the shards already in --keep")
    parser.add_argument("--train-structures", type=int, default=0,
                        help="also time one training epoch on this many structures per batching")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for --train-structures")
    args = parser.parse_args()
    root = args.keep or Path(tempfile.mkdtemp(prefix="mlip-scale-"))
    root.mkdir(parents=True, exist_ok=True)
    src = args.input or root / "synthetic.aselmdb"
    if args.skip_convert:
        pass
    elif args.input is None:
        t = time.perf_counter()
        write_synthetic(src, args.frames)
        print(f"wrote {args.frames} synthetic rows in {time.perf_counter() - t:.1f} s "
              f"({src.stat().st_size / 2**20:.0f} MiB)")
    else:
        from mlip.data.aselmdb import AseLmdbFile

        with AseLmdbFile(src) as db:
            args.frames = len(db)
    for workers in () if args.skip_convert else (1, 2):
        r = convert_once(src, root / "shards", workers, args.shard_size)
        print(f"convert, {workers} worker(s): {r['seconds']:.1f} s, "
              f"{args.frames / r['seconds']:.0f} frames/s, peak RSS {r['peak_rss_mb']:.0f} MB "
              f"(of it anonymous {r['peak_anon_mb']:.0f} MB; the rest: mapped LMDB pages)")
    if args.only_convert:
        return
    for workers in (0, 2):
        print(f"data loader, num_workers {workers}: "
              f"{loader_throughput(root / 'shards', workers):.0f} structures/s (graphs at 5 Å)")
    table = batching_table(root / "shards", budget=32 * 32, batch_size=32)
    for name, row in table.items():
        print(f"batching {name}: {row['steps']} steps/epoch, atoms per batch mean "
              f"{row['atoms_mean']:.0f}, max {row['atoms_max']}, CV {row['atoms_cv']:.3f}")
    if args.train_structures:
        for kw in ({"batch_size": 32}, {"max_atoms_per_batch": 32 * 32}):
            r = training_throughput(root / "shards", args.train_structures, args.threads, **kw)
            print(f"training, {kw}: one epoch of {args.train_structures} structures in "
                  f"{r['seconds']:.1f} s, {r['per_s']:.1f} structures/s ({args.threads} thread(s))")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"(this process: peak RSS {peak:.0f} MB)")


if __name__ == "__main__":
    main()
