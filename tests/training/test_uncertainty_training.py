"""Uncertainty from training: every run fits and calibrates its last-layer estimate into the
model file; ``--committee K`` trains K members on one split, writes one calibrated committee
file, resumes without retraining finished members; ``mlip eval --uncertainty`` reports
and plots the calibration; the torch-sim model passes the uncertainties on."""

from __future__ import annotations

import json
from pathlib import Path

import ase.io
import pytest
import torch

from mlip.cli.main import main
from mlip.model.io import read_model_file


def test_a_run_fits_its_uncertainty_into_the_model_file(tiny_data, write_config, capsys):
    assert main(["train", "--config", str(write_config(tiny_data))]) == 0
    out = capsys.readouterr().out
    assert "uncertainty (llpr) fitted on" in out
    run = tiny_data / "runs" / "tiny"
    payload = read_model_file(run / "model.pt")
    assert payload["model_config"]["uncertainty"]["method"] == "llpr"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["uncertainty"]["val_structures"] == 6 and summary["uncertainty"]["alpha_forces"] > 0
    assert summary["uncertainty"]["train_atoms"] == 14 * 15  # every training atom (14 acac frames)
    # eval --uncertainty: metrics table, JSON and a calibration plot
    code = main(["eval", str(run / "model.pt"), str(tiny_data / "tiny" / "acac_20.xyz"), "--uncertainty",
                 "--plots", str(tiny_data / "plots"), "--json", str(tiny_data / "e.json")])
    assert code == 0
    printed = capsys.readouterr().out
    assert "rho F/str" in printed and "miscal F" in printed
    assert (tiny_data / "plots" / "acac_20_calibration.png").stat().st_size > 1000
    metrics = json.loads((tiny_data / "e.json").read_text())["results"][0]["uncertainty"]
    assert -1 <= metrics["spearman_forces_structure"] <= 1 and 0 <= metrics["miscalibration_forces"] <= 0.5


def test_the_fit_after_a_multi_rank_run_sees_every_structure(tiny_data, write_config):
    """Under DDP the training loaders hold one rank's share; the fit made on rank 0 after
    training reads the whole training and validation splits."""
    from types import SimpleNamespace

    from mlip.data import keys
    from mlip.graph.build import as_batch_dict
    from mlip.training.config import load_config
    from mlip.training.datamodule import PotentialDataModule

    dm = PotentialDataModule(load_config(write_config(tiny_data)))
    dm.prepare()
    dm.trainer = SimpleNamespace(global_rank=0, world_size=2)

    def structures(loader):
        return sum(as_batch_dict(b)[keys.CELL].shape[0] for b in loader)

    assert structures(dm.train_dataloader()) < 14 and structures(dm.val_dataloader()) < 6  # a share
    train, val = dm.whole_split_loaders()
    assert structures(train) == len(dm.train_set) == 14 and structures(val) == len(dm.val_set) == 6


def test_no_uncertainty_is_a_one_line_error_in_eval(tiny_data, write_config, capsys):
    cfg = write_config(tiny_data)
    assert main(["train", "--config", str(cfg), "training.uncertainty=none"]) == 0
    model = tiny_data / "runs" / "tiny" / "model.pt"
    assert read_model_file(model)["model_config"]["uncertainty"] is None
    capsys.readouterr()
    assert main(["eval", str(model), str(tiny_data / "tiny" / "acac_20.xyz"), "--uncertainty"]) == 1
    err = capsys.readouterr().err
    assert "has no uncertainty" in err and len(err.strip().splitlines()) == 1


