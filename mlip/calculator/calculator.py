"""ASE calculator: the trained model as a first-class ASE citizen, on CPU or CUDA.

The graph is built with the training code (:mod:`mlip.graph`), at ``cutoff + skin``, and
reused while every atom moved less than ``skin / 2`` since the last build (Verlet skin);
each call filters the edges to ``|r_ij| < cutoff`` on the device, so results equal a fresh
build for any backbone. Static tensors stay on the device; per call only positions go in
and energy/forces(/stress) come out.
"""

from __future__ import annotations

import copy
from pathlib import Path

import ase
import numpy as np
import torch
from ase.calculators.calculator import Calculator, PropertyNotImplementedError, all_changes
from ase.data import chemical_symbols

from mlip.data import keys
from mlip.graph.edges import edge_vectors
from mlip.graph.neighbors import neighbor_list
from mlip.model.io import load_model
from mlip.model.potential import Potential


class UnknownElementError(ValueError):
    """The structure contains elements the model was not trained on."""


class AtomsTooCloseError(ValueError):
    """Two atoms are closer than the calculator's minimum distance."""


class NonFiniteOutputError(FloatingPointError):
    """The model returned NaN or inf."""


def resolve_device(device: str | torch.device) -> torch.device:
    """'auto' -> cuda when available, else cpu."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class MLIPCalculator(Calculator):
    """ASE calculator for an mlip model.

    Args:
        model: a deployable model file (``model.pt`` from ``mlip train``; loaded with
            ``weights_only=True``) or a :class:`~mlip.model.potential.Potential`.
        device: "cpu", "cuda" or "auto".
        dtype: torch.float32/float64 (or their names); default the model's.
        skin: Verlet skin [Å]; 0 rebuilds the neighbour list every call.
        min_distance: raise when two atoms are closer than this [Å]; None disables.
        compile: torch.compile the backbone for inference (same results, faster on
            repeated calls of the same system size).
    """

    implemented_properties = ["energy", "free_energy", "forces", "stress", "energies"]

    def __init__(
        self,
        model: str | Path | Potential,
        device: str = "auto",
        dtype: torch.dtype | str | None = None,
        skin: float = 0.5,
        min_distance: float | None = 0.5,
        compile: bool = False,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.device = resolve_device(device)
        if isinstance(dtype, str):
            dtype = getattr(torch, dtype)
        if isinstance(model, Potential):
            self.model = model.to(self.device)
            if dtype is not None:
                self.model = self.model.to(dtype)
        else:
            self.model = load_model(model, device=self.device, dtype=dtype)
            for p in self.model.parameters():
                p.requires_grad_(False)
        self.model.eval()
        self.dtype = next(self.model.parameters()).dtype
        self.cutoff = self.model.cutoff
        self.skin = float(skin)
        self.min_distance = min_distance
        if compile:
            # Compile a shallow copy so a Potential passed in is left as it was.
            compiled = copy.copy(self.model)
            compiled._modules = dict(self.model._modules)
            compiled.backbone = torch.compile(self.model.backbone, dynamic=True)
            self.model = compiled
        self.num_builds = 0  # neighbour-list builds so far (for tests and benchmarks)
        self._graph: dict[str, torch.Tensor] | None = None
        self._ref_positions: np.ndarray | None = None
        self._ref_key: tuple | None = None

    # -- graph ------------------------------------------------------------------------------
    def _check_elements(self, numbers: np.ndarray) -> None:
        known = set(self.model.atomic_numbers)
        bad = [i for i, z in enumerate(numbers) if int(z) not in known]
        if bad:
            names = sorted({chemical_symbols[int(numbers[i])] for i in bad})
            trained = [chemical_symbols[z] for z in self.model.atomic_numbers]
            raise UnknownElementError(
                f"element(s) {names} at atom indices {bad[:10]}{' ...' if len(bad) > 10 else ''} "
                f"are not in the model (trained on {trained})"
            )

    def _needs_rebuild(self, atoms: ase.Atoms) -> bool:
        key = (atoms.numbers.tobytes(), atoms.cell.array.tobytes(), atoms.pbc.tobytes())
        if self._graph is None or key != self._ref_key or self.skin <= 0:
            return True
        moved = np.linalg.norm(atoms.positions - self._ref_positions, axis=1).max()
        return bool(moved >= 0.5 * self.skin)

    def _build(self, atoms: ase.Atoms) -> None:
        self._check_elements(atoms.numbers)
        periodic = bool(atoms.pbc.any())
        cell = atoms.cell.array if periodic else np.zeros((3, 3))
        radius = self.cutoff + max(self.skin, 0.0)
        if self.device.type == "cpu":
            ei, shifts = neighbor_list(atoms.positions, cell, atoms.pbc, radius)
            ei, shifts = torch.from_numpy(ei), torch.from_numpy(shifts)
        else:
            ei, shifts = neighbor_list(
                torch.tensor(atoms.positions, device=self.device),
                torch.tensor(cell, device=self.device),
                torch.tensor(atoms.pbc, device=self.device), radius)
        dev, dt = self.device, self.dtype
        n = len(atoms)
        self._graph = {
            keys.ATOMIC_NUMBERS: torch.as_tensor(atoms.numbers, dtype=torch.long, device=dev),
            keys.CELL: torch.as_tensor(cell, dtype=dt, device=dev).unsqueeze(0),
            keys.PBC: torch.as_tensor(atoms.pbc, device=dev).unsqueeze(0),
            keys.NUM_ATOMS: torch.tensor([n], device=dev),
            keys.BATCH: torch.zeros(n, dtype=torch.long, device=dev),
            "full_edge_index": ei.to(dev),
            "full_shifts": shifts.to(device=dev, dtype=dt),
        }
        self._ref_positions = atoms.positions.copy()
        self._ref_key = (atoms.numbers.tobytes(), atoms.cell.array.tobytes(), atoms.pbc.tobytes())
        self.num_builds += 1

    def batch_for(self, atoms: ase.Atoms) -> dict[str, torch.Tensor]:
        """The model's input for ``atoms`` (reusing the skin neighbour list when valid)."""
        if self._needs_rebuild(atoms):
            self._build(atoms)
        g = self._graph
        pos = torch.as_tensor(atoms.positions, dtype=self.dtype, device=self.device)
        ei, shifts = g["full_edge_index"], g["full_shifts"]
        with torch.no_grad():
            length = edge_vectors(pos, ei, shifts, g[keys.CELL], g[keys.BATCH]).norm(dim=1)
            inside = length < self.cutoff
        data = {k: v for k, v in g.items() if not k.startswith("full_")}
        data.update({keys.POSITIONS: pos, keys.EDGE_INDEX: ei[:, inside],
                     keys.CELL_SHIFTS: shifts[inside]})
        if self.min_distance is not None and inside.any():
            closest = length[inside].min()
            if float(closest) < self.min_distance:
                k = int(torch.argmin(torch.where(inside, length, torch.inf)))
                j, i = (int(x) for x in ei[:, k])
                raise AtomsTooCloseError(
                    f"atoms {i} ({atoms.get_chemical_symbols()[i]}) and {j} "
                    f"({atoms.get_chemical_symbols()[j]}) are {float(closest):.3f} Å apart, "
                    f"closer than min_distance={self.min_distance} Å"
                )
        return data

    # -- ASE protocol -----------------------------------------------------------------------------
    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes) -> None:
        super().calculate(atoms, properties, system_changes)
        atoms = self.atoms
        periodic = bool(atoms.pbc.any())
        if "stress" in properties and not periodic:
            raise PropertyNotImplementedError("stress is only defined for periodic systems")
        data = self.batch_for(atoms)
        out = self.model(data, compute_forces=True, compute_stress=periodic)
        energy = out[keys.ENERGY].detach()
        forces = out[keys.FORCES].detach()
        values = [energy, forces] + ([out[keys.STRESS].detach()] if periodic else [])
        if not all(bool(torch.isfinite(v).all()) for v in values):
            raise NonFiniteOutputError(
                f"the model returned NaN/inf for {atoms.get_chemical_formula()} "
                "(atoms far outside the training distribution?)"
            )
        e = float(energy[0])
        self.results = {
            "energy": e,
            "free_energy": e,
            "forces": forces.cpu().double().numpy(),
            "energies": out[keys.ATOMIC_ENERGIES].detach().cpu().double().numpy(),
        }
        if periodic:
            s = out[keys.STRESS].detach()[0].cpu().double().numpy()
            self.results["stress"] = np.array([s[0, 0], s[1, 1], s[2, 2], s[1, 2], s[0, 2], s[0, 1]])
