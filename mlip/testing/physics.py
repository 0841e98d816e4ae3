"""Physics checks for a Potential: symmetry, derivatives, locality, batching.

Each ``measure_*`` function returns the measured error (so approximately equivariant
backbones can report it); tests assert it below a dtype-aware tolerance.
"""

from __future__ import annotations

import ase
import numpy as np
import torch

from mlip.data import keys
from mlip.graph.build import atoms_to_batch
from mlip.model.potential import Potential
from mlip.ops.rotations import random_rotations


def predict(
    model: Potential, atoms_list: list[ase.Atoms], stress: bool = False
) -> dict[str, np.ndarray]:
    """Energies (B,), forces (N, 3) and optionally stress (B, 3, 3) as float64 numpy."""
    p = next(model.parameters())
    data = atoms_to_batch(atoms_list, model.cutoff, dtype=p.dtype, device=p.device)
    out = model(data, compute_forces=True, compute_stress=stress)
    return {k: v.detach().cpu().double().numpy() for k, v in out.items() if k in
            (keys.ENERGY, keys.FORCES, keys.STRESS)}


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12))


def transform(atoms: ase.Atoms, rotation: np.ndarray, translation: np.ndarray) -> ase.Atoms:
    """Rotate (and reflect) positions and cell, then translate."""
    out = atoms.copy()
    out.positions = atoms.positions @ rotation.T + translation
    if atoms.pbc.any():  # periodic: the cell turns with the atoms
        out.cell = atoms.cell.array @ rotation.T
    return out


def symmetry_errors(model: Potential, atoms: ase.Atoms, rotations: np.ndarray) -> dict[str, np.ndarray]:
    """The one definition of the measured symmetry error (tests, ``mlip eval --equivariance``).

    For each (proper or improper) rotation R: the energy error |E(Rx) - E(x)| / n [eV/atom]
    and the force error ||F(Rx) - F(x) R^T|| / ||F(x)|| (Frobenius norms, relative). The
    structure and all its rotated copies go through the model in one batch.

    Args:
        model: the potential.
        atoms: the structure (a periodic cell is rotated with it).
        rotations: (R, 3, 3).

    Returns:
        {"energy": (R,) [eV/atom], "forces": (R,)}.
    """
    copies = [atoms] + [transform(atoms, r, np.zeros(3)) for r in rotations]
    out = predict(model, copies)
    n = len(atoms)
    energy, forces = out[keys.ENERGY], out[keys.FORCES].reshape(len(copies), n, 3)
    ref_norm = max(np.linalg.norm(forces[0]), 1e-12)
    rotated_ref = np.einsum("nj,rij->rni", forces[0], rotations)
    return {"energy": np.abs(energy[1:] - energy[0]) / n,
            "forces": np.linalg.norm((forces[1:] - rotated_ref).reshape(len(rotations), -1),
                                     axis=1) / ref_norm}


def measure_rotation_error(
    model: Potential, atoms: ase.Atoms, num: int = 5, reflect: bool = False, seed: int = 0
) -> dict[str, float]:
    """:func:`symmetry_errors` over ``num`` Haar-random rotations (improper with ``reflect``):
    "energy" / "forces" are the maxima, "energy_mean" / "forces_mean" the means."""
    g = torch.Generator().manual_seed(seed)
    rotations = random_rotations(num, g, reflect=reflect).numpy()
    err = symmetry_errors(model, atoms, rotations)
    return {"energy": float(err["energy"].max()), "forces": float(err["forces"].max()),
            "energy_mean": float(err["energy"].mean()), "forces_mean": float(err["forces"].mean())}


def measure_translation_error(model: Potential, atoms: ase.Atoms, seed: int = 0) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    ref = predict(model, [atoms])
    out = predict(model, [transform(atoms, np.eye(3), rng.normal(scale=3.0, size=3))])
    return {"energy": _rel(out[keys.ENERGY], ref[keys.ENERGY]),
            "forces": _rel(out[keys.FORCES], ref[keys.FORCES])}


def measure_permutation_error(model: Potential, atoms: ase.Atoms, seed: int = 0) -> dict[str, float]:
    perm = np.random.default_rng(seed).permutation(len(atoms))
    ref = predict(model, [atoms])
    out = predict(model, [atoms[perm]])
    return {"energy": _rel(out[keys.ENERGY], ref[keys.ENERGY]),
            "forces": _rel(out[keys.FORCES], ref[keys.FORCES][perm])}


def measure_batch_error(model: Potential, atoms_list: list[ase.Atoms]) -> dict[str, float]:
    """Batched prediction vs one structure at a time."""
    batched = predict(model, atoms_list)
    singles = [predict(model, [a]) for a in atoms_list]
    e = np.concatenate([s[keys.ENERGY] for s in singles])
    f = np.concatenate([s[keys.FORCES] for s in singles])
    return {"energy": _rel(batched[keys.ENERGY], e), "forces": _rel(batched[keys.FORCES], f)}


