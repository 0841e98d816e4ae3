"""The batch vocabulary: every key that crosses a module boundary.

A batch is a ``dict[str, Tensor]``. Shapes use ``N`` for atoms in the batch, ``E`` for
edges and ``B`` for structures. Edges are directed: ``edge_index[0]`` is the sender ``j``,
``edge_index[1]`` the receiver ``i``, and the edge vector is
``pos[j] - pos[i] + cell_shifts @ cell[batch[i]]`` (pointing from ``i`` to ``j``).

Every key is classified where it is defined (:data:`NODE_KEYS`, :data:`EDGE_KEYS`,
:data:`GRAPH_KEYS`; :func:`kind`): batching concatenates by it and the fixed-shape
neighbour list drops its ghost rows by it, so a new key must be added to one of the sets.

Mirrored edge order is an invariant of every batch the model receives (not a flag in it):
with ``H = E / 2``, edge ``H + k`` is edge ``k`` reversed (sender and receiver swapped,
cell shift negated), across the whole batch. Every producer keeps it: the neighbour lists
(:func:`mlip.graph.neighbors.mirror_order`), :func:`mlip.graph.build.collate` (all first
halves, then all second halves), the skin list's cutoff filter (one decision per pair) and
its fixed-shape padding (ghost pairs). A model may therefore evaluate functions of
``|r_ij|`` on the first half only; a batch built elsewhere must be put in this order
(:func:`mlip.graph.neighbors.mirror_order` per structure, then ``collate``).
"""

from __future__ import annotations

# --- per atom (node) -------------------------------------------------------------
POSITIONS = "pos"  # (N, 3) float | Cartesian positions [Å]
ATOMIC_NUMBERS = "atomic_numbers"  # (N,) int64 | element Z
FORCES = "forces"  # (N, 3) float | forces, -dE/dpos [eV/Å]
BATCH = "batch"  # (N,) int64 | index of the structure each atom belongs to
NODE_FEATURES = "node_features"  # (N, F) float | last-layer node features (irreps layout)
ATOMIC_ENERGIES = "atomic_energies"  # (N,) float64 | per-atom energies incl. E0 [eV]
FORCES_UNCERTAINTY = "forces_uncertainty"  # (N,) float | predicted error of the atom's force (norm, calibrated) [eV/Å]

# --- per edge ----------------------------------------------------------------------
EDGE_INDEX = "edge_index"  # (2, E) int64 | (sender j, receiver i)
CELL_SHIFTS = "cell_shifts"  # (E, 3) float | integer image shifts of the sender [cells]
EDGE_VECTORS = "edge_vectors"  # (E, 3) float | pos[j] - pos[i] + shift @ cell [Å]
EDGE_LENGTHS = "edge_lengths"  # (E,) float | |edge_vectors| [Å]
EDGE_WEIGHTS = "edge_weights"  # (E,) float | weight of each edge in the learned part: 1, -> 0 inside the ZBL core [1]

# --- per structure (graph) ----------------------------------------------------------
CELL = "cell"  # (B, 3, 3) float | lattice vectors as rows [Å]; zeros when not periodic
PBC = "pbc"  # (B, 3) bool | periodic along each cell vector
NUM_ATOMS = "num_atoms"  # (B,) int64 | atoms per structure
ENERGY = "energy"  # (B,) float64 | total potential energy [eV] (always float64)
STRESS = "stress"  # (B, 3, 3) float | (1/V) dE/dstrain, ASE sign (tension > 0) [eV/Å^3]
VIRIAL = "virial"  # (B, 3, 3) float | -dE/dstrain [eV]
CHARGE = "charge"  # (B,) float | total charge [e]
SPIN = "spin_multiplicity"  # (B,) float | spin multiplicity 2S+1
# Label masks: 1.0 where the structure carries the label, 0.0 where it does not.
ENERGY_MASK = "energy_mask"  # (B,) float | energy label present
FORCES_MASK = "forces_mask"  # (B,) float | forces label present
STRESS_MASK = "stress_mask"  # (B,) float | stress label present
LOSS_WEIGHT = "loss_weight"  # (B,) float | weight of the structure in the training loss (absent: 1) [1]
LOSS_WEIGHT_STAGE_TWO = "loss_weight_stage_two"  # (B,) float | its weight in stage two (absent: LOSS_WEIGHT) [1]
LOSS_WEIGHT_FORCES = "loss_weight_forces"  # (B,) float | factor on its force terms only, in both stages (absent: 1) [1]
ENERGY_UNCERTAINTY = "energy_uncertainty"  # (B,) float | predicted error of the energy (calibrated) [eV]
HEAD = "head"  # (B,) int64 | readout head of a multi-head model for the structure (absent: 0)

# --- model internals -----------------------------------------------------------------
SPECIES = "species"  # (N,) int64 | index of each atom's element in the model's element list
NODE_ENERGIES = "node_energies"  # (N,) or (N, H) float | backbone per-atom energies before scale/shift (one column per head)
DIRECT_FORCES = "direct_forces"  # (N, 3) float | backbone force head, not -dE/dr (unit: the model's scale)
EQUIVARIANT_EMBEDDING = "equivariant_embedding"  # (N, C, (L+1)^2) float | learned-equivariant embedding (TransIP)
READOUT_FEATURES = "readout_features"  # (N, P) float | inputs of the readouts' last linear maps: NODE_ENERGIES = READOUT_FEATURES @ W

# --- classification ------------------------------------------------------------------
NODE_KEYS = frozenset({
    POSITIONS, ATOMIC_NUMBERS, FORCES, BATCH, NODE_FEATURES, ATOMIC_ENERGIES, SPECIES,
    NODE_ENERGIES, DIRECT_FORCES, EQUIVARIANT_EMBEDDING, READOUT_FEATURES, FORCES_UNCERTAINTY,
})
EDGE_KEYS = frozenset({EDGE_INDEX, CELL_SHIFTS, EDGE_VECTORS, EDGE_LENGTHS, EDGE_WEIGHTS})
GRAPH_KEYS = frozenset({
    CELL, PBC, NUM_ATOMS, ENERGY, STRESS, VIRIAL, CHARGE, SPIN, ENERGY_MASK, FORCES_MASK,
    STRESS_MASK, LOSS_WEIGHT, LOSS_WEIGHT_STAGE_TWO, LOSS_WEIGHT_FORCES, HEAD, ENERGY_UNCERTAINTY,
})


def kind(key: str) -> str:
    """``"node"``, ``"edge"`` or ``"graph"``: what the first axis of ``key`` counts
    (EDGE_INDEX: its second axis).

    >>> kind(FORCES), kind(EDGE_INDEX), kind(ENERGY)
    ('node', 'edge', 'graph')
    """
    if key in NODE_KEYS:
        return "node"
    if key in EDGE_KEYS:
        return "edge"
    if key in GRAPH_KEYS:
        return "graph"
    raise KeyError(f"batch key {key!r} is not classified: add it to NODE_KEYS, EDGE_KEYS or "
                   "GRAPH_KEYS in mlip/data/keys.py")
