"""Fixed-shape batches (the inputs of CUDA graphs): the unfiltered ``cutoff + skin`` list,
padded with ghost edges in a ghost structure, gives every backbone's energies, forces and
stress of the filtered list; shapes stay fixed while positions move; and a force call on
them never waits for the host (what a CUDA graph capture needs, observed on the CPU)."""

from __future__ import annotations

import copy

import ase.io
import numpy as np
import pytest
import torch
from ase.build import bulk

from mlip.data import keys
from mlip.data.readers import atoms_to_structure
from mlip.graph.skin import SkinNeighborList
from mlip.model.build import build_potential
from mlip.testing.sync import HostSyncRecorder

BACKBONES = {
    "cg": {"class_path": "mlip.backbones.equivariant.EquivariantBackbone",
           "init_args": {"channels": 8, "lmax_hidden": 1, "lmax_sh": 2, "correlation": 2,
                         "num_layers": 2, "radial_hidden": 16}},
    "transip": {"class_path": "mlip.backbones.transip.TransIPBackbone",
                "init_args": {"width": 32, "depth": 2, "heads": 2, "edge_width": 32,
                              "embedding_channels": 8, "embedding_lmax": 2}},
}
for tp in ("gaunt-grid", "gaunt-fourier", "cp"):
    BACKBONES[tp] = copy.deepcopy(BACKBONES["cg"])
    BACKBONES[tp]["init_args"]["tensor_product"] = tp


def make_model(name: str, table: bool = False) -> torch.nn.Module:
    torch.manual_seed(0)
    config = {"backbone": BACKBONES[name],
              "repulsion": {"reference": "covalent", "inner": 0.35, "outer": 0.6}}
    model = build_potential(config, [1, 6, 8, 29], [-13.6, -1029.0, -2041.0, -1.0], 1.0, 0.0, 5.0,
                            12.0).double().eval()
    if table:
        assert model.tabulate_radial(1e-8) is not None
    return model


def systems(bundled_acac):
    """(structures, stress): three acac frames; two rattled 32-atom Cu cells."""
    cu = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(2)
    cu.rattle(0.05, seed=1)
    return [(ase.io.read(bundled_acac / "train_300K.xyz", ":3"), False), ([cu, cu.copy()], True)]


def lists(atoms, skin=1.0):
    out = []
    for fixed in (False, True):
        nl = SkinNeighborList(5.0, skin, torch.float64, fixed_shapes=fixed)
        nl.reset([atoms_to_structure(a) for a in atoms])
        out.append(nl)
    return out


@pytest.mark.parametrize("name,table", [("cg", False), ("gaunt-grid", False), ("gaunt-fourier", False),
                                        ("cp", False), ("transip", False), ("gaunt-grid", True)])
def test_fixed_shapes_equal_the_filtered_list(name, table, bundled_acac):
    """float64, to round-off: edges between cutoff and cutoff + skin and the ghost's edges
    add exactly nothing; ``real`` drops the ghost's rows."""
    model = make_model(name, table)
    for atoms, stress in systems(bundled_acac):
        pos = torch.tensor(np.concatenate([a.positions for a in atoms]))
        pos = pos + 0.1 * torch.randn(pos.shape, generator=torch.Generator().manual_seed(0), dtype=pos.dtype)
        filtered, fixed = lists(atoms)
        ref = {k: v.detach() for k, v in model(filtered.batch(pos), compute_forces=True,
                                                  compute_stress=stress).items()}
        data = fixed.batch(pos)
        assert data[keys.EDGE_INDEX].shape[1] > filtered.batch(pos)[keys.EDGE_INDEX].shape[1]
        got = fixed.real(model(data, compute_forces=True, compute_stress=stress))
        for key in (keys.ENERGY, keys.ATOMIC_ENERGIES, keys.FORCES) + ((keys.STRESS,) if stress else ()):
            assert got[key].shape == ref[key].shape
            scale = max(float(ref[key].abs().max()), 1.0)
            assert float((got[key] - ref[key]).abs().max()) < 1e-12 * scale, key


def test_fixed_shapes_stay_fixed_and_mirrored(bundled_acac):
    """Positions move (rebuilds included): every input keeps its shape while the list fits
    the capacity, the list stays mirrored, ghost edges lie beyond the cutoff on the ghost
    alone, and the real edges are the filtered list's plus those up to cutoff + skin."""
    from mlip.graph.edges import edge_vectors

    frames = ase.io.read(bundled_acac / "train_300K.xyz", ":2")
    filtered, fixed = lists(frames, skin=0.5)
    pos = torch.tensor(np.concatenate([a.positions for a in frames]))
    n = pos.shape[0]
    rng = torch.Generator().manual_seed(0)
    shapes = None
    for _ in range(12):
        pos = pos + 0.08 * torch.randn(pos.shape, generator=rng, dtype=pos.dtype)
        data, ref = fixed.batch(pos), filtered.batch(pos)
        now = {k: tuple(v.shape) for k, v in data.items()}
        shapes = shapes or now
        assert now == shapes
        assert data[keys.POSITIONS].shape[0] == n + 1 and data[keys.CELL].shape[0] == len(frames) + 1
        ei, s = data[keys.EDGE_INDEX], data[keys.CELL_SHIFTS]
        half = ei.shape[1] // 2
        assert torch.equal(ei[:, half:], ei[:, :half].flip(0)) and torch.equal(s[half:], -s[:half])
        lengths = edge_vectors(data[keys.POSITIONS], ei, s, data[keys.CELL], data[keys.BATCH]).norm(dim=1)
        ghost = ei[0] == n
        assert torch.equal(ghost, ei[1] == n) and bool((lengths[ghost] > 5.5).all())
        inside = {(int(a), int(b), *s[k].tolist()) for k, (a, b) in enumerate(ei.T.tolist()) if lengths[k] < 5.0}
        want = {(int(a), int(b), *ref[keys.CELL_SHIFTS][k].tolist())
                for k, (a, b) in enumerate(ref[keys.EDGE_INDEX].T.tolist())}
        assert inside == want
    assert fixed.builds > len(frames)  # the moves forced rebuilds, the shapes held


@pytest.mark.parametrize("name", ["cg", "gaunt-grid", "cp", "transip"])
def test_force_call_never_waits_for_the_host(name, bundled_acac):
    """The eager force + stress call (and, for the equivariant backbones, the tabulated
    inference copy the compiled path traces) on a fixed-shape batch has no operation that
    reads device values on the host or uploads host data: capturable in a CUDA graph."""
    models = [make_model(name)] + ([make_model(name, table=True)] if name != "transip" else [])
    for atoms, stress in systems(bundled_acac):
        _, fixed = lists(atoms)
        data = fixed.batch(torch.tensor(np.concatenate([a.positions for a in atoms])))
        for model in models:
            model(data, compute_forces=True, compute_stress=stress)  # lazy set-up outside
            with HostSyncRecorder() as rec:
                model(data, compute_forces=True, compute_stress=stress)
            assert rec.operations == []


def test_the_recorder_sees_host_round_trips():
    """The check above can fail: item(), masks, data-dependent repeats, host data."""
    x = torch.arange(6.0)
    with HostSyncRecorder() as rec:
        x.sum().item()
        x[x > 2].sum()
        torch.repeat_interleave(torch.tensor([1, 2]))
        torch.tensor([1.0, 2.0])
        x.nonzero()
    names = " ".join(rec.operations)
    for op in ("_local_scalar_dense", "aten.index", "repeat_interleave", "lift_fresh", "nonzero"):
        assert op in names, (op, names)
