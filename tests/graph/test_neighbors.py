"""Neighbour lists vs brute-force references, as sets of (sender, receiver, shift)."""

from __future__ import annotations

import ase
import ase.io
import numpy as np
import pytest
import torch
from ase.neighborlist import neighbor_list as ase_neighbor_list

from mlip.graph import neighbors
from mlip.graph.neighbors import neighbor_list, neighbor_list_torch, neighbor_list_vesin


def brute_force(positions, cell, pbc, cutoff):
    """O(N^2 * images) reference, own implementation (wraps, then corrects the shifts)."""
    pbc = np.asarray(pbc, dtype=bool)
    cell = np.asarray(cell, dtype=float)
    k = np.zeros((len(positions), 3), dtype=int)
    if pbc.any():
        k = np.where(pbc, np.floor(positions @ np.linalg.inv(cell)), 0).astype(int)
        positions = positions - k @ cell
    reps = [0, 0, 0]
    if pbc.any():
        inv = np.linalg.inv(cell)
        spacing = 1.0 / np.linalg.norm(inv, axis=0)
        reps = [int(np.ceil(cutoff / spacing[k])) if pbc[k] else 0 for k in range(3)]
    out = set()
    for s in np.array(np.meshgrid(*[np.arange(-r, r + 1) for r in reps])).reshape(3, -1).T:
        offset = s @ cell if pbc.any() else np.zeros(3)
        d = np.linalg.norm(positions[None, :, :] + offset - positions[:, None, :], axis=-1)
        for i, j in zip(*np.nonzero(d < cutoff), strict=True):
            if i == j and not s.any():
                continue
            out.add((int(j), int(i), *map(int, s - k[j] + k[i])))
    return out


def as_set(edge_index, shifts):
    edge_index, shifts = np.asarray(edge_index), np.asarray(shifts)
    return {(int(a), int(b), *map(int, s)) for a, b, s in zip(edge_index[0], edge_index[1], shifts, strict=True)}


def via_ase(positions, cell, pbc, cutoff):
    atoms = ase.Atoms(numbers=[1] * len(positions), positions=positions, cell=cell, pbc=pbc)
    i, j, s = ase_neighbor_list("ijS", atoms, cutoff)
    return {(int(b), int(a), *map(int, t)) for a, b, t in zip(i, j, s, strict=True)}


def random_cell(rng, scale):
    cell = np.diag(rng.uniform(0.8, 1.2, 3) * scale)
    cell[1, 0], cell[2, 0], cell[2, 1] = rng.uniform(-0.4, 0.4, 3) * scale
    return cell


def cases():
    rng = np.random.default_rng(42)
    out = []
    mol = rng.uniform(0, 6, (20, 3))
    out.append(("molecule-zero-cell", mol, np.zeros((3, 3)), (False,) * 3, 3.0))
    out.append(("molecule-dummy-cell", mol, np.eye(3) * 50, (False,) * 3, 3.0))
    cell = random_cell(rng, 7.0)
    out.append(("triclinic", rng.uniform(0, 1, (25, 3)) @ cell, cell, (True,) * 3, 3.5))
    small = random_cell(rng, 2.0)
    out.append(("cell-smaller-than-cutoff", rng.uniform(0, 1, (2, 3)) @ small, small, (True,) * 3, 5.0))
    out.append(("one-atom-cell", np.zeros((1, 3)), small, (True,) * 3, 4.0))
    slab = random_cell(rng, 5.0)
    pos = rng.uniform(0, 1, (15, 3)) @ slab
    out.append(("slab", pos, slab, (True, True, False), 4.0))
    out.append(("wire", pos, slab, (True, False, False), 4.0))
    unwrapped = rng.uniform(-1.5, 2.5, (12, 3)) @ cell
    out.append(("unwrapped", unwrapped, cell, (True,) * 3, 3.0))
    return out


CASES = cases()


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("backend", ["vesin", "torch", "torch-cell-list"])
def test_matches_brute_force(case, backend, monkeypatch):
    _, pos, cell, pbc, cutoff = case
    ref = brute_force(pos, cell, pbc, cutoff)
    assert ref == via_ase(pos, cell, pbc, cutoff)  # the reference agrees with ASE
    if backend == "vesin":
        got = neighbor_list_vesin(pos, cell, pbc, cutoff)
    else:
        if backend == "torch-cell-list":
            monkeypatch.setattr(neighbors, "DENSE_PAIR_LIMIT", 0)
        got = neighbor_list_torch(torch.tensor(pos), torch.tensor(cell), torch.tensor(pbc), cutoff)
    assert as_set(*got) == ref
    assert len(got[1]) == len(ref)  # no duplicates


@pytest.mark.parametrize("backend", ["vesin", "torch"])
def test_cu_shear_frame(tiny, backend, monkeypatch):
    atoms = ase.io.read(tiny / "cu_emt_10.xyz", 6)  # a shear frame
    args = (atoms.positions, atoms.cell.array, atoms.pbc, 5.0)
    monkeypatch.setattr(neighbors, "DENSE_PAIR_LIMIT", 0)
    ref = via_ase(*args)
    got = neighbor_list(*args, backend=backend)
    assert as_set(*got) == ref


def test_dispatch_types():
    pos = np.random.default_rng(0).uniform(0, 3, (5, 3))
    ei, s = neighbor_list(pos, np.zeros((3, 3)), [False] * 3, 2.5)
    assert isinstance(ei, np.ndarray) and ei.dtype == np.int64 and s.shape[1] == 3
    ei_t, s_t = neighbor_list(torch.tensor(pos), torch.zeros(3, 3), torch.zeros(3, dtype=torch.bool), 2.5)
    assert isinstance(ei_t, torch.Tensor) and as_set(ei_t, s_t) == as_set(ei, s)
    with pytest.raises(ValueError, match="backend"):
        neighbor_list(pos, np.zeros((3, 3)), [False] * 3, 2.5, backend="magic")


def _is_mirrored(edge_index, shifts):
    edge_index, shifts = np.asarray(edge_index), np.asarray(shifts)
    half = edge_index.shape[1] // 2
    return (edge_index.shape[1] % 2 == 0 and (edge_index[:, half:] == edge_index[::-1, :half]).all()
            and (shifts[half:] == -shifts[:half]).all())


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("backend", ["vesin", "torch"])
def test_neighbor_list_is_mirrored_and_complete(case, backend):
    """neighbor_list's order: edge H + k is edge k reversed, the set is the brute-force set
    (so a model may evaluate radial functions on one half, the invariant of mlip.data.keys)."""
    _, pos, cell, pbc, cutoff = case
    if backend == "torch":
        got = neighbor_list(torch.tensor(pos), torch.tensor(cell), torch.tensor(pbc), cutoff, backend="torch")
    else:
        got = neighbor_list(pos, cell, pbc, cutoff)
    assert _is_mirrored(*got)
    assert as_set(*got) == brute_force(pos, cell, pbc, cutoff)
    assert len(got[1]) == len(as_set(*got))
