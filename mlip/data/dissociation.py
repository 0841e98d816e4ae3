"""Frames that show a potential how bonds break and fragments meet: geometries and labels.

Every training frame of a molecule has each atom bonded, so nothing in it says what the
energy is while an atom, a group or a second molecule comes in from beyond the cutoff. This
module makes such frames from the user's own training data, along three kinds of path:

* ``dimer``: every element pair of the data as a lone pair, from 0.9x the pair's shortest
  distance in the data (at least ``min_distance``) to beyond the cutoff;
* ``pull``: in a training frame, each terminal atom (one bond) and each terminal group (at
  most ``max_group`` atoms on one side of a bond outside rings: OH, CH3, ...) moved rigidly
  out along its bond, from 1.15x the bond length to beyond the cutoff;
* ``pair``: two copies of a training frame, the second turned at random, moved apart along a
  random direction from contact (closest atoms ``contact`` Å apart) to beyond the cutoff.

Labels come from any ASE calculator (:func:`xtb_calculator`: GFN2-xTB through tblite) as
differences along the path, put on the data's own scale by an anchor whose energy and forces
the data fixes:

    E(x) = E_anchor + E_ref(x) - E_ref(anchor),    F(x) = F_anchor + F_ref(x) - F_ref(anchor),

with the anchor the separated pair for a dimer (E_anchor = the data's E0 sum, F_anchor = 0:
exact at the asymptote), the two molecules apart for a pair (twice the frame's energy, each
copy's own forces), and the training frame itself for a pull (its labels; the asymptote then
carries the reference's dissociation energy). So a cheap reference gives the shapes and no
frame contradicts the data where the data speaks: atoms far from the moving group keep the
data's forces, not the reference's (GFN2-xTB's forces on acac differ from its DFT labels by
several hundred meV/Å per component). Every frame records its path (``path``, ``path_kind``,
``distance``) and the reference (``reference``, ``multiplicity``) in its info.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import ase
import numpy as np
from ase.calculators.singlepoint import SinglePointCalculator
from ase.data import covalent_radii

# GFN2-xTB settings of the labels. Fermi smearing at 3000 K: at 300 K the SCF of stretched
# open-shell pairs (C-H, O-H beyond 3 Å) does not converge in any multiplicity that
# dissociates correctly; with smearing it does, and closed-shell molecules near equilibrium
# are unchanged (their gap is far above kT).
XTB_SETTINGS = {"method": "GFN2-xTB", "accuracy": 1.0, "electronic_temperature": 3000.0, "charge": 0}


@dataclass(frozen=True)
class DissociationPath:
    """One path: its frames (geometries), the distance of each [Å], and its anchor."""

    kind: str  # dimer | pull | pair
    name: str
    frames: list[ase.Atoms]
    distances: np.ndarray
    anchor: ase.Atoms
    anchor_energy: float  # [eV] on the data's scale
    anchor_forces: np.ndarray | None = None  # (n, 3) [eV/Å]; None: a force-free anchor (F = F_ref)


# -- bonds and sides ----------------------------------------------------------------------------
def bonds(atoms: ase.Atoms, mult: float = 1.2) -> list[tuple[int, int]]:
    """Covalent bonds (i < j): pairs closer than ``mult`` times their covalent-radius sum."""
    d = atoms.get_all_distances()
    r = covalent_radii[atoms.numbers]
    i, j = np.nonzero(np.triu(d < mult * (r[:, None] + r[None, :]), k=1))
    return list(zip(i.tolist(), j.tolist(), strict=True))


def side(atoms: ase.Atoms, i: int, j: int) -> np.ndarray | None:
    """Atoms on j's side of bond i-j (bool mask), or None when the bond is in a ring."""
    graph: dict[int, set[int]] = {k: set() for k in range(len(atoms))}
    for a, b in bonds(atoms):
        if {a, b} != {i, j}:
            graph[a].add(b)
            graph[b].add(a)
    seen, stack = {j}, [j]
    while stack:
        for n in graph[stack.pop()]:
            if n not in seen:
                seen.add(n)
                stack.append(n)
    if i in seen:
        return None
    mask = np.zeros(len(atoms), dtype=bool)
    mask[list(seen)] = True
    return mask


