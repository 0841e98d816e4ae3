"""The ``mlip[pyg]`` extra: mlip datasets as PyG datasets, and PyG batches into the model,
the training module and an evaluation loop, equal to the batch-dict path."""

from __future__ import annotations

import ast
import importlib
import sys
from pathlib import Path

import ase.io
import numpy as np
import pytest
import torch
import yaml
from ase.build import bulk
from ase.calculators.emt import EMT

pytest.importorskip("torch_geometric", reason="PyTorch Geometric not installed (pip install 'mlip[pyg]')")

from torch_geometric.loader import DataLoader as PygLoader  # noqa: E402

import mlip  # noqa: E402
from mlip.data import keys  # noqa: E402
from mlip.data.convert import convert  # noqa: E402
from mlip.graph.build import GraphDataset, as_batch_dict, collate, structure_graph  # noqa: E402
from mlip.integrations.pyg import GraphData, PygDataset  # noqa: E402
from mlip.model.build import build_potential  # noqa: E402
from mlip.training.metrics import metric_sums, summarize  # noqa: E402

CUTOFF = 4.0
ELEMENTS, E0S = [13, 29], [-0.3, -0.5]
BACKBONE = {"class_path": "mlip.backbones.equivariant.EquivariantBackbone",
            "init_args": {"channels": 4, "lmax_hidden": 1, "lmax_sh": 2, "correlation": 2,
                          "num_layers": 2, "radial_hidden": 8}}


def _frames() -> list[ase.Atoms]:
    """EMT-labelled Cu, Al and CuAl cells of different sizes, and a free Cu cluster (no
    stress label, zero cell)."""
    cells = [bulk("Cu", "fcc", a=3.6, cubic=True), bulk("Al", "fcc", a=4.05) * (2, 1, 1),
             bulk("Cu", "fcc", a=3.7) * (2, 2, 1), bulk("Al", "fcc", a=4.0, cubic=True)]
    alloy = bulk("Cu", "fcc", a=3.8, cubic=True)
    alloy.numbers[[1, 3]] = 13
    cluster = bulk("Cu", "fcc", a=3.6, cubic=True)
    cluster.pbc = False
    cluster.cell = np.zeros((3, 3))
    frames = []
    for k, atoms in enumerate([*cells, alloy, cluster]):
        atoms.rattle(0.05, seed=k)
        atoms.calc = EMT()
        properties = ["energy", "forces"] + (["stress"] if atoms.pbc.any() else [])
        atoms.calc.calculate(atoms, properties)
        frames.append(atoms)
    return frames


@pytest.fixture(scope="module")
def data_files(tmp_path_factory) -> dict[str, Path]:
    """The same six structures as one LMDB file and as a folder of 2-structure shards."""
    folder = tmp_path_factory.mktemp("pyg")
    source = folder / "emt.xyz"
    ase.io.write(source, _frames())
    files = {"lmdb": folder / "emt.lmdb", "shards": folder / "emt_shards"}
    convert([source], files["lmdb"], progress=False, allow_missing_labels=True)
    convert([source], files["shards"], progress=False, allow_missing_labels=True, shard_size=2)
    return files


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    potential = build_potential({"backbone": BACKBONE}, ELEMENTS, E0S, 0.7, -0.2, CUTOFF, 20.0)
    with torch.no_grad():  # random, non-zero weights everywhere
        for p in potential.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return potential.double()


def _dict_loader(dataset: PygDataset, batch_size: int) -> torch.utils.data.DataLoader:
    """The batch-dict path over the same structures, in the same order."""
    graphs = GraphDataset(dataset.structures, dataset.cutoff, dataset.dtype)
    return torch.utils.data.DataLoader(graphs, batch_size=batch_size, collate_fn=collate)


