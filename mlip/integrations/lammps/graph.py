"""The LAMMPS plugin's graph, in Python: what ``pair_style mlip`` hands the package.

The plugin (``plugin/pair_mlip.cpp``) builds it in C++ from LAMMPS's atoms, one hop deep
(``hops=1``: the owned atoms and the ghosts they neighbour; deeper layers get the ghosts'
features by exchange, see :mod:`mlip.integrations.lammps.export`); this twin builds the
same layout from positions of a finite set of atoms (a rank's own atoms and its ghosts,
with no periodic images: each atom is one node) for tracing the package and for the tests.
With ``hops`` = L it is the graph a rank needs without any exchange (every atom within L
hops, per-layer active sets shrinking towards the owned atoms), which the tests use to
check the backbones' active sets. The layout:

* nodes: two padding nodes, then the owned atoms, then the others in breadth-first order of
  their hop distance ("depth") from the owned atoms, out to ``hops`` (so nodes are sorted by
  depth);
* pairs: every pair within the cutoff that touches a node with depth < ``hops``, once, with
  the shallower node as receiver of the first-half edge; a padding pair between the two
  padding nodes first; then sorted by (receiver depth, sender depth), which is (d, d) or
  (d, d + 1) for neighbours;
* edges in mirrored order: the pairs, then the same pairs reversed;
* active sets of layer t = 1..L (``d = L - t``): the nodes with depth <= d (a prefix) and the
  edges into them: the first-half edges of pairs with receiver depth <= d and the
  second-half edges of pairs with sender depth <= d (both prefixes of their halves).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["PluginGraph", "plugin_graph"]


@dataclass
class PluginGraph:
    """The package's inputs (see the module docstring), and where each node came from."""

    vectors: torch.Tensor      # (E, 3) sender minus receiver
    species: torch.Tensor      # (N,) int64
    edge_index: torch.Tensor   # (2, E) int64 (sender, receiver)
    local: torch.Tensor        # (N,) float64, 1 for owned nodes
    active: list[tuple[torch.Tensor, torch.Tensor]]  # per layer (nodes, edges)
    atom_of_node: np.ndarray   # (N,) input atom index of each node, -1 for padding
    depth: np.ndarray          # (N,) hop distance from the owned atoms, -1 for padding

    def inputs(self) -> tuple[torch.Tensor, ...]:
        """The package's positional inputs."""
        flat = [t for pair in self.active for t in pair]
        return (self.vectors, self.species, self.edge_index, self.local, *flat)


def plugin_graph(positions: np.ndarray, species: np.ndarray, owned: np.ndarray, cutoff: float,
                 hops: int, dtype: torch.dtype = torch.float64,
                 device: torch.device | str = "cpu") -> PluginGraph:
    """The plugin's graph of a finite set of atoms.

    Args:
        positions: (M, 3) [Å].
        species: (M,) species indices.
        owned: (M,) bool, the atoms whose energy this rank owns.
        cutoff: the model's cutoff [Å].
        hops: the model's message-passing layers.
    """
    positions = np.asarray(positions, dtype=float)
    m = len(positions)
    diff = positions[None, :, :] - positions[:, None, :]
    close = (np.einsum("ijk,ijk->ij", diff, diff) < cutoff * cutoff) & ~np.eye(m, dtype=bool)
    neighbors = [np.flatnonzero(row) for row in close]
    depth = np.full(m, -1)
    order = list(np.flatnonzero(owned))
    depth[order] = 0
    frontier = list(order)
    for d in range(hops):
        nxt = []
        for a in frontier:
            for j in neighbors[a]:
                if depth[j] < 0:
                    depth[j] = d + 1
                    nxt.append(j)
        order += nxt
        frontier = nxt
    node_of_atom = np.full(m, -1)
    node_of_atom[order] = np.arange(len(order)) + 2
    pairs = []
    for a in order:
        if depth[a] >= hops:
            continue
        for j in neighbors[a]:
            if depth[j] < hops and node_of_atom[j] < node_of_atom[a]:
                continue  # found from j's side
            pairs.append((depth[a], depth[j], node_of_atom[a], node_of_atom[j], a, j))
    pairs.sort(key=lambda p: (p[0], p[1]))
    n = len(order) + 2
    half = len(pairs) + 1
    receiver = np.array([0] + [p[2] for p in pairs])
    sender = np.array([1] + [p[3] for p in pairs])
    vec = np.array([[0.5 * cutoff, 0.0, 0.0]] + [positions[p[5]] - positions[p[4]] for p in pairs])
    node_species = np.zeros(n, dtype=np.int64)
    node_species[2:] = np.asarray(species)[order]
    local = np.zeros(n)
    local[2:2 + int(np.sum(owned))] = 1.0
    node_depth = np.concatenate([[-1, -1], depth[order]])
    pair_depths = np.array([(-1, -1)] + [(p[0], p[1]) for p in pairs])
    active = []
    for t in range(1, hops + 1):
        d = hops - t
        n_t = 2 + int(np.sum(depth[order] <= d))
        a_t = int(np.sum(pair_depths[:, 0] <= d))  # padding pair: depth -1, always active
        b_t = int(np.sum(pair_depths[:, 1] <= d))
        edges = np.concatenate([np.arange(a_t), half + np.arange(b_t)])
        active.append((torch.arange(n_t, device=device), torch.as_tensor(edges, device=device)))
    edge_index = np.stack([np.concatenate([sender, receiver]), np.concatenate([receiver, sender])])
    vectors = np.concatenate([vec, -vec])

    def tensor(x, dt):
        return torch.as_tensor(np.asarray(x), dtype=dt, device=device)

    return PluginGraph(tensor(vectors, dtype), tensor(node_species, torch.long),
                       tensor(edge_index, torch.long), tensor(local, torch.float64), active,
                       np.concatenate([[-1, -1], order]), node_depth)
