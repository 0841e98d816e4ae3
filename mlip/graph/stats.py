"""Neighbour statistics of structures (the average neighbour count normalises messages)."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from mlip.data.structure import Structure
from mlip.graph.neighbors import neighbor_list


def count_edges(structure: Structure, cutoff: float) -> int:
    """Number of directed edges within ``cutoff`` [Å] (images included)."""
    edge_index, _ = neighbor_list(structure.positions, structure.cell, structure.pbc, cutoff)
    return int(edge_index.shape[1])


def closest_pairs(structure: Structure, cutoff: float) -> dict[tuple[int, int], float]:
    """Shortest distance [Å] of each element pair (Z_a <= Z_b) within ``cutoff``."""
    edge_index, shifts = neighbor_list(structure.positions, structure.cell, structure.pbc, cutoff)
    if edge_index.shape[1] == 0:
        return {}
    j, i = edge_index
    vec = structure.positions[j] - structure.positions[i] + shifts @ structure.cell
    d = np.linalg.norm(vec, axis=1)
    za, zb = structure.numbers[i], structure.numbers[j]
    lo, hi = np.minimum(za, zb), np.maximum(za, zb)
    out: dict[tuple[int, int], float] = {}
    for key in set(zip(lo.tolist(), hi.tolist(), strict=True)):
        out[key] = float(d[(lo == key[0]) & (hi == key[1])].min())
    return out


def shortest_pair_distances(structures: Iterable[Structure], cutoff: float) -> dict[tuple[int, int], float]:
    """:func:`closest_pairs` over many structures: the reference distances of a
    data-referenced ZBL core (``ZBLRepulsion.set_reference``)."""
    found: dict[tuple[int, int], float] = {}
    for s in structures:
        for key, d in closest_pairs(s, cutoff).items():
            found[key] = min(d, found.get(key, d))
    return found


def average_num_neighbors(structures: Iterable[Structure], cutoff: float) -> float:
    """Edges per atom over all structures."""
    edges = atoms = 0
    for s in structures:
        edges += count_edges(s, cutoff)
        atoms += s.num_atoms
    if atoms == 0:
        raise ValueError("average_num_neighbors: no atoms")
    return edges / atoms
