"""Graph building and batching: offsets, per-structure fields, differentiable edge vectors."""

from __future__ import annotations

import ase.io
import numpy as np
import torch
from ase.neighborlist import neighbor_list as ase_neighbor_list

from mlip.data import keys
from mlip.data.readers import atoms_to_structure
from mlip.graph.build import atoms_to_batch, collate, structure_graph
from mlip.graph.edges import edge_vectors
from mlip.graph.stats import average_num_neighbors


def frames(tiny):
    return (ase.io.read(tiny / "acac_20.xyz", ":2")
            + ase.io.read(tiny / "cu_emt_10.xyz", ":2"))


def test_batch_fields_and_offsets(tiny):
    atoms = frames(tiny)
    data = atoms_to_batch(atoms, 4.0, dtype=torch.float64)
    sizes = [len(a) for a in atoms]
    assert data[keys.NUM_ATOMS].tolist() == sizes
    assert data[keys.BATCH].tolist() == sum(([k] * n for k, n in enumerate(sizes)), [])
    assert data[keys.CELL].shape == (4, 3, 3) and data[keys.PBC].shape == (4, 3)
    assert torch.equal(data[keys.CELL][0], torch.zeros(3, 3, dtype=torch.float64))  # molecule
    assert data[keys.STRESS].shape == (4, 3, 3)
    assert data[keys.STRESS_MASK].tolist() == [0, 0, 1, 1]
    assert data[keys.ENERGY].dtype == torch.float64
    # Edges of structure k point into structure k's atom range.
    start = np.cumsum([0] + sizes)
    b = data[keys.BATCH]
    ei = data[keys.EDGE_INDEX]
    assert torch.equal(b[ei[0]], b[ei[1]])
    # Batched edge vectors equal the per-structure ones, and ASE's distances.
    vec = edge_vectors(data[keys.POSITIONS], ei, data[keys.CELL_SHIFTS], data[keys.CELL], b)
    for k, a in enumerate(atoms):
        mine = vec[b[ei[1]] == k].norm(dim=1).sort().values.numpy()
        d = np.sort(ase_neighbor_list("d", a, 4.0))
        np.testing.assert_allclose(mine, d, rtol=1e-12)
        single = structure_graph(atoms_to_structure(a), 4.0, torch.float64)
        assert single[keys.EDGE_INDEX].shape[1] == len(d)
        assert int(ei[:, b[ei[1]] == k].min()) >= start[k]


def test_edge_vectors_are_differentiable(tiny):
    data = atoms_to_batch(frames(tiny)[2:], 4.0, dtype=torch.float64)
    pos = data[keys.POSITIONS].requires_grad_(True)
    cell = data[keys.CELL].requires_grad_(True)
    vec = edge_vectors(pos, data[keys.EDGE_INDEX], data[keys.CELL_SHIFTS], cell, data[keys.BATCH])
    gp, gc = torch.autograd.grad(vec.norm(dim=1).sum(), (pos, cell))
    assert gp.abs().sum() > 0 and gc.abs().sum() > 0


def test_collate_round_trip_and_avg_neighbors(tiny):
    atoms = frames(tiny)
    structures = [atoms_to_structure(a) for a in atoms]
    data = collate([structure_graph(s, 4.0) for s in structures])
    assert set(data) >= {keys.POSITIONS, keys.EDGE_INDEX, keys.BATCH, keys.CELL_SHIFTS}
    expected = sum(len(ase_neighbor_list("i", a, 4.0)) for a in atoms) / sum(map(len, atoms))
    assert abs(average_num_neighbors(structures, 4.0) - expected) < 1e-12


def test_collate_and_skin_filter_keep_edges_mirrored(tiny):
    """A batch of several structures and every skin-filtered call stay mirrored: edge
    H + k is edge k reversed (the invariant of mlip.data.keys), with the same edge set as per structure."""
    import ase.io

    from mlip.data import keys
    from mlip.data.readers import atoms_to_structure
    from mlip.graph.build import atoms_to_batch
    from mlip.graph.skin import SkinNeighborList

    frames = ase.io.read(tiny / "cu_emt_10.xyz", ":3") + ase.io.read(tiny / "acac_20.xyz", ":2")

    def check(batch):
        ei, s = batch[keys.EDGE_INDEX], batch[keys.CELL_SHIFTS]
        half = ei.shape[1] // 2
        assert ei.shape[1] % 2 == 0
        assert torch.equal(ei[:, half:], ei[:, :half].flip(0)) and torch.equal(s[half:], -s[:half])

    batch = atoms_to_batch(frames, 4.0, dtype=torch.float64)
    check(batch)
    singles = [atoms_to_batch([a], 4.0, dtype=torch.float64) for a in frames]
    assert batch[keys.EDGE_INDEX].shape[1] == sum(b[keys.EDGE_INDEX].shape[1] for b in singles)
    skin = SkinNeighborList(4.0, 0.5, torch.float64)
    skin.reset([atoms_to_structure(a) for a in frames])
    rng = torch.Generator().manual_seed(0)
    pos = batch[keys.POSITIONS].clone()
    for _ in range(3):
        pos = pos + 0.05 * torch.randn(pos.shape, generator=rng, dtype=torch.float64)
        data = skin.batch(pos)
        check(data)
