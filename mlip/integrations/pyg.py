"""mlip datasets as PyTorch Geometric datasets (the ``mlip[pyg]`` extra).

For plugging mlip data into PyG tooling or an existing PyG training loop::

    from torch_geometric.loader import DataLoader
    from mlip.integrations.pyg import PygDataset

    loader = DataLoader(PygDataset("train.lmdb", cutoff=5.0), batch_size=8, shuffle=True)
    for batch in loader:
        out = model(batch)  # a Potential takes the PyG Batch as it is

Each item is a :class:`GraphData` holding the tensors of
:func:`mlip.graph.build.structure_graph` under the same key names (:mod:`mlip.data.keys`);
PyG's ``DataLoader`` offsets EDGE_INDEX by each structure's atom count and concatenates every
other key along its first axis (per-structure keys such as CELL (1, 3, 3) become (B, 3, 3)).
:func:`mlip.graph.build.as_batch_dict` (re-exported here) turns such a batch into the model's
batch dict, restoring the batch-wide mirrored edge order; the Potential, the training module
and the evaluation loop call it themselves, so a PyG batch can be handed to any of them.

Importing this module imports torch_geometric; nothing else in mlip does.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import torch

try:
    from torch_geometric.data import Data, Dataset
except ImportError as err:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "mlip.integrations.pyg needs PyTorch Geometric: pip install 'mlip[pyg]' "
        "(or pip install torch-geometric)"
    ) from err

from mlip.data import keys
from mlip.data.shards import open_dataset
from mlip.graph.build import as_batch_dict, structure_graph

__all__ = ["GraphData", "PygDataset", "as_batch_dict"]


class GraphData(Data):
    """One structure's graph as a PyG ``Data``: the keys of
    :func:`~mlip.graph.build.structure_graph`, batched the way :func:`~mlip.graph.build.collate`
    batches them (EDGE_INDEX (2, E) along its second axis, offset by the atom count; every
    other key along its first axis, never offset)."""

    def __inc__(self, key: str, value: Any, *args, **kwargs) -> Any:
        if key == keys.EDGE_INDEX:
            return self[keys.POSITIONS].shape[0]
        return 0

    def __cat_dim__(self, key: str, value: Any, *args, **kwargs) -> Any:
        return 1 if key == keys.EDGE_INDEX else 0


class PygDataset(Dataset):
    """An mlip dataset (an LMDB file or a shard folder) as a PyG ``Dataset`` of
    :class:`GraphData`, each with its neighbour list at ``cutoff``.

    Args:
        source: an mlip LMDB file or shard folder (:func:`mlip.data.shards.open_dataset`),
            or an opened dataset of :class:`~mlip.data.structure.Structure` (anything with
            ``len`` and integer indexing).
        cutoff: neighbour radius [Å]; a model's is ``model.cutoff``.
        dtype: float dtype of positions, cell, shifts and labels (default: torch's default;
            a model's is that of its parameters).
        transform: PyG transform applied to each item as it is read.
    """

    def __init__(self, source: str | os.PathLike | Any, cutoff: float,
                 dtype: torch.dtype | None = None, transform: Callable | None = None) -> None:
        self.structures = (open_dataset(source) if isinstance(source, str | os.PathLike)
                           else source)
        self.cutoff = float(cutoff)
        self.dtype = dtype or torch.get_default_dtype()
        super().__init__(root=None, transform=transform)

    @property
    def header(self) -> dict[str, Any]:
        """The dataset's header (elements, label counts; see :mod:`mlip.data.lmdb`)."""
        return self.structures.header

    def len(self) -> int:
        return len(self.structures)

    def get(self, idx: int) -> GraphData:
        return GraphData(**structure_graph(self.structures[int(idx)], self.cutoff, self.dtype))
