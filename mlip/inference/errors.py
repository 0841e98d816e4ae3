"""What the inference engine refuses, and the one place its messages are written.

Every adapter (ASE calculator, torch-sim model, batched replicas, ``mlip md``) raises these
through :class:`mlip.inference.engine.ForceField`; an adapter only says which system it
means (``where``: "replica 2", "torch-sim system 0", or nothing for a single system).
"""

from __future__ import annotations

import torch
from ase.data import chemical_symbols

from mlip.data import keys
from mlip.model.potential import UnknownElementError

__all__ = ["AtomsTooCloseError", "NonFiniteOutputError", "UnknownElementError",
           "too_close_message", "non_finite_message"]


class AtomsTooCloseError(ValueError):
    """Two atoms are closer than the engine's minimum distance."""


class NonFiniteOutputError(FloatingPointError):
    """The model returned NaN or inf."""


def _prefix(where: str) -> str:
    return f"{where}: " if where else ""


def too_close_message(numbers, i: int, j: int, distance: float, min_distance: float,
                      where: str = "") -> str:
    """The one-line error for atoms ``i`` and ``j`` (indices within their system, whose
    atomic numbers are ``numbers``) closer than ``min_distance`` [Å]."""
    return (f"{_prefix(where)}atoms {i} ({chemical_symbols[int(numbers[i])]}) and {j} "
            f"({chemical_symbols[int(numbers[j])]}) are {distance:.3f} Å apart, closer than "
            f"min_distance={min_distance} Å (a broken geometry? min_distance=None disables "
            "the check)")


def non_finite_message(what: str, atoms: list[int] | None = None) -> str:
    """The one-line error for NaN/inf outputs of ``what`` (a formula, or the systems),
    naming up to ten offending atom indices when known."""
    where = f" (non-finite at atom indices {atoms[:10]})" if atoms else ""
    return (f"the model returned NaN/inf for {what}{where}: the structure is probably far "
            "outside the training data (check the geometry; in MD, a smaller timestep)")


def non_finite_systems(out: dict[str, torch.Tensor], batch: torch.Tensor) -> torch.Tensor:
    """(B,) bool on the device: the structures whose energy, forces, atomic energies or
    stress in ``out`` are not all finite (no host read)."""
    energy = out[keys.ENERGY]
    bad = ~torch.isfinite(energy)
    per_atom = []
    if keys.FORCES in out:
        per_atom.append(~torch.isfinite(out[keys.FORCES]).all(dim=1))
    if keys.ATOMIC_ENERGIES in out:
        per_atom.append(~torch.isfinite(out[keys.ATOMIC_ENERGIES]))
    if per_atom:
        atoms = torch.stack(per_atom).any(dim=0).to(torch.float64)
        bad = bad | (torch.zeros_like(energy, dtype=torch.float64).index_add(0, batch, atoms) > 0)
    if keys.STRESS in out:
        bad = bad | ~torch.isfinite(out[keys.STRESS]).flatten(1).all(dim=1)
    return bad