# Five-point central-difference stencil: f'(x) ~ sum_k c_k f(x + k h) / h, error O(h^4).
FD_STENCIL = ((-2, 1 / 12), (-1, -8 / 12), (1, 8 / 12), (2, -1 / 12))


def measure_force_fd_error(
    model: Potential, atoms: ase.Atoms, h: float = 1e-3, num_atoms: int = 3, seed: int = 0
) -> float:
    """Max |F - (-dE/dx by 5-point central differences)| / max|F| over a few atoms.

    Use float64: total energies of thousands of eV leave ~1e-12 eV of rounding, which a
    step of 1e-3 Å turns into ~1e-9 eV/Å; the O(h^4) truncation error is smaller still.
    """
    rng = np.random.default_rng(seed)
    forces = predict(model, [atoms])[keys.FORCES]
    worst = 0.0
    for i in rng.choice(len(atoms), size=min(num_atoms, len(atoms)), replace=False):
        for k in range(3):
            grad = 0.0
            for step, coeff in FD_STENCIL:
                moved = atoms.copy()
                moved.positions[i, k] += step * h
                grad += coeff * predict(model, [moved])[keys.ENERGY][0] / h
            worst = max(worst, abs(-grad - forces[i, k]))
    return worst / max(np.abs(forces).max(), 1e-12)


def measure_stress_fd_error(model: Potential, atoms: ase.Atoms, h: float = 1e-4) -> float:
    """Max |stress - (1/V) dE/d(eps) by 5-point differences of strained cells| / max|stress|."""
    stress = predict(model, [atoms], stress=True)[keys.STRESS][0]
    volume = atoms.get_volume()
    fd = np.zeros((3, 3))
    for a in range(3):
        for b in range(3):
            for step, coeff in FD_STENCIL:
                eps = np.zeros((3, 3))
                eps[a, b] += 0.5 * step * h
                eps[b, a] += 0.5 * step * h
                strained = atoms.copy()
                strained.set_cell(atoms.cell.array @ (np.eye(3) + eps), scale_atoms=True)
                fd[a, b] += coeff * predict(model, [strained])[keys.ENERGY][0] / h / volume
    return float(np.abs(fd - stress).max() / max(np.abs(stress).max(), 1e-12))


def measure_locality_error(model: Potential, atoms: ase.Atoms) -> dict[str, float]:
    """Add a far-away atom (beyond the cutoff of all): E must grow by exactly that atom's
    isolated energy and existing forces must not change."""
    ref = predict(model, [atoms])
    lone = ase.Atoms(numbers=[atoms.numbers[0]], positions=[[0.0, 0.0, 0.0]])
    e_lone = predict(model, [lone])[keys.ENERGY][0]
    far = atoms.positions.max(axis=0) + 2.0 * model.cutoff
    combined = atoms + ase.Atoms(numbers=[atoms.numbers[0]], positions=[far])
    out = predict(model, [combined])
    return {
        "energy": abs(out[keys.ENERGY][0] - ref[keys.ENERGY][0] - e_lone)
        / max(abs(ref[keys.ENERGY][0]), 1e-12),
        "forces": _rel(out[keys.FORCES][:-1], ref[keys.FORCES]),
    }


def measure_cutoff_continuity(model: Potential, z: tuple[int, int] = (6, 1), num: int = 5) -> float:
    """|E(r) - E(inf)| for a dimer just inside the cutoff: must vanish smoothly."""
    far = ase.Atoms(numbers=list(z), positions=[[0, 0, 0], [0, 0, 3 * model.cutoff]])
    e_inf = predict(model, [far])[keys.ENERGY][0]
    worst = 0.0
    for delta in np.logspace(-6, -4, num):
        near = ase.Atoms(numbers=list(z), positions=[[0, 0, 0], [0, 0, model.cutoff - delta]])
        worst = max(worst, abs(predict(model, [near])[keys.ENERGY][0] - e_inf))
    return worst


def measure_isolated_atom_error(model: Potential) -> float:
    """Max |E(single atom) - E0| over the model's elements [eV]."""
    atoms_list = [ase.Atoms(numbers=[z], positions=[[0.0, 0.0, 0.0]]) for z in model.atomic_numbers]
    energies = predict(model, atoms_list)[keys.ENERGY]
    return float(np.abs(energies - model.e0s.detach().cpu().double().numpy()).max())


def measure_supercell_error(model: Potential, atoms: ase.Atoms) -> float:
    """Periodic-image invariance: E(2x1x1 supercell) = 2 E(cell), relative."""
    e1 = predict(model, [atoms])[keys.ENERGY][0]
    e2 = predict(model, [atoms.repeat((2, 1, 1))])[keys.ENERGY][0]
    return abs(e2 - 2 * e1) / max(abs(e1), 1e-12)
