"""The LAMMPS plugin's graph (its Python twin, mlip.integrations.lammps.graph) and the
backbones' per-layer active sets: the owned atoms' energy and every atom's force from the
truncated graph equal those of the whole set of atoms, with and without active sets, for
1-3 layers of the equivariant backbone and for TransIP."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mlip.data import keys
from mlip.graph.neighbors import neighbor_list
from mlip.integrations.lammps.graph import plugin_graph
from mlip.model.build import build_potential

TRANSIP = {"class_path": "mlip.backbones.transip.TransIPBackbone",
           "init_args": {"width": 16, "depth": 3, "heads": 2, "edge_width": 8,
                         "embedding_channels": 4, "embedding_lmax": 1, "readout_hidden": 8}}
CUTOFF = 3.0


def _model(backbone: dict, layers: int):
    key = "depth" if "depth" in backbone["init_args"] else "num_layers"
    config = {"backbone": {**backbone, "init_args": {**backbone["init_args"], key: layers}}}
    torch.manual_seed(layers)
    return build_potential(config, [1, 6, 8], [-1.0, -2.0, -3.0], 1.0, -1.0, CUTOFF, 12.0).double().eval()


def _atoms(seed: int):
    rng = np.random.default_rng(seed)
    positions = rng.uniform(0, 12, size=(90, 3))
    return positions, rng.integers(0, 3, 90), positions[:, 0] < 4  # owned: one end


def _reference(model, positions, species, owned):
    """Owned energy and forces on every atom, from the whole set of atoms."""
    edge_index, _ = neighbor_list(positions, np.zeros((3, 3)), np.zeros(3, bool), CUTOFF)
    edge_index = torch.as_tensor(np.asarray(edge_index))
    pos = torch.tensor(positions, requires_grad=True)
    data = {keys.EDGE_INDEX: edge_index, keys.BATCH: torch.zeros(len(positions), dtype=torch.long)}
    _, atomic = model.atomic_energies(data, torch.as_tensor(species), pos[edge_index[0]] - pos[edge_index[1]])
    energy = atomic[torch.as_tensor(owned)].sum()
    return float(energy), -torch.autograd.grad(energy, pos)[0].numpy()


def _plugin(model, positions, species, owned, layers, use_active):
    """The same from the plugin's graph, forces assembled pair by pair as the plugin does."""
    graph = plugin_graph(positions, species, owned, CUTOFF, layers)
    vectors = graph.vectors.clone().requires_grad_(True)
    data = {keys.EDGE_INDEX: graph.edge_index, keys.BATCH: torch.zeros_like(graph.species)}
    _, atomic = model.atomic_energies(data, graph.species, vectors,
                                      graph.active if use_active else None)
    energy = (atomic * graph.local).sum()
    grad = torch.autograd.grad(energy, vectors)[0]
    half = grad.shape[0] // 2
    per_pair = (grad[:half] - grad[half:]).numpy()
    receiver = graph.atom_of_node[graph.edge_index[1, :half].numpy()]
    sender = graph.atom_of_node[graph.edge_index[0, :half].numpy()]
    forces = np.zeros_like(positions)
    for k in range(1, half):  # pair 0 pads
        forces[receiver[k]] += per_pair[k]
        forces[sender[k]] -= per_pair[k]
    return float(energy), forces, graph


@pytest.mark.parametrize("layers", [1, 2, 3])
@pytest.mark.parametrize("backbone", ["equivariant", "transip"])
def test_truncated_graph_is_exact(backbone, layers, acac_backbone):
    model = _model(acac_backbone if backbone == "equivariant" else TRANSIP, layers)
    positions, species, owned = _atoms(layers)
    e_ref, f_ref = _reference(model, positions, species, owned)
    for use_active in (False, True):
        energy, forces, graph = _plugin(model, positions, species, owned, layers, use_active)
        assert energy == pytest.approx(e_ref, rel=1e-12, abs=1e-10)
        np.testing.assert_allclose(forces, f_ref, rtol=0, atol=1e-12)
    # the graph is truncated (atoms beyond `layers` hops are not in it) and the active sets
    # shrink layer by layer down to the owned atoms and the padding
    assert len(graph.species) < len(positions) + 2
    sizes = [len(nodes) for nodes, _ in graph.active]
    assert sizes == sorted(sizes, reverse=True) and sizes[-1] == 2 + owned.sum()
    assert (np.diff(graph.depth[2:]) >= 0).all()


