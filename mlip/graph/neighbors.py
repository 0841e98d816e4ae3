"""Neighbour lists (placeholder: vesin only; the full version adds a pure-torch cell list)."""

from __future__ import annotations

import numpy as np
import vesin


def neighbor_list(positions, cell, pbc, cutoff: float, backend: str = "auto"):
    pbc = np.asarray(pbc, dtype=bool)
    cell = np.asarray(cell, dtype=np.float64) if pbc.any() else np.zeros((3, 3))
    nl = vesin.NeighborList(cutoff=float(cutoff), full_list=True)
    i, j, s = nl.compute(np.asarray(positions, dtype=np.float64), cell, pbc.tolist(), "ijS")
    return np.stack([j, i]).astype(np.int64), s.astype(np.int64)