def test_committee_trains_members_on_one_split_and_resumes(tiny_data, write_config, capsys):
    cfg = write_config(tiny_data)
    assert main(["train", "--config", str(cfg), "--committee", "2"]) == 0
    out = capsys.readouterr().out
    run = tiny_data / "runs" / "tiny"
    assert "committee of 2" in out and "rho F/str" in out
    summary = json.loads((run / "summary.json").read_text())
    assert len(summary["alpha"]) == 2 and all(a > 0 for a in summary["alpha"])
    seeds, vals = [], []
    for k in range(2):
        member = json.loads((run / f"member_{k}" / "summary.json").read_text())
        assert Path(member["model"]).exists()
        import yaml

        config = yaml.safe_load((run / f"member_{k}" / "config.yaml").read_text())
        seeds.append(config["seed"])
        vals.append(config["data"]["split_seed"])
    assert seeds == [1, 2] and vals == [1, 1]
    # the committee file drives the calculator: mean energy, uncertainties in results
    from mlip.integrations.ase import MLIPCalculator

    atoms = ase.io.read(tiny_data / "tiny" / "acac_20.xyz", 0)
    atoms.calc = MLIPCalculator(str(run / "committee.pt"), device="cpu")
    energy = atoms.get_potential_energy()
    members = []
    for k in range(2):
        a = atoms.copy()
        a.calc = MLIPCalculator(str(run / f"member_{k}" / "model.pt"), device="cpu")
        members.append(a.get_potential_energy())
    assert energy == pytest.approx(sum(members) / 2, abs=1e-9)
    assert atoms.calc.results["energy_uncertainty"] == pytest.approx(
        summary["alpha"][0] * abs(members[0] - members[1]) / 2 ** 0.5, rel=1e-6)
    # resume: finished members are not retrained
    assert main(["train", "--config", str(cfg), "--committee", "2", "--resume"]) == 0
    again = capsys.readouterr().out
    assert again.count("already trained") == 2


def test_torchsim_model_passes_uncertainties_on(tiny_data, write_config):
    ts = pytest.importorskip("torch_sim")
    from mlip.integrations.torchsim import MLIPModel

    assert main(["train", "--config", str(write_config(tiny_data))]) == 0
    model = MLIPModel(str(tiny_data / "runs" / "tiny" / "model.pt"), device="cpu", dtype=torch.float64)
    frames = ase.io.read(tiny_data / "tiny" / "acac_20.xyz", ":3")
    state = ts.initialize_state(frames, device=torch.device("cpu"), dtype=torch.float64)
    out = model(state)
    assert out["forces_uncertainty"].shape == (45,) and out["energy_uncertainty"].shape == (3,)
    largest = model.max_forces_uncertainty(state)
    torch.testing.assert_close(largest, out["forces_uncertainty"].view(3, 15).amax(dim=1))


def test_export_committee_from_separate_models(tiny_data, write_config, capsys):
    """Models trained apart become one calibrated committee file; a member with other
    elements or no such file is a one-line error."""
    cfg = write_config(tiny_data)
    paths = []
    for seed in (1, 2):
        assert main(["train", "--config", str(cfg), f"seed={seed}", f"run_name=m{seed}"]) == 0
        paths.append(str(tiny_data / "runs" / f"m{seed}" / "model.pt"))
    out = tiny_data / "c.pt"
    data = str(tiny_data / "tiny" / "acac_20.xyz")
    capsys.readouterr()
    assert main(["export", "committee", *paths, "-o", str(out), "--calibrate", data]) == 0
    assert "committee of 2, calibrated on" in capsys.readouterr().out
    from mlip.inference.engine import ForceField
    from mlip.training.evaluate import evaluate_file

    engine = ForceField(str(out), device="cpu")
    assert all(a > 0 for a in engine.committee_alpha)
    c = evaluate_file(engine, data, 5, progress=False, uncertainty=True)["calibration"]
    # calibrated on this file: mean(err^2 / sigma^2) = 1 for the forces
    assert ((c["f_err"] ** 2).sum(-1) / c["f_sigma"] ** 2).mean() == pytest.approx(1.0, rel=1e-6)
    assert main(["export", "committee", paths[0], str(tiny_data / "none.pt"), "-o", str(out)]) == 1
    assert "does not exist" in capsys.readouterr().err
