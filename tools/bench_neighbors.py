"""Neighbour-list timings: vesin vs mlip's torch path vs ase.neighborlist.

    python tools/bench_neighbors.py --threads 1 --repeats 3

Systems: a ~10,000-atom periodic fcc Cu cell (rattled) and the 960-atom periodic acac box
(shared/data/bench/acac_box64.xyz, if present); cutoff 5 Å.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import ase.io
import torch
from ase.build import bulk
from ase.neighborlist import neighbor_list as ase_neighbor_list

from mlip.graph.neighbors import neighbor_list_torch, neighbor_list_vesin


def best_of(repeats: int, fn, *args) -> tuple[float, int]:
    times, n = [], 0
    for _ in range(repeats):
        t = time.perf_counter()
        n = fn(*args)[0].shape[-1]  # edge_index (2, E) or ASE i (E,)
        times.append(time.perf_counter() - t)
    return min(times), n


def main() -> None:
    parser = argparse.ArgumentParser(description="neighbour-list benchmark")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cutoff", type=float, default=5.0)
    parser.add_argument("--box", default=str(Path(__file__).resolve().parents[1].parent
                                            / "shared" / "data" / "bench" / "acac_box64.xyz"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cu = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((14, 14, 13))  # 10,192 atoms
    cu.rattle(0.05, seed=0)
    systems = [("Cu fcc, periodic", cu)]
    if Path(args.box).is_file():
        systems.append(("acac box, periodic", ase.io.read(args.box)))
    rc = args.cutoff
    print(f"cutoff {rc} Å, {args.threads} thread(s), best of {args.repeats}")
    print(f"{'system':<22}{'atoms':>7}{'edges':>10}{'vesin ms':>10}{'torch ms':>10}{'ase ms':>10}")
    for name, atoms in systems:
        pos, cell, pbc = atoms.positions, atoms.cell.array, atoms.pbc
        tv, nv = best_of(args.repeats, neighbor_list_vesin, pos, cell, pbc, rc)
        tp, tc, tb = torch.tensor(pos), torch.tensor(cell), torch.tensor(pbc)
        tt, nt = best_of(args.repeats, neighbor_list_torch, tp, tc, tb, rc)
        ta, na = best_of(args.repeats, ase_neighbor_list, "ij", atoms, rc)
        assert nv == nt == na, (nv, nt, na)
        print(f"{name:<22}{len(atoms):>7}{nv:>10}{tv * 1e3:>10.1f}{tt * 1e3:>10.1f}{ta * 1e3:>10.1f}")



if __name__ == "__main__":
    main()
