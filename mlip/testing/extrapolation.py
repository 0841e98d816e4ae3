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
from mlip.data.dissociation import bonds, dimer, side  # noqa: F401 - the probes' geometry
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


def rotatable_bonds(atoms: ase.Atoms, min_side: int = 2) -> list[tuple[int, int]]:
    """Bonds outside rings between heavy atoms with at least ``min_side`` atoms on each side
    (so turning one side changes the geometry)."""
    out = []
    for i, j in bonds(atoms):
        if atoms.numbers[i] == 1 or atoms.numbers[j] == 1:
            continue
        mask = side(atoms, i, j)
        if mask is not None and min_side <= mask.sum() <= len(atoms) - min_side:
            out.append((i, j))
    return out


def torsion_scan(atoms: ase.Atoms, i: int, j: int, angles_deg) -> list[ase.Atoms]:
    """Rigid scan: j's side of bond i-j turned about the i->j axis by each angle [deg]."""
    moving = side(atoms, i, j)
    if moving is None:
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
        moved = a.positions[moving] - atoms.positions[j]
        a.positions[moving] = atoms.positions[j] + moved @ rot.T
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


def proton_transfer_endpoints(atoms: ase.Atoms, max_rmsd: float = 0.3
                              ) -> tuple[ase.Atoms, ase.Atoms, int] | None:
    """An intramolecular proton transfer between two equivalent forms (the enol H of
    acetylacetone or malonaldehyde hopping between its O atoms): the molecule and its mirror
    image through the plane halfway between donor and acceptor, with the atoms re-indexed so
    each keeps its identity (heavy atoms swap with their mirror partners; the moving H maps
    onto itself on the acceptor's side).

    Returns:
        (initial, final, index of the moving H), or None when the molecule has no H bonded
        to an O or N with another O or N within 2.2 Å of it, or when its mirror image does
        does not match its heavy atoms within ``max_rmsd`` [Å] RMSD (not two equivalent
        forms).
    """
    from scipy.optimize import linear_sum_assignment

    pos, z = atoms.positions, atoms.numbers
    for h, donor in [(i, j) for i, j in bonds(atoms) if z[i] == 1 and z[j] in (7, 8)] + \
            [(j, i) for i, j in bonds(atoms) if z[j] == 1 and z[i] in (7, 8)]:
        acceptors = [k for k in range(len(atoms)) if k != donor and z[k] in (7, 8)
                     and np.linalg.norm(pos[k] - pos[h]) < 2.2]
        for acceptor in acceptors:
            normal = pos[acceptor] - pos[donor]
            normal = normal / np.linalg.norm(normal)
            mid = 0.5 * (pos[acceptor] + pos[donor])
            mirror = pos - 2.0 * ((pos - mid) @ normal)[:, None] * normal
            order = np.arange(len(atoms))  # order[m] = k: the image of k lands on m
            for element in set(z.tolist()):
                idx = np.nonzero(z == element)[0]
                cost = np.linalg.norm(pos[idx][:, None] - mirror[idx][None, :], axis=-1)
                rows, cols = linear_sum_assignment(cost)
                order[idx[rows]] = idx[cols]
            if order[h] != h:
                continue
            final = mirror[order]
            heavy = z > 1  # H atoms may turn with their methyl groups
            if float(np.sqrt(((final[heavy] - pos[heavy]) ** 2).sum(-1).mean())) > max_rmsd:
                continue
            initial = ase.Atoms(numbers=z, positions=pos.copy())
            return initial, ase.Atoms(numbers=z, positions=final), int(h)
    return None


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
