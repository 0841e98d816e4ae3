"""Neighbour statistics of structures (the average neighbour count normalises messages)."""

from __future__ import annotations

from collections.abc import Iterable

from mlip.data.structure import Structure
from mlip.graph.neighbors import neighbor_list


def count_edges(structure: Structure, cutoff: float) -> int:
    """Number of directed edges within ``cutoff`` [Å] (images included)."""
    edge_index, _ = neighbor_list(structure.positions, structure.cell, structure.pbc, cutoff)
    return int(edge_index.shape[1])


def average_num_neighbors(structures: Iterable[Structure], cutoff: float) -> float:
    """Edges per atom over all structures."""
    edges = atoms = 0
    for s in structures:
        edges += count_edges(s, cutoff)
        atoms += s.num_atoms
    if atoms == 0:
        raise ValueError("average_num_neighbors: no atoms")
    return edges / atoms
