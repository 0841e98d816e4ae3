"""Neighbour statistics (placeholder)."""

from __future__ import annotations

from mlip.data.structure import Structure
from mlip.graph.neighbors import neighbor_list


def count_edges(structure: Structure, cutoff: float) -> int:
    edge_index, _ = neighbor_list(structure.positions, structure.cell, structure.pbc, cutoff)
    return int(edge_index.shape[1])
