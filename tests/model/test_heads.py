"""Multi-head models: one backbone, a readout head and E0s per level of theory; the single-
head file of one head predicts exactly what the multi-head model predicts on that head."""

from __future__ import annotations

import ase.io
import numpy as np
import pytest
import torch

from mlip.calculator import MLIPCalculator
from mlip.cli.main import main
from mlip.data import keys
from mlip.graph.build import atoms_to_batch
from mlip.inference.engine import ForceField
from mlip.model.build import build_potential
from mlip.model.heads import export_head, select_head
from mlip.model.io import load_model, save_model

SMALL = {"class_path": "mlip.backbones.equivariant.EquivariantBackbone",
         "init_args": {"channels": 8, "lmax_hidden": 1, "lmax_sh": 1, "correlation": 2,
                       "num_layers": 2, "radial_hidden": 16}}
CONFIG = {"dtype": "float64", "backbone": SMALL, "heads": ["dft", "xtb"], "repulsion": {}}
E0S = [[-13.6, -1026.2, -2040.1], [-10.7, -987.4, -1975.0]]


@pytest.fixture
def multi(tmp_path, bundled_acac):
    torch.manual_seed(0)
    potential = build_potential(CONFIG, [1, 6, 8], E0S, 1.0, 0.0, 4.0, 10.0)
    with torch.no_grad():  # heads that differ: the xtb readout columns perturbed
        for name in potential.backbone.head_parameters():
            weight = potential.backbone.get_parameter(name)
            weight[..., 1] += 0.3 * torch.randn_like(weight[..., 1])
    path = save_model(tmp_path / "multi.pt", potential, CONFIG, 10.0)
    frames = ase.io.read(bundled_acac / "train_300K.xyz", ":4")
    return potential, path, frames


def _on_head(potential, frames, head):
    data = atoms_to_batch(frames, 4.0, dtype=torch.float64)
    data[keys.HEAD] = torch.full((len(frames),), head, dtype=torch.long)
    return potential(data)


def test_each_head_has_its_own_readout_and_e0s(multi):
    potential, _, frames = multi
    a, b = _on_head(potential, frames, 0), _on_head(potential, frames, 1)
    e0_gap = sum(np.array(E0S[0])[[1, 6, 8].index(z)] - np.array(E0S[1])[[1, 6, 8].index(z)]
                 for z in frames[0].numbers)
    assert abs(float((a[keys.ENERGY][0] - b[keys.ENERGY][0]).detach()) - e0_gap) > 1e-3  # readouts differ
    assert not torch.allclose(a[keys.FORCES], b[keys.FORCES])
    # no HEAD key: the first head; a mixed batch: each structure its own head
    plain = potential(atoms_to_batch(frames, 4.0, dtype=torch.float64))
    assert torch.equal(plain[keys.ENERGY], a[keys.ENERGY])
    mixed = atoms_to_batch(frames, 4.0, dtype=torch.float64)
    mixed[keys.HEAD] = torch.tensor([0, 1, 0, 1])
    e = potential(mixed)[keys.ENERGY]
    torch.testing.assert_close(e, torch.stack([a[keys.ENERGY][0], b[keys.ENERGY][1],
                                               a[keys.ENERGY][2], b[keys.ENERGY][3]]), rtol=0, atol=1e-9)
    # a lone atom of each head is exactly that head's E0
    for head in (0, 1):
        lone = ase.Atoms("O", positions=[[0, 0, 0]])
        assert float(_on_head(potential, [lone], head)[keys.ENERGY].detach()) == pytest.approx(E0S[head][2], abs=1e-9)


def test_exported_head_predicts_the_head_through_every_adapter(multi, tmp_path):
    potential, path, frames = multi
    for index, name in enumerate(["dft", "xtb"]):
        out = export_head(path, name, tmp_path / f"{name}.pt")
        single = load_model(out)
        assert single.heads is None and single.e0s.tolist() == E0S[index]
        ref = _on_head(potential, frames, index)
        got = single(atoms_to_batch(frames, 4.0, dtype=torch.float64))
        assert torch.equal(got[keys.ENERGY], ref[keys.ENERGY])
        assert torch.equal(got[keys.FORCES], ref[keys.FORCES])
        calc = MLIPCalculator(str(out), device="cpu", dtype="float64")
        atoms = frames[0].copy()
        atoms.calc = calc
        assert atoms.get_potential_energy() == pytest.approx(float(ref[keys.ENERGY][0]), abs=1e-9)
        np.testing.assert_allclose(atoms.get_forces(), ref[keys.FORCES][:15].detach().numpy(), atol=1e-9)
    direct = select_head(potential, "xtb", CONFIG)
    assert torch.equal(direct(atoms_to_batch(frames, 4.0, dtype=torch.float64))[keys.ENERGY],
                       _on_head(potential, frames, 1)[keys.ENERGY])


@pytest.mark.slow
def test_exported_head_runs_the_compiled_path(multi, tmp_path, monkeypatch):
    monkeypatch.setenv("MLIP_CACHE_DIR", str(tmp_path))
    potential, path, frames = multi
    out = export_head(path, "xtb", tmp_path / "xtb.pt")
    ref = _on_head(potential, frames, 1)
    atoms = frames[0].copy()
    atoms.calc = MLIPCalculator(str(out), device="cpu", dtype="float64", compile="aot")
    assert atoms.get_potential_energy() == pytest.approx(float(ref[keys.ENERGY][0]), rel=1e-10, abs=1e-9)
    np.testing.assert_allclose(atoms.get_forces(), ref[keys.FORCES][:15].detach().numpy(), atol=1e-9)
    assert atoms.calc.compiled.packages[(1, False)] is not None


def test_unknown_head_and_multi_head_files_give_one_line(multi, tmp_path, capsys):
    potential, path, _ = multi
    with pytest.raises(ValueError, match=r"multi.pt has no head 'pbe'; its heads: dft, xtb"):
        export_head(path, "pbe", tmp_path / "x.pt")
    assert not (tmp_path / "x.pt").exists()
    assert main(["export", "head", str(path), "--head", "pbe", "-o", str(tmp_path / "x.pt")]) != 0
    assert "its heads: dft, xtb" in capsys.readouterr().err
    assert main(["export", "head", str(path), "--head", "xtb", "-o", str(tmp_path / "x.pt")]) == 0
    with pytest.raises(ValueError, match=r"has a single head"):
        export_head(tmp_path / "x.pt", "xtb", tmp_path / "y.pt")
    with pytest.raises(ValueError, match=r"multi.pt has the heads \['dft', 'xtb'\]: the engine takes one; "
                                         r"write it with `mlip export head"):
        ForceField(str(path), device="cpu")
    with pytest.raises(ValueError, match=r"no head 'pbe': this model has the heads \['dft', 'xtb'\]"):
        potential.head_index("pbe")