def terminal_groups(atoms: ase.Atoms, max_group: int = 4) -> list[tuple[int, int, np.ndarray]]:
    """(anchor atom i, first group atom j, group mask) for every side of a bond outside rings
    with at most ``max_group`` atoms and fewer than half the molecule: single terminal atoms
    (H, a carbonyl O) and groups (OH, CH3, NH2). Each group once, in bond order."""
    out = []
    for a, b in bonds(atoms):
        for i, j in ((a, b), (b, a)):
            mask = side(atoms, i, j)
            if mask is not None and mask.sum() <= min(max_group, (len(atoms) - 1) // 2):
                out.append((i, j, mask))
    return out


# -- geometries ----------------------------------------------------------------------------------
def dimer(z1: int, z2: int, distances) -> list[ase.Atoms]:
    """Two lone atoms at each distance [Å] along x, no cell."""
    return [ase.Atoms(numbers=[z1, z2], positions=[[0, 0, 0], [float(d), 0, 0]]) for d in distances]


def pull_group(atoms: ase.Atoms, i: int, j: int, mask: np.ndarray, distances) -> list[ase.Atoms]:
    """The atoms of ``mask`` (j's side of bond i-j) moved rigidly along i->j so that |r_ij|
    takes each distance [Å]."""
    u = atoms.positions[j] - atoms.positions[i]
    r0 = float(np.linalg.norm(u))
    u = u / r0
    frames = []
    for d in distances:
        a = ase.Atoms(numbers=atoms.numbers, positions=atoms.positions.copy())
        a.positions[mask] += (float(d) - r0) * u
        frames.append(a)
    return frames


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """(3, 3) rotation, uniform on SO(3) (QR of a Gaussian matrix, sign-fixed)."""
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def molecule_pair(first: ase.Atoms, second: ase.Atoms, direction: np.ndarray, distances
                  ) -> list[ase.Atoms]:
    """``second`` (centred on ``first``'s centroid) moved along ``direction`` so that the
    closest atoms of the two are each distance [Å] apart."""
    u = np.asarray(direction, dtype=float)
    u = u / np.linalg.norm(u)
    p1 = first.positions
    p2 = second.positions - second.positions.mean(axis=0) + p1.mean(axis=0)

    def closest(t: float) -> float:
        diff = p1[:, None, :] - (p2 + t * u)[None, :, :]
        return float(np.sqrt((diff ** 2).sum(-1)).min())

    frames = []
    for d in distances:
        lo, hi = 0.0, 1.0
        while closest(hi) < d:
            hi *= 2.0
        for _ in range(60):  # closest(t) grows with t once the clouds separate: bisect
            mid = 0.5 * (lo + hi)
            lo, hi = (mid, hi) if closest(mid) < d else (lo, mid)
        frames.append(ase.Atoms(numbers=np.concatenate([first.numbers, second.numbers]),
                                positions=np.concatenate([p1, p2 + hi * u])))
    return frames


def closest_pair_distances(frames: list[ase.Atoms]) -> dict[tuple[int, int], float]:
    """Shortest distance of each element pair (z1 <= z2) over ``frames`` [Å]."""
    out: dict[tuple[int, int], float] = {}
    for a in frames:
        d = a.get_all_distances()
        np.fill_diagonal(d, np.inf)
        z = a.numbers
        for p in sorted(set(z.tolist())):
            for q in sorted(set(z.tolist())):
                if p <= q:
                    m = float(d[np.ix_(z == p, z == q)].min())
                    if math.isfinite(m):
                        out[(p, q)] = min(out.get((p, q), np.inf), m)
    return out


def make_paths(train: list[ase.Atoms], e0s: dict[int, float], cutoff: float, frames: int = 2,
               points: int = 10, pairs: int = 1, max_group: int = 4, contact: float = 1.6,
               min_distance: float = 0.5, seed: int = 0) -> list[DissociationPath]:
    """The paths of the module docstring from a labelled training set.

    Args:
        train: training frames with energies (free molecules).
        e0s: isolated-atom energy of each element [eV] (the data's E0s).
        cutoff: the model's cutoff [Å]; every path ends 1 Å beyond it.
        frames: training frames the pulls start from (seeded choice; never the lowest-energy
            frame, which the extrapolation probes start from).
        points: frames per path.
        pairs: two-molecule paths (each from its own frame and direction).
        seed: the choice of frames, rotations and directions.
    """
    rng = np.random.default_rng(seed)
    end = cutoff + 1.0
    energies = np.array([a.get_potential_energy() for a in train])
    elements = sorted({int(z) for a in train for z in a.numbers})
    missing = [z for z in elements if z not in e0s]
    if missing:
        raise ValueError(f"no isolated-atom energy (E0) for element(s) {missing}: give an E0 file")
    closest = closest_pair_distances(train[:200])  # the data's closest approach of each pair
    out: list[DissociationPath] = []
    for n, z1 in enumerate(elements):
        for z2 in elements[n:]:
            lo = max(min_distance, 0.9 * closest.get((z1, z2), covalent_radii[z1] + covalent_radii[z2]))
            r = np.linspace(lo, end, points)
            out.append(DissociationPath("dimer", f"dimer {z1}-{z2}", dimer(z1, z2, r), r,
                             dimer(z1, z2, [end + 5.0])[0], e0s[z1] + e0s[z2]))
    pool = np.setdiff1d(np.arange(len(train)), [int(energies.argmin())])
    chosen = rng.choice(pool, size=min(frames, len(pool)), replace=False)
    for f in chosen.tolist():
        start = ase.Atoms(numbers=train[f].numbers, positions=train[f].positions)
        for i, j, mask in terminal_groups(start, max_group):
            r0 = start.get_distance(i, j)
            r = np.linspace(1.15 * r0, end, points)
            out.append(DissociationPath("pull", f"frame {f} pull {j}+{int(mask.sum()) - 1} from {i}",
                             pull_group(start, i, j, mask, r), r, start, float(energies[f]),
                             _forces(train[f])))
    for f in rng.choice(pool, size=min(pairs, len(pool)), replace=False).tolist():
        a = ase.Atoms(numbers=train[f].numbers, positions=train[f].positions)
        b = a.copy()
        rotation = random_rotation(rng)
        b.positions = (b.positions - b.positions.mean(0)) @ rotation.T
        direction = rng.normal(size=3)
        r = np.linspace(contact, end, points)
        f_a = _forces(train[f])
        forces = None if f_a is None else np.concatenate([f_a, f_a @ rotation.T])
        out.append(DissociationPath("pair", f"frame {f} pair", molecule_pair(a, b, direction, r), r,
                                    molecule_pair(a, b, direction, [end + 5.0])[0],
                                    2.0 * float(energies[f]), forces))
    return out


def _forces(atoms: ase.Atoms) -> np.ndarray | None:
    try:
        return np.asarray(atoms.get_forces(), dtype=float)
    except Exception:  # noqa: BLE001 - no force label: the reference's forces are used as they are
        return None


# -- labels --------------------------------------------------------------------------------------
def lowest_multiplicity(numbers) -> int:
    """1 for an even electron count (neutral), 2 for an odd one."""
    return 1 + int(sum(int(z) for z in numbers) % 2)


def xtb_calculator(numbers) -> ase.calculators.calculator.Calculator:
    """GFN2-xTB (tblite) with :data:`XTB_SETTINGS` in the lowest multiplicity of the atoms."""
    try:
        from tblite.ase import TBLite
    except ImportError as err:
        raise ImportError("the xtb labeller needs tblite: pip install tblite") from err
    return TBLite(**XTB_SETTINGS, multiplicity=lowest_multiplicity(numbers), verbosity=0)


def label_paths(paths: list[DissociationPath], calculator: Callable[[np.ndarray], object], reference: str,
                progress: Callable[[int, int], None] | None = None) -> tuple[list[ase.Atoms], list[str]]:
    """Label every frame of ``paths`` (see the module docstring).

    Args:
        calculator: atomic numbers -> a fresh ASE calculator for them.
        reference: the name recorded in each frame's info (e.g. ``"GFN2-xTB"``).
        progress: called with (paths done, paths) after each path.

    Returns:
        the labelled frames, and one line for each frame or path the calculator failed on
        (SCF not converged, non-finite output): those are left out, never kept.
    """
    out: list[ase.Atoms] = []
    failures: list[str] = []

    def evaluate(atoms: ase.Atoms) -> tuple[float, np.ndarray]:
        a = atoms.copy()
        a.calc = calculator(a.numbers)
        e, f = float(a.get_potential_energy()), np.asarray(a.get_forces(), dtype=float)
        if not (math.isfinite(e) and np.isfinite(f).all()):
            raise ValueError("non-finite energy or forces")
        return e, f

    for n, path in enumerate(paths):
        try:
            e_anchor, f_anchor = evaluate(path.anchor)
        except Exception as err:  # noqa: BLE001 - a labeller failure skips the path, recorded
            failures.append(f"{path.name}: anchor not labelled ({_short(err)}); path skipped")
            continue
        for atoms, d in zip(path.frames, path.distances, strict=True):
            try:
                e, f = evaluate(atoms)
            except Exception as err:  # noqa: BLE001
                failures.append(f"{path.name} at {d:.3f} A: {_short(err)}; frame skipped")
                continue
            a = ase.Atoms(numbers=atoms.numbers, positions=atoms.positions)
            a.info.update({"path": path.name, "path_kind": path.kind, "distance": float(d),
                           "reference": reference, "multiplicity": lowest_multiplicity(a.numbers),
                           "config_type": f"dissociation_{path.kind}"})
            if path.anchor_forces is not None:
                f = path.anchor_forces + f - f_anchor
            a.calc = SinglePointCalculator(a, energy=path.anchor_energy + e - e_anchor, forces=f)
            out.append(a)
        if progress is not None:
            progress(n + 1, len(paths))
    return out, failures


def _short(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text[:120]


def write_frames(frames: list[ase.Atoms], path: str | Path) -> Path:
    """extxyz, written to a temporary name and renamed (nothing half-written)."""
    import os

    import ase.io

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".partial-{os.getpid()}")
    try:
        ase.io.write(tmp, frames, format="extxyz")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
