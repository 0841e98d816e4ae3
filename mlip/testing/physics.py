"""Physics checks for a Potential: symmetry, derivatives, locality, batching, dtypes.

Each ``measure_*`` function returns the measured error (so approximately equivariant
backbones can report it); tests assert it below a dtype-aware tolerance. One convention
throughout: energy errors are absolute per atom [eV/atom] (total energies carry E0s of
thousands of eV, which would hide an error relative to them), force and stress errors are
relative to the largest reference component (max |a - b| / max |b|) unless stated.
:mod:`mlip.testing.backbone_suite` runs all of them on every backbone.
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
    return as_numpy(out)


def as_numpy(out: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """ENERGY, FORCES and STRESS of a model output as float64 numpy (other keys dropped)."""
    return {k: v.detach().cpu().double().numpy() for k, v in out.items() if k in
            (keys.ENERGY, keys.FORCES, keys.STRESS)}


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12))


def compare(out: dict[str, np.ndarray], ref: dict[str, np.ndarray],
            num_atoms: np.ndarray | int) -> dict[str, float]:
    """The one comparison of two predictions of the same structures (see the module
    docstring): "energy" = max_b |E_b - E_b^ref| / n_b [eV/atom], "forces" and (where both
    have it) "stress" relative to the largest reference component."""
    n = np.broadcast_to(np.asarray(num_atoms, dtype=float), ref[keys.ENERGY].shape)
    err = {"energy": float(np.max(np.abs(out[keys.ENERGY] - ref[keys.ENERGY]) / n)),
           "forces": _rel(out[keys.FORCES], ref[keys.FORCES])}
    if keys.STRESS in out and keys.STRESS in ref:
        err["stress"] = _rel(out[keys.STRESS], ref[keys.STRESS])
    return err


def transform(atoms: ase.Atoms, rotation: np.ndarray, translation: np.ndarray) -> ase.Atoms:
    """Rotate (and reflect) positions and cell, then translate."""
    out = atoms.copy()
    out.positions = atoms.positions @ rotation.T + translation
    if atoms.pbc.any():  # periodic: the cell turns with the atoms
        out.cell = atoms.cell.array @ rotation.T
    return out


def symmetry_errors(model: Potential, atoms: ase.Atoms, rotations: np.ndarray) -> dict[str, np.ndarray]:
    """The one definition of the measured symmetry error (tests, ``mlip eval --equivariance``).

    For each (proper or improper) rotation R: the energy error |E(Rx) - E(x)| / n [eV/atom],
    the force error ||F(Rx) - F(x) R^T|| / ||F(x)|| and, for a periodic structure, the
    stress error ||S(Rx) - R S(x) R^T|| / ||S(x)|| (Frobenius norms, relative). The
    structure and all its rotated copies go through the model in one batch.

    Args:
        model: the potential.
        atoms: the structure (a periodic cell is rotated with it).
        rotations: (R, 3, 3).

    Returns:
        {"energy": (R,) [eV/atom], "forces": (R,)}, and "stress": (R,) if periodic.
    """
    periodic = bool(atoms.pbc.any())
    copies = [atoms] + [transform(atoms, r, np.zeros(3)) for r in rotations]
    out = predict(model, copies, stress=periodic)
    n = len(atoms)
    energy, forces = out[keys.ENERGY], out[keys.FORCES].reshape(len(copies), n, 3)
    ref_norm = max(np.linalg.norm(forces[0]), 1e-12)
    rotated_ref = np.einsum("nj,rij->rni", forces[0], rotations)
    err = {"energy": np.abs(energy[1:] - energy[0]) / n,
           "forces": np.linalg.norm((forces[1:] - rotated_ref).reshape(len(rotations), -1),
                                    axis=1) / ref_norm}
    if periodic:
        stress = out[keys.STRESS]
        rotated = np.einsum("rij,jk,rlk->ril", rotations, stress[0], rotations)
        err["stress"] = (np.linalg.norm((stress[1:] - rotated).reshape(len(rotations), -1), axis=1)
                         / max(np.linalg.norm(stress[0]), 1e-12))
    return err


def measure_rotation_error(
    model: Potential, atoms: ase.Atoms, num: int = 5, reflect: bool = False, seed: int = 0
) -> dict[str, float]:
    """:func:`symmetry_errors` over ``num`` Haar-random rotations (improper with ``reflect``):
    "energy" / "forces" (/ "stress") are the maxima, "energy_mean" / "forces_mean"
    (/ "stress_mean") the means."""
    g = torch.Generator().manual_seed(seed)
    rotations = random_rotations(num, g, reflect=reflect).numpy()
    err = symmetry_errors(model, atoms, rotations)
    return {**{k: float(v.max()) for k, v in err.items()},
            **{f"{k}_mean": float(v.mean()) for k, v in err.items()}}


def measure_translation_error(model: Potential, atoms: ase.Atoms, seed: int = 0) -> dict[str, float]:
    """A random shift of every atom (~3 Å per component): :func:`compare` with the original
    (stress too for a periodic structure)."""
    rng = np.random.default_rng(seed)
    periodic = bool(atoms.pbc.any())
    ref = predict(model, [atoms], stress=periodic)
    out = predict(model, [transform(atoms, np.eye(3), rng.normal(scale=3.0, size=3))], stress=periodic)
    return compare(out, ref, len(atoms))


def measure_permutation_error(model: Potential, atoms: ase.Atoms, seed: int = 0) -> dict[str, float]:
    """A random reordering of the atoms: :func:`compare` with the original, forces permuted."""
    perm = np.random.default_rng(seed).permutation(len(atoms))
    periodic = bool(atoms.pbc.any())
    ref = predict(model, [atoms], stress=periodic)
    ref[keys.FORCES] = ref[keys.FORCES][perm]
    return compare(predict(model, [atoms[perm]], stress=periodic), ref, len(atoms))


def measure_batch_error(model: Potential, atoms_list: list[ase.Atoms]) -> dict[str, float]:
    """Batched prediction vs one structure at a time (:func:`compare`; stress when every
    structure is periodic)."""
    stress = all(a.pbc.any() for a in atoms_list)
    batched = predict(model, atoms_list, stress=stress)
    singles = [predict(model, [a], stress=stress) for a in atoms_list]
    ref = {k: np.concatenate([s[k] for s in singles]) for k in batched}
    return compare(batched, ref, np.array([len(a) for a in atoms_list]))


def measure_dtype_error(model: Potential, reference: Potential, atoms_list: list[ase.Atoms],
                        stress: bool = False) -> dict[str, float]:
    """``model`` (e.g. float32) against ``reference`` (the same weights in float64), each
    in its own dtype: :func:`compare` over the structures in one batch."""
    n = np.array([len(a) for a in atoms_list])
    return compare(predict(model, atoms_list, stress), predict(reference, atoms_list, stress), n)


# Five-point central-difference stencil: f'(x) ~ sum_k c_k f(x + k h) / h, error O(h^4).
FD_STENCIL = ((-2, 1 / 12), (-1, -8 / 12), (1, 8 / 12), (2, -1 / 12))


def measure_force_fd_error(
    model: Potential, atoms: ase.Atoms, h: float = 1e-3, num_atoms: int = 3, seed: int = 0
) -> float:
    """Max |F - (-dE/dx by 5-point central differences)| / max|F| over a few atoms.

    Use float64: total energies of thousands of eV leave ~1e-12 eV of rounding, which a
    step of 1e-3 Å turns into ~1e-9 eV/Å; the O(h^4) truncation error is smaller still.
    All displaced copies go through the model in one batch.
    """
    rng = np.random.default_rng(seed)
    forces = predict(model, [atoms])[keys.FORCES]
    chosen = rng.choice(len(atoms), size=min(num_atoms, len(atoms)), replace=False)
    moved = []
    for i in chosen:
        for k in range(3):
            for step, _ in FD_STENCIL:
                copy = atoms.copy()
                copy.positions[i, k] += step * h
                moved.append(copy)
    energies = predict(model, moved)[keys.ENERGY].reshape(len(chosen), 3, len(FD_STENCIL))
    coeffs = np.array([c for _, c in FD_STENCIL])
    fd_forces = -(energies * coeffs).sum(-1) / h
    return float(np.abs(fd_forces - forces[chosen]).max() / max(np.abs(forces).max(), 1e-12))


def measure_stress_fd_error(model: Potential, atoms: ase.Atoms, h: float = 1e-4) -> float:
    """Max |stress - (1/V) dE/d(eps) by 5-point differences of strained cells| / max|stress|
    (all strained cells in one batch)."""
    stress = predict(model, [atoms], stress=True)[keys.STRESS][0]
    volume = atoms.get_volume()
    strained = []
    for a in range(3):
        for b in range(3):
            for step, _ in FD_STENCIL:
                eps = np.zeros((3, 3))
                eps[a, b] += 0.5 * step * h
                eps[b, a] += 0.5 * step * h
                copy = atoms.copy()
                copy.set_cell(atoms.cell.array @ (np.eye(3) + eps), scale_atoms=True)
                strained.append(copy)
    energies = predict(model, strained)[keys.ENERGY].reshape(3, 3, len(FD_STENCIL))
    fd = (energies * np.array([c for _, c in FD_STENCIL])).sum(-1) / h / volume
    return float(np.abs(fd - stress).max() / max(np.abs(stress).max(), 1e-12))


def measure_locality_error(model: Potential, atoms: ase.Atoms) -> dict[str, float]:
    """A lone atom beyond the cutoff of all the others, at two far-apart places.

    Returns:
        "energy": max over both places of |E(atoms + lone) - E(atoms) - E0(lone)| / n
        [eV/atom] (the molecule's energy is unchanged, the lone atom adds exactly its E0);
        "forces": max over both places of the change of the others' forces and of the
        lone atom's own force, relative to max |F(atoms)|.
    """
    if atoms.pbc.any():
        raise ValueError("measure_locality_error needs a non-periodic structure")
    ref = predict(model, [atoms])
    z = int(atoms.numbers[0])
    e0 = float(model.e0s.detach().cpu().double()[model.atomic_numbers.index(z)])
    top = atoms.positions.max(axis=0)
    places = [top + 1.5 * model.cutoff, top + np.array([3.0, -1.0, 2.0]) * model.cutoff]
    combined = [atoms + ase.Atoms(numbers=[z], positions=[p]) for p in places]
    out = predict(model, combined)
    n = len(atoms) + 1
    energy = np.abs(out[keys.ENERGY] - ref[keys.ENERGY][0] - e0) / n
    forces = out[keys.FORCES].reshape(len(places), n, 3)
    scale = max(np.abs(ref[keys.FORCES]).max(), 1e-12)
    moved = np.abs(forces[:, :-1] - ref[keys.FORCES]).max()
    lone = np.abs(forces[:, -1]).max()
    return {"energy": float(energy.max()), "forces": float(max(moved, lone) / scale)}


def measure_cutoff_continuity(model: Potential, z: tuple[int, int] | None = None,
                              num: int = 5) -> dict[str, float]:
    """A dimer just inside the cutoff (r_c - delta, delta from 1e-6 to 1e-4 Å) against the
    same atoms far apart: "energy" = max |E(r) - E(inf)| [eV], "forces" = max |F(r)|
    [eV/Å]; both must vanish (smoothly) at the cutoff. ``z``: the two elements (default:
    the model's first and last)."""
    z = z or (model.atomic_numbers[0], model.atomic_numbers[-1])
    far = ase.Atoms(numbers=list(z), positions=[[0, 0, 0], [0, 0, 3 * model.cutoff]])
    deltas = np.logspace(-6, -4, num)
    near = [ase.Atoms(numbers=list(z), positions=[[0, 0, 0], [0, 0, model.cutoff - d]])
            for d in deltas]
    e_inf = predict(model, [far])[keys.ENERGY][0]
    out = predict(model, near)
    return {"energy": float(np.abs(out[keys.ENERGY] - e_inf).max()),
            "forces": float(np.abs(out[keys.FORCES]).max())}


def measure_isolated_atom_error(model: Potential) -> float:
    """Max |E(single atom) - E0| over the model's elements [eV]."""
    atoms_list = [ase.Atoms(numbers=[z], positions=[[0.0, 0.0, 0.0]]) for z in model.atomic_numbers]
    energies = predict(model, atoms_list)[keys.ENERGY]
    return float(np.abs(energies - model.e0s.detach().cpu().double().numpy()).max())


def measure_supercell_error(model: Potential, atoms: ase.Atoms,
                            repeat: tuple[int, int, int] = (2, 1, 1)) -> dict[str, float]:
    """Periodic-image invariance: a supercell (``atoms.repeat(repeat)``) against the cell,
    by :func:`compare`: energy k E(cell) for k images, the cell's forces on every image,
    the same stress (intensive)."""
    ref = predict(model, [atoms], stress=True)
    images = int(np.prod(repeat))
    tiled = {keys.ENERGY: images * ref[keys.ENERGY], keys.STRESS: ref[keys.STRESS],
             keys.FORCES: np.tile(ref[keys.FORCES], (images, 1))}  # ASE repeats image by image
    return compare(predict(model, [atoms.repeat(repeat)], stress=True), tiled, images * len(atoms))
