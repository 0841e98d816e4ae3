"""Structures -> the model's input dict: the one input path.

``structure_graph`` turns one :class:`~mlip.data.structure.Structure` into its tensors and
neighbour list; :func:`collate` concatenates any number of them into the batch dict the
model takes (edge indices offset, BATCH added). Training and evaluation batches (through
:class:`GraphDataset` and a DataLoader with ``collate_fn=collate``), the ASE calculator and
the batched MD replicas (through :class:`mlip.graph.skin.SkinNeighborList`) and the physics
test kit (:func:`atoms_to_batch`) all build their input with these two functions.

Per-structure tensors carry a leading axis of 1 (CELL (1, 3, 3), ENERGY (1,), ...), per-atom
ones (n, ...), per-edge ones (E, ...), so every key concatenates along its first axis;
EDGE_INDEX (2, E) is local to the structure until :func:`collate` offsets it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import ase
import numpy as np
import torch

from mlip.data import keys
from mlip.data.readers import atoms_to_structure
from mlip.data.structure import Structure
from mlip.graph.neighbors import neighbor_list


def structure_graph(
    structure: Structure,
    cutoff: float,
    dtype: torch.dtype | None = None,
    labels: bool = True,
) -> dict[str, torch.Tensor]:
    """One structure's tensors with its neighbour list at ``cutoff`` [Å].

    Args:
        structure: the structure (a free molecule has pbc all False; its cell is zeroed).
        cutoff: neighbour radius [Å].
        dtype: float dtype of positions, cell, shifts and labels (default: torch's default).
        labels: include ENERGY/FORCES/STRESS/CHARGE/SPIN and their masks (zero-filled and
            flagged by the *_MASK fields when absent, so batches stay rectangular).
    """
    dtype = dtype or torch.get_default_dtype()
    n = structure.num_atoms
    cell = structure.cell if structure.periodic else np.zeros((3, 3))
    edge_index, shifts = neighbor_list(structure.positions, cell, structure.pbc, cutoff)

    def f(x: np.ndarray | float) -> torch.Tensor:
        return torch.as_tensor(np.asarray(x), dtype=dtype)

    graph = {
        keys.POSITIONS: f(structure.positions),
        keys.ATOMIC_NUMBERS: torch.as_tensor(structure.numbers, dtype=torch.long),
        keys.CELL: f(cell).unsqueeze(0),
        keys.PBC: torch.as_tensor(structure.pbc, dtype=torch.bool).unsqueeze(0),
        keys.NUM_ATOMS: torch.tensor([n], dtype=torch.long),
        keys.EDGE_INDEX: torch.as_tensor(edge_index, dtype=torch.long),
        keys.CELL_SHIFTS: f(shifts),
    }
    if labels:
        zeros_f, zeros_s = torch.zeros(n, 3, dtype=dtype), torch.zeros(3, 3, dtype=dtype)
        graph.update({
            # Total energies stay float64: float32 resolves only ~1 meV at 10^4 eV.
            keys.ENERGY: torch.tensor([structure.energy or 0.0], dtype=torch.float64),
            keys.FORCES: zeros_f if structure.forces is None else f(structure.forces),
            keys.STRESS: (zeros_s if structure.stress is None else f(structure.stress)).unsqueeze(0),
            keys.CHARGE: f([structure.charge]),
            keys.SPIN: f([structure.spin_multiplicity]),
            keys.ENERGY_MASK: f([float(structure.energy is not None)]),
            keys.FORCES_MASK: f([float(structure.forces is not None)]),
            keys.STRESS_MASK: f([float(structure.stress is not None)]),
        })
    return graph


def concat_edges(per_structure: Sequence[torch.Tensor], dim: int = 0) -> torch.Tensor:
    """Concatenate per-structure edge tensors (each in mirrored order) into the batch's
    mirrored order: every structure's first half, then every structure's second half, in
    the same order, so edge H + k of the batch is edge k reversed (see :mod:`mlip.data.keys`).

    Args:
        per_structure: one tensor per structure, edges along ``dim`` (an even count each).
        dim: the edge axis (1 for EDGE_INDEX, 0 for the other edge keys).
    """
    halves = [t.shape[dim] // 2 for t in per_structure]
    firsts = [t.narrow(dim, 0, h) for t, h in zip(per_structure, halves, strict=True)]
    seconds = [t.narrow(dim, h, h) for t, h in zip(per_structure, halves, strict=True)]
    return torch.cat(firsts + seconds, dim=dim)


def collate(graphs: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Batch per-structure graphs into the model's input dict.

    Keys are concatenated by their kind (:func:`mlip.data.keys.kind`): node and graph keys
    along their first axis; edge keys in mirrored order (:func:`concat_edges`), EDGE_INDEX
    with each structure's atom offset added. BATCH (N,) is added. All graphs must have the
    same keys; tensors may live on any (one) device.
    """
    if not graphs:
        raise ValueError("collate: no structures")
    first = graphs[0]
    sizes = torch.cat([g[keys.NUM_ATOMS] for g in graphs])
    offsets = (torch.cumsum(sizes, 0) - sizes).tolist()
    out = {}
    for k in first:
        if k == keys.EDGE_INDEX:
            out[k] = concat_edges([g[k] + o for g, o in zip(graphs, offsets, strict=True)], dim=1)
        elif keys.kind(k) == "edge":
            out[k] = concat_edges([g[k] for g in graphs])
        else:
            out[k] = torch.cat([g[k] for g in graphs])
    device = first[keys.POSITIONS].device
    out[keys.BATCH] = torch.arange(len(graphs), device=device).repeat_interleave(sizes.to(device))
    return out


def as_batch_dict(data: Any) -> dict[str, torch.Tensor]:
    """The model's input dict from a batch dict or a PyTorch Geometric ``Batch``/``Data``.

    A dict is returned as it is. Anything else with a ``to_dict()`` method is read as a PyG
    ``Batch`` (or one ``Data``) of :func:`structure_graph` tensors under the same key names,
    e.g. from :class:`mlip.integrations.pyg.PygDataset` and ``torch_geometric.loader.DataLoader``;
    torch_geometric itself is never imported here. PyG lays each structure's edges one after
    another, while the batch dict keeps them in mirrored order across the whole batch
    (:mod:`mlip.data.keys`), so the edge keys are put back in :func:`concat_edges` order: the
    result equals :func:`collate` of the same structures, key by key. Keys outside the batch
    vocabulary (PyG's ``ptr``, the user's own attributes) are dropped; BATCH is added when
    ``data`` is a single ``Data``.

    Args:
        data: a batch dict, or a PyG ``Batch``/``Data`` whose structures' edge lists are each
            in mirrored order (as :func:`structure_graph` builds them).

    Returns:
        the batch dict (``data`` itself when it is a dict).
    """
    if isinstance(data, dict):
        return data
    if not callable(getattr(data, "to_dict", None)):
        raise TypeError(f"expected a batch dict (mlip.graph.build.collate) or a torch_geometric "
                        f"Batch of mlip graphs, got {type(data).__name__}")
    vocabulary = keys.NODE_KEYS | keys.EDGE_KEYS | keys.GRAPH_KEYS
    out = {k: v for k, v in data.to_dict().items()
           if k in vocabulary and isinstance(v, torch.Tensor)}
    missing = [k for k in (keys.POSITIONS, keys.NUM_ATOMS, keys.EDGE_INDEX) if k not in out]
    if missing:
        raise KeyError(f"{type(data).__name__} lacks the key(s) {missing}: build each Data from "
                       "mlip.graph.build.structure_graph (mlip.integrations.pyg.PygDataset does)")
    sizes = out[keys.NUM_ATOMS]
    if keys.BATCH not in out:
        out[keys.BATCH] = torch.arange(len(sizes), device=sizes.device).repeat_interleave(sizes)
    if len(sizes) > 1:
        edge_index = out[keys.EDGE_INDEX]
        counts = torch.bincount(out[keys.BATCH][edge_index[1]], minlength=len(sizes)).tolist()
        for k in [k for k in out if k in keys.EDGE_KEYS]:
            dim = 1 if k == keys.EDGE_INDEX else 0
            out[k] = concat_edges(out[k].split(counts, dim=dim), dim=dim)
    return out


def structures_to_batch(
    structures: Sequence[Structure],
    cutoff: float,
    dtype: torch.dtype | None = None,
    device: str | torch.device = "cpu",
    labels: bool = True,
) -> dict[str, torch.Tensor]:
    """Structures -> the model's batch dict on ``device``."""
    batch = collate([structure_graph(s, cutoff, dtype, labels) for s in structures])
    return {k: v.to(device) for k, v in batch.items()}


def atoms_to_batch(
    atoms_list: Sequence[ase.Atoms],
    cutoff: float,
    dtype: torch.dtype | None = None,
    device: str | torch.device = "cpu",
    labels: bool = True,
) -> dict[str, torch.Tensor]:
    """ASE Atoms -> the model's batch dict on ``device`` (labels included when present)."""
    structures = [atoms_to_structure(a, source="<atoms>", frame=k) for k, a in enumerate(atoms_list)]
    return structures_to_batch(structures, cutoff, dtype, device, labels)


class GraphDataset(torch.utils.data.Dataset):
    """Wrap any dataset of Structures into one of graphs at ``cutoff`` (for a DataLoader
    with ``collate_fn=collate``).

    Args:
        weights: (len(structures),) loss weight of each structure, given to every graph as
            LOSS_WEIGHT (1,); (len(structures), 2): the weights in stage one and in stage
            two (LOSS_WEIGHT and LOSS_WEIGHT_STAGE_TWO); (len(structures), 3): and a factor
            on the force terms alone (LOSS_WEIGHT_FORCES); None: no weight keys (the loss
            weighs all alike).
        heads: (len(structures),) readout head of each structure (a multi-head model), given
            to every graph as HEAD (1,); None: no HEAD key (the first head).
    """

    def __init__(self, structures: torch.utils.data.Dataset, cutoff: float,
                 dtype: torch.dtype | None = None, weights: np.ndarray | None = None,
                 heads: np.ndarray | None = None) -> None:
        self.structures = structures
        self.cutoff = float(cutoff)
        self.dtype = dtype or torch.get_default_dtype()
        if weights is not None and len(weights) != len(structures):
            raise ValueError(f"{len(weights)} loss weights for {len(structures)} structures")
        self.weights = weights
        if heads is not None and len(heads) != len(structures):
            raise ValueError(f"{len(heads)} heads for {len(structures)} structures")
        self.heads = heads

    def __len__(self) -> int:
        return len(self.structures)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        graph = structure_graph(self.structures[index], self.cutoff, self.dtype)
        if self.weights is not None:
            row = np.atleast_1d(self.weights[index])
            graph[keys.LOSS_WEIGHT] = torch.tensor(row[:1], dtype=self.dtype)
            if len(row) > 1:
                graph[keys.LOSS_WEIGHT_STAGE_TWO] = torch.tensor(row[1:2], dtype=self.dtype)
            if len(row) > 2:
                graph[keys.LOSS_WEIGHT_FORCES] = torch.tensor(row[2:3], dtype=self.dtype)
        if self.heads is not None:
            graph[keys.HEAD] = torch.tensor([int(self.heads[index])], dtype=torch.long)
        return graph