def test_active_sets_matter(acac_backbone):
    """Dropping the edges into the deepest nodes the first layer computes changes the
    owned energy: the test above would catch active sets that are too small."""
    model = _model(acac_backbone, 2)
    positions, species, owned = _atoms(2)
    graph = plugin_graph(positions, species, owned, CUTOFF, 2)
    nodes, edges = graph.active[0]
    data = {keys.EDGE_INDEX: graph.edge_index, keys.BATCH: torch.zeros_like(graph.species)}
    exact = model.atomic_energies(data, graph.species, graph.vectors, graph.active)[1]
    short = [(nodes, edges[: len(edges) - 5]), graph.active[1]]
    wrong = model.atomic_energies(data, graph.species, graph.vectors, short)[1]
    assert abs(float(((exact - wrong) * graph.local).sum())) > 1e-6


@pytest.mark.parametrize("backbone", ["equivariant", "transip"])
def test_package_function_without_ghosts(backbone, acac_backbone):
    """The function `mlip export lammps` compiles, on a graph without ghost nodes (one
    rank): both twins (active sets, and every node) give the whole system's energy and its
    edge gradient, through the ghost-exchange operators' single-process forms."""
    from mlip.inference.compiled import frozen_copy
    from mlip.integrations.lammps.export import LammpsFunction

    model = _model(acac_backbone if backbone == "equivariant" else TRANSIP, 2)
    positions, species, _ = _atoms(5)
    owned = np.ones(len(positions), dtype=bool)
    graph = plugin_graph(positions, species, owned, CUTOFF, 1)
    assert len(graph.species) == len(positions) + 2  # nothing beyond the owned atoms
    e_ref, f_ref = _reference(model, positions, species, owned)
    frozen = frozen_copy(model, radial_table=False)
    for active in (True, False):
        fn = LammpsFunction(frozen, active)
        energy, atomic, grad = fn(*graph.inputs())
        assert fn.widths and min(fn.widths) > 0  # one exchange between the two layers
        assert float(energy) == pytest.approx(e_ref, rel=1e-12)
        half = grad.shape[0] // 2
        per_pair = (grad[:half] - grad[half:]).detach().numpy()
        receiver = graph.atom_of_node[graph.edge_index[1, :half].numpy()]
        sender = graph.atom_of_node[graph.edge_index[0, :half].numpy()]
        forces = np.zeros_like(positions)
        for k in range(1, half):
            forces[receiver[k]] += per_pair[k]
            forces[sender[k]] -= per_pair[k]
        np.testing.assert_allclose(forces, f_ref, rtol=0, atol=1e-10)
    assert model.backbone.exchange is None and frozen.backbone.exchange is None


def test_exchange_operators_single_process():
    """Outside LAMMPS the exchange is the identity on the computed rows, its gradient too,
    and a graph with rows to fill from other ranks is an error, not zeros."""
    from mlip.integrations.lammps.exchange import ghost_exchange

    x = torch.randn(5, 3, 2, dtype=torch.float64, requires_grad=True)
    nodes = torch.arange(5)
    y = ghost_exchange(x, nodes, torch.zeros(5))
    assert torch.equal(y, x) and y.is_contiguous()
    (g,) = torch.autograd.grad((y * torch.arange(30.0).view(5, 3, 2)).sum(), x)
    assert torch.equal(g, torch.arange(30.0, dtype=torch.float64).view(5, 3, 2))
    with pytest.raises(RuntimeError, match="outside LAMMPS"):
        ghost_exchange(x, nodes, torch.zeros(7))