def _assert_same_batch(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert sorted(got) == sorted(want)
    for k in want:
        assert got[k].dtype == want[k].dtype and torch.equal(got[k], want[k]), k


@pytest.mark.parametrize("kind", ["lmdb", "shards"])
def test_dataset_items_are_structure_graphs(data_files, kind):
    dataset = PygDataset(data_files[kind], CUTOFF, torch.float64)
    assert len(dataset) == 6 and dataset.header["elements"] == ELEMENTS
    for k in range(len(dataset)):
        item = dataset[k]
        assert isinstance(item, GraphData)
        want = structure_graph(dataset.structures[k], CUTOFF, torch.float64)
        assert sorted(item.keys()) == sorted(want)
        for key, value in want.items():
            assert item[key].dtype == value.dtype and torch.equal(item[key], value), key


@pytest.mark.parametrize("kind", ["lmdb", "shards"])
def test_loader_batches_convert_to_collate(data_files, kind):
    """PyG lays each structure's edges one after another; the converted batch is mirrored
    across the batch and equals collate of the same structures, key by key, exactly."""
    dataset = PygDataset(data_files[kind], CUTOFF, torch.float64)
    pyg_batches = list(PygLoader(dataset, batch_size=4))
    for pyg, want in zip(pyg_batches, _dict_loader(dataset, 4), strict=True):
        got = as_batch_dict(pyg)
        _assert_same_batch(got, want)
        half = got[keys.EDGE_INDEX].shape[1] // 2
        assert torch.equal(got[keys.EDGE_INDEX][:, half:], got[keys.EDGE_INDEX][:, :half].flip(0))
        assert torch.equal(got[keys.CELL_SHIFTS][half:], -got[keys.CELL_SHIFTS][:half])
    assert not torch.equal(pyg_batches[0][keys.EDGE_INDEX], got[keys.EDGE_INDEX])  # reordered
    assert got[keys.CELL].shape == (2, 3, 3) and got[keys.STRESS_MASK].tolist() == [1.0, 0.0]
    single = as_batch_dict(dataset[5])  # one Data: BATCH added, nothing to reorder
    _assert_same_batch(single, collate([structure_graph(dataset.structures[5], CUTOFF, torch.float64)]))
    with pytest.raises(TypeError, match="torch_geometric Batch"):
        as_batch_dict([single])


def test_potential_on_pyg_batch_equals_dict_path(data_files, model):
    dataset = PygDataset(data_files["lmdb"], CUTOFF, torch.float64)
    pyg = next(iter(PygLoader(dataset, batch_size=6)))
    [plain] = list(_dict_loader(dataset, 6))
    got = model(pyg, compute_forces=True, compute_stress=True)
    want = model(plain, compute_forces=True, compute_stress=True)
    for k in (keys.ENERGY, keys.ATOMIC_ENERGIES, keys.FORCES, keys.STRESS):
        scale = want[k].abs().max().item()
        torch.testing.assert_close(got[k], want[k], rtol=1e-12, atol=1e-12 * scale, msg=k)


def test_evaluation_loop_on_pyg_batches_equals_dict_path(data_files, model):
    """An evaluation loop needs one line for PyG batches: ``batch = as_batch_dict(batch)``."""

    def evaluate(loader) -> dict[str, float]:
        sums = None
        for batch in loader:
            batch = as_batch_dict(batch)
            out = {k: v.detach() for k, v in
                   model(batch, compute_forces=True, compute_stress=True).items()}
            s = metric_sums(out, batch)
            sums = s if sums is None else sums + s
        return summarize(sums)

    dataset = PygDataset(data_files["shards"], CUTOFF, torch.float64)
    got = evaluate(PygLoader(dataset, batch_size=4))
    want = evaluate(_dict_loader(dataset, 4))
    assert sorted(got) == sorted(want) and {"e_mae", "f_mae", "s_mae"} <= set(want)
    for name, value in want.items():
        assert got[name] == pytest.approx(value, rel=1e-12, abs=1e-12), name


def test_training_step_with_a_pyg_loader_equals_dict_path(data_files, tmp_path):
    """One optimiser step and one validation pass through Lightning (PyG batches for both):
    same losses and same updated weights."""
    import lightning as L

    from mlip.training.config import load_config
    from mlip.training.module import PotentialModule

    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({
        "data": {"train": "unused.xyz"},
        "model": {"dtype": "float64", "backbone": BACKBONE}}))
    config = load_config(path)
    info = {"atomic_numbers": ELEMENTS, "e0s": E0S, "scale": 0.7, "shift": -0.2,
            "cutoff": CUTOFF, "avg_num_neighbors": 20.0, "has_stress": True, "closest_pairs": {}}
    dataset = PygDataset(data_files["lmdb"], CUTOFF, torch.float64)

    def one_step(loader) -> tuple[list[float], PotentialModule]:
        torch.manual_seed(0)
        module = PotentialModule(config, info)
        trainer = L.Trainer(max_steps=1, logger=False, enable_checkpointing=False,
                            enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
                            inference_mode=False)
        trainer.fit(module, train_dataloaders=loader, val_dataloaders=loader)
        losses = [float(trainer.callback_metrics[k]) for k in ("train/loss", "val/loss")]
        return losses, module

    pyg_loader, dict_loader = PygLoader(dataset, batch_size=6), _dict_loader(dataset, 6)
    losses, module = one_step(pyg_loader)
    want_losses, want_module = one_step(dict_loader)
    assert losses == pytest.approx(want_losses, rel=1e-12)
    weights = module.model.state_dict()
    for name, value in want_module.model.state_dict().items():
        torch.testing.assert_close(weights[name], value, rtol=1e-12, atol=1e-14, msg=name)
    # the steps saw the batch dict, not the PyG Batch
    _assert_same_batch(module.on_before_batch_transfer(next(iter(pyg_loader)), 0),
                       next(iter(dict_loader)))


def test_missing_pyg_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch_geometric", None)
    monkeypatch.setitem(sys.modules, "torch_geometric.data", None)
    monkeypatch.delitem(sys.modules, "mlip.integrations.pyg")
    with pytest.raises(ImportError, match=r"pip install 'mlip\[pyg\]'"):
        importlib.import_module("mlip.integrations.pyg")


def test_only_the_adapter_imports_pyg():
    """The core never needs the extra: no module but mlip/integrations/pyg.py imports
    torch_geometric, at import time or later."""
    package = Path(mlip.__file__).parent
    importers = []
    for path in sorted(package.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if any(n.split(".")[0] == "torch_geometric" for n in names):
                importers.append(path.relative_to(package).as_posix())
    assert sorted(set(importers)) == ["integrations/pyg.py"]
