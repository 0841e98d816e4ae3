"""Structures -> torch_geometric graphs -> batches -> the model's dict of tensors.

One path for training and inference: ``Structure -> structure_to_data -> collate ->
batch_to_dict``; the ASE calculator and the test kit go through :func:`atoms_to_batch`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import ase
import numpy as np
import torch
from torch_geometric.data import Batch, Data

from mlip.data import keys
from mlip.data.readers import atoms_to_structure
from mlip.data.structure import Structure
from mlip.graph.neighbors import neighbor_list

# Keys copied from a torch_geometric Batch into the model's dict.
BATCH_KEYS = (
    keys.POSITIONS, keys.ATOMIC_NUMBERS, keys.CELL, keys.PBC, keys.NUM_ATOMS, keys.EDGE_INDEX,
    keys.CELL_SHIFTS, keys.ENERGY, keys.FORCES, keys.STRESS, keys.CHARGE, keys.SPIN,
    keys.ENERGY_MASK, keys.FORCES_MASK, keys.STRESS_MASK,
)


class GraphData(Data):
    """A torch_geometric Data whose per-structure fields stack along a new leading axis."""

    def __cat_dim__(self, key: str, value: Any, *args, **kwargs) -> Any:
        if key in (keys.CELL, keys.STRESS):
            return 0  # stored as (1, 3, 3): concatenating gives (B, 3, 3)
        return super().__cat_dim__(key, value, *args, **kwargs)

    def __inc__(self, key: str, value: Any, *args, **kwargs) -> Any:
        if key == keys.EDGE_INDEX:
            return self.num_nodes
        return 0 if key != "batch" else super().__inc__(key, value, *args, **kwargs)


def structure_to_data(
    structure: Structure,
    cutoff: float,
    dtype: torch.dtype | None = None,
    backend: str = "auto",
) -> GraphData:
    """One structure as a graph with its neighbour list at ``cutoff``.

    Missing labels are zero-filled and flagged by the *_MASK fields, so batches stay
    rectangular. The cell is zeroed for non-periodic structures.
    """
    dtype = dtype or torch.get_default_dtype()
    n = structure.num_atoms
    periodic = bool(structure.pbc.any())
    cell = structure.cell if periodic else np.zeros((3, 3))
    edge_index, shifts = neighbor_list(structure.positions, cell, structure.pbc, cutoff,
                                       backend=backend)

    def f(x: np.ndarray | float) -> torch.Tensor:
        return torch.as_tensor(np.asarray(x), dtype=dtype)

    return GraphData(
        **{
            keys.POSITIONS: f(structure.positions),
            keys.ATOMIC_NUMBERS: torch.as_tensor(structure.numbers, dtype=torch.long),
            keys.CELL: f(cell).unsqueeze(0),
            keys.PBC: torch.as_tensor(structure.pbc, dtype=torch.bool).unsqueeze(0),
            keys.NUM_ATOMS: torch.tensor([n], dtype=torch.long),
            keys.EDGE_INDEX: torch.as_tensor(edge_index, dtype=torch.long),
            keys.CELL_SHIFTS: f(shifts),
            # Total energies stay float64: float32 resolves only ~1 meV at 10^4 eV.
            keys.ENERGY: torch.tensor([structure.energy or 0.0], dtype=torch.float64),
            keys.FORCES: f(structure.forces) if structure.forces is not None else torch.zeros(n, 3, dtype=dtype),
            keys.STRESS: (f(structure.stress) if structure.stress is not None else torch.zeros(3, 3, dtype=dtype)).unsqueeze(0),
            keys.CHARGE: f([structure.charge]),
            keys.SPIN: f([structure.spin_multiplicity]),
            keys.ENERGY_MASK: f([float(structure.energy is not None)]),
            keys.FORCES_MASK: f([float(structure.forces is not None)]),
            keys.STRESS_MASK: f([float(structure.stress is not None)]),
        },
        num_nodes=n,
    )


def collate(items: Sequence[Data]) -> Batch:
    """Batch graphs: node/edge fields concatenated, EDGE_INDEX offset, BATCH added."""
    return Batch.from_data_list(list(items))


def batch_to_dict(batch: Batch) -> dict[str, torch.Tensor]:
    """The model boundary: a plain dict with :mod:`mlip.data.keys` names."""
    out = {k: batch[k] for k in BATCH_KEYS if k in batch}
    out[keys.BATCH] = batch.batch
    return out


class GraphDataset(torch.utils.data.Dataset):
    """Wrap any dataset of Structures into one of graphs at ``cutoff``."""

    def __init__(self, structures: torch.utils.data.Dataset, cutoff: float,
                 dtype: torch.dtype | None = None) -> None:
        self.structures = structures
        self.cutoff = float(cutoff)
        self.dtype = dtype or torch.get_default_dtype()

    def __len__(self) -> int:
        return len(self.structures)

    def __getitem__(self, index: int) -> GraphData:
        return structure_to_data(self.structures[index], self.cutoff, self.dtype)


def atoms_to_batch(
    atoms_list: Sequence[ase.Atoms],
    cutoff: float,
    dtype: torch.dtype | None = None,
    device: str | torch.device = "cpu",
) -> dict[str, torch.Tensor]:
    """ASE Atoms -> the model's batch dict on ``device`` (labels included when present)."""
    structures = [atoms_to_structure(a, source="<atoms>", frame=k) for k, a in enumerate(atoms_list)]
    batch = collate([structure_to_data(s, cutoff, dtype) for s in structures])
    return {k: v.to(device) for k, v in batch_to_dict(batch).items()}
