"""Pack rigid copies of a molecule into a periodic box with a minimum intermolecular distance.

    # 64 acac molecules at 1.0 g/cm^3 (the cell of ../shared/data/bench/acac_box64.xyz),
    # no two atoms of different molecules closer than 2.0 Å
    python tools/make_box.py --molecule data/acac/train_300K.xyz --lowest-energy \
        --count 64 --density 1.0 --min-distance 2.0 --out acac_box64_packed.xyz

Why: the benchmark box of ../shared/BASELINES.md is a timing system made by random
insertion, and it has intermolecular contacts at 1.6 Å (O-O 1.65, C-H 1.61, O-H 1.61 Å),
far inside the van der Waals contact of a real liquid (H...H about 2.2-2.4 Å). An MD run
that starts from such clashes measures the clash, not the model. This tool makes a start
with the density of that box and no intermolecular pair below --min-distance.

Our procedure (no force field involved): random rigid copies (uniform random rotation,
uniform centre) are inserted without contacts into a box --start-scale times the target
edge; the box is then shrunk in steps of --step (centres scaled, molecules rigid), and after
each step a zero-temperature rigid-body Monte-Carlo repair (random rotation and translation
of one molecule, accepted when the overlap penalty sum over intermolecular pairs of
(d_min - r)^2 does not grow, step sizes halved when progress stalls) removes the contacts
the shrink made. Intramolecular geometry is never changed. Fails with a one-line error when
the target cannot be reached within --max-moves moves. Seeded, deterministic.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import ase.io
import numpy as np
from ase import Atoms, units
from scipy.spatial import cKDTree
from scipy.spatial.transform import Rotation
from tqdm import tqdm


def edge_from_density(molecule: Atoms, count: int, density: float) -> float:
    """Cubic cell edge [Å] holding ``count`` molecules at ``density`` [g/cm^3]."""
    grams = count * molecule.get_masses().sum() / units.mol
    return float((grams / density * 1e24) ** (1.0 / 3.0))


class Packer:
    """Rigid molecules in a cubic periodic cell with an intermolecular overlap penalty."""

    def __init__(self, template: np.ndarray, count: int, min_distance: float, seed: int):
        self.ref = template - template.mean(0)
        self.n_mol, self.n_at = count, len(template)
        self.d0 = min_distance
        self.rng = np.random.default_rng(seed)
        self.rot = [Rotation.identity()] * count
        self.centre = np.zeros((count, 3))
        self.edge = 0.0

    def coords(self, i: int, rot: Rotation | None = None, centre: np.ndarray | None = None):
        rot = self.rot[i] if rot is None else rot
        centre = self.centre[i] if centre is None else centre
        return rot.apply(self.ref) + centre

    def all_coords(self) -> np.ndarray:
        return np.concatenate([self.coords(i) for i in range(self.n_mol)])

    def _others(self, i: int, x: np.ndarray) -> cKDTree:
        keep = np.ones(len(x), bool)
        keep[i * self.n_at:(i + 1) * self.n_at] = False
        return cKDTree(x[keep] % self.edge, boxsize=self.edge)

    def penalty(self, tree: cKDTree, pos: np.ndarray) -> float:
        k = min(16, tree.n)
        d = tree.query(pos % self.edge, k=k, distance_upper_bound=self.d0)[0]
        d = d[np.isfinite(d)]
        return float(((self.d0 - d) ** 2).sum())

    def contacts(self, x: np.ndarray) -> tuple[int, float]:
        """Intermolecular pairs closer than d_min, and the closest intermolecular distance."""
        tree = cKDTree(x % self.edge, boxsize=self.edge)
        pairs = tree.query_pairs(self.d0 + 1.0, output_type="ndarray")
        pairs = pairs[pairs[:, 0] // self.n_at != pairs[:, 1] // self.n_at]
        if len(pairs) == 0:
            return 0, float("inf")
        dv = x[pairs[:, 0]] - x[pairs[:, 1]]
        dv -= self.edge * np.round(dv / self.edge)
        d = np.linalg.norm(dv, axis=1)
        return int((d < self.d0).sum()), float(d.min())

    def insert(self, edge: float, tries: int = 20000) -> None:
        """Random sequential insertion without contacts into a cell of edge ``edge``."""
        self.edge = edge
        placed = np.zeros((0, 3))
        for i in range(self.n_mol):
            for _ in range(tries):
                rot = Rotation.random(random_state=self.rng.integers(2**31))
                centre = self.rng.uniform(0.0, edge, 3)
                pos = rot.apply(self.ref) + centre
                if len(placed):
                    d = cKDTree(placed % edge, boxsize=edge).query(pos % edge)[0]
                    if d.min() < self.d0:
                        continue
                placed = np.vstack([placed, pos])
                self.rot[i], self.centre[i] = rot, centre
                break
            else:
                raise RuntimeError(f"could not insert molecule {i + 1} of {self.n_mol} into a "
                                   f"{edge:.2f} Å cell; raise --start-scale")

    def shrink(self, edge: float) -> None:
        self.centre *= edge / self.edge
        self.edge = edge

    def repair(self, max_moves: int) -> int:
        """Monte-Carlo moves until no contact is left; returns the moves used (-1: failed)."""
        x = self.all_coords()
        angle, shift = 0.3, 0.3
        last_total, stall = np.inf, 0
        for move in range(max_moves):
            if move % 200 == 0:
                n_contacts, _ = self.contacts(x)
                if n_contacts == 0:
                    return move
                total = n_contacts
                stall = stall + 1 if total >= last_total else 0
                last_total = min(last_total, total)
                if stall >= 5:  # no progress: smaller steps
                    angle, shift, stall = max(angle / 2, 0.02), max(shift / 2, 0.02), 0
            i = int(self.rng.integers(self.n_mol))
            tree = self._others(i, x)
            sl = slice(i * self.n_at, (i + 1) * self.n_at)
            old = self.penalty(tree, x[sl])
            if old == 0.0:
                continue
            rot = Rotation.from_rotvec(self.rng.normal(0.0, angle, 3)) * self.rot[i]
            centre = self.centre[i] + self.rng.normal(0.0, shift, 3)
            pos = self.coords(i, rot, centre)
            if self.penalty(tree, pos) <= old:
                self.rot[i], self.centre[i] = rot, centre
                x[sl] = pos
        return -1


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--molecule", required=True, help="structure file of one molecule")
    parser.add_argument("--frame", type=int, default=0, help="frame of --molecule to copy")
    parser.add_argument("--lowest-energy", action="store_true",
                        help="copy the frame of --molecule with the lowest energy instead")
    parser.add_argument("--count", type=int, default=64)
    size = parser.add_mutually_exclusive_group(required=True)
    size.add_argument("--density", type=float, help="g/cm^3")
    size.add_argument("--edge", type=float, help="cubic cell edge [Å]")
    parser.add_argument("--min-distance", type=float, default=2.0,
                        help="smallest allowed distance between atoms of different molecules [Å]")
    parser.add_argument("--start-scale", type=float, default=1.5)
    parser.add_argument("--step", type=float, default=0.01, help="relative shrink per stage")
    parser.add_argument("--max-moves", type=int, default=200000, help="per stage")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)

    if args.lowest_energy:
        frames = ase.io.read(args.molecule, ":")
        molecule = min(frames, key=lambda a: a.get_potential_energy())
    else:
        molecule = ase.io.read(args.molecule, args.frame)
    edge = args.edge or edge_from_density(molecule, args.count, args.density)
    packer = Packer(molecule.positions, args.count, args.min_distance, args.seed)
    t0 = time.perf_counter()
    try:
        packer.insert(edge * args.start_scale)
    except RuntimeError as err:
        sys.exit(f"error: {args.out}: {err}")
    stages = int(np.ceil(np.log(args.start_scale) / -np.log1p(-args.step)))
    moves = 0
    for stage in tqdm(range(1, stages + 1), desc="compressing", unit=" stage"):
        packer.shrink(max(edge, edge * args.start_scale * (1.0 - args.step) ** stage))
        used = packer.repair(args.max_moves)
        if used < 0:
            sys.exit(f"error: {args.out}: no contact-free packing at edge {packer.edge:.3f} Å "
                     f"after {args.max_moves} moves (target {edge:.3f} Å); lower --density or "
                     f"--min-distance")
        moves += used
    x = packer.all_coords() % edge
    box = Atoms(np.tile(molecule.numbers, args.count), positions=x,
                cell=[edge, edge, edge], pbc=True)
    box.info["atoms_per_molecule"] = len(molecule)  # copies in order
    _, closest = packer.contacts(packer.all_coords())
    out = Path(args.out)
    tmp = out.with_name(out.name + ".tmp")
    ase.io.write(tmp, box, format="extxyz")
    tmp.replace(out)
    density = args.count * molecule.get_masses().sum() / units.mol / (edge**3 * 1e-24)
    print(f"{out}: {len(box)} atoms, {args.count} molecules, edge {edge:.4f} Å, "
          f"{density:.4f} g/cm^3, closest intermolecular pair {closest:.3f} Å, "
          f"{moves} moves, {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
