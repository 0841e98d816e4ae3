"""Extrapolation probes of a potential-energy surface, away from the training data.

Three families of geometries any molecule can be put through, each with the check a
physical surface must pass:

* :func:`scaled_copies` - the molecule shrunk/stretched uniformly about its centroid
  (factors 0.7 - 1.3): the energy must rise on both sides of a minimum near 1.
* :func:`pair_curve` / :func:`dimer` - one atom moved along its bond to a partner, from
  far inside the bond out past the cutoff (``pull``) or two lone atoms brought together:
  the energy must rise steeply at short range and reach the dissociation limit (the
  fragments' energies; for a dimer, the sum of E0s) smoothly at the cutoff.
* :func:`torsion_scan` - one side of a bond turned rigidly about it through 0 - 180°: no
  point may lie far below the lowest energy of the training set.

The functions build :class:`ase.Atoms` (so any ASE calculator, e.g. GFN2-xTB or MACE, can
score the same geometries) and :func:`energies` scores them with an mlip model. The summary
functions return plain numbers; tests assert on them and tools/bench_extrapolation.py
tabulates them.
"""

from __future__ import annotations

import ase
import numpy as np
import torch

from mlip.data import keys
from mlip.graph.build import atoms_to_batch
from mlip.model.potential import Potential


def energies(model: Potential, frames: list[ase.Atoms], batch_size: int = 32) -> np.ndarray:
    """(len(frames),) total energies [eV] in float64, in chunks of ``batch_size``."""
    p = next(model.parameters())
    out = []
    with torch.no_grad():
        for k in range(0, len(frames), batch_size):
            data = atoms_to_batch(frames[k:k + batch_size], model.cutoff, dtype=p.dtype, device=p.device)
            out.append(model(data, compute_forces=False)[keys.ENERGY].double().cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0)


# -- geometries ----------------------------------------------------------------------------------
def scaled_copies(atoms: ase.Atoms, factors) -> list[ase.Atoms]:
    """The molecule scaled uniformly about its centroid by each factor (a non-periodic probe)."""
    center = atoms.positions.mean(axis=0)
    frames = []
    for f in factors:
        a = atoms.copy()
        a.calc = None
        a.positions = center + float(f) * (atoms.positions - center)
        frames.append(a)
    return frames


def bonds(atoms: ase.Atoms, mult: float = 1.2) -> list[tuple[int, int]]:
    """Covalent bonds (i < j): pairs closer than ``mult`` times their covalent-radius sum."""
    from ase.data import covalent_radii

    d = atoms.get_all_distances()
    r = covalent_radii[atoms.numbers]
    i, j = np.nonzero(np.triu(d < mult * (r[:, None] + r[None, :]), k=1))
    return list(zip(i.tolist(), j.tolist(), strict=True))


def _side(atoms: ase.Atoms, i: int, j: int) -> np.ndarray | None:
    """Atoms on j's side of bond i-j (bool mask), or None when the bond is in a ring."""
    graph = {k: set() for k in range(len(atoms))}
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


def rotatable_bonds(atoms: ase.Atoms, min_side: int = 2) -> list[tuple[int, int]]:
    """Bonds outside rings between heavy atoms with at least ``min_side`` atoms on each side
    (so turning one side changes the geometry)."""
    out = []
    for i, j in bonds(atoms):
        if atoms.numbers[i] == 1 or atoms.numbers[j] == 1:
            continue
        side = _side(atoms, i, j)
        if side is not None and min_side <= side.sum() <= len(atoms) - min_side:
            out.append((i, j))
    return out


def torsion_scan(atoms: ase.Atoms, i: int, j: int, angles_deg) -> list[ase.Atoms]:
    """Rigid scan: j's side of bond i-j turned about the i->j axis by each angle [deg]."""
    side = _side(atoms, i, j)
    if side is None:
        raise ValueError(f"bond {i}-{j} is in a ring; it has no rigid torsion")
    axis = atoms.positions[j] - atoms.positions[i]
    axis = axis / np.linalg.norm(axis)
    frames = []
    for angle in angles_deg:
        t = np.radians(float(angle))
        k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
        rot = np.eye(3) + np.sin(t) * k + (1 - np.cos(t)) * k @ k  # Rodrigues
        a = atoms.copy()
        a.calc = None
        moved = a.positions[side] - atoms.positions[j]
        a.positions[side] = atoms.positions[j] + moved @ rot.T
        frames.append(a)
    return frames


def pair_curve(atoms: ase.Atoms, i: int, j: int, distances) -> list[ase.Atoms]:
    """Atom i moved along the j->i direction so that |r_ij| takes each distance [Å]; the
    rest of the molecule stays put (push a pair together, or pull one atom out)."""
    u = atoms.positions[i] - atoms.positions[j]
    u = u / np.linalg.norm(u)
    frames = []
    for d in distances:
        a = atoms.copy()
        a.calc = None
        a.positions[i] = atoms.positions[j] + float(d) * u
        frames.append(a)
    return frames


def dimer(z1: int, z2: int, distances) -> list[ase.Atoms]:
    """Two lone atoms at each distance [Å] along x, no cell."""
    return [ase.Atoms(numbers=[z1, z2], positions=[[0, 0, 0], [float(d), 0, 0]]) for d in distances]


# -- checks --------------------------------------------------------------------------------------
def bowl_summary(factors, e: np.ndarray) -> dict[str, float]:
    """Uniform-scaling curve: where the minimum is and how far each end rises above it.

    Returns:
        ``argmin_factor``, ``rise_compressed`` = E(first) - E_min and ``rise_expanded``
        = E(last) - E_min [eV], and ``monotone`` (1.0 if the energy falls to the minimum
        and rises after it everywhere, else 0.0).
    """
    factors, e = np.asarray(factors, dtype=float), np.asarray(e, dtype=float)
    k = int(np.argmin(e))
    d = np.diff(e)
    monotone = bool(np.all(d[:k] <= 0) and np.all(d[k:] >= 0))
    return {"argmin_factor": float(factors[k]), "rise_compressed": float(e[0] - e[k]),
            "rise_expanded": float(e[-1] - e[k]), "monotone": float(monotone)}


def offset_free_mae(e: np.ndarray, reference: np.ndarray) -> float:
    """Mean |(e - e.mean()) - (ref - ref.mean())| [same unit]: the profile error with the
    constant offset between two methods removed."""
    e, reference = np.asarray(e, dtype=float), np.asarray(reference, dtype=float)
    return float(np.mean(np.abs((e - e.mean()) - (reference - reference.mean()))))
