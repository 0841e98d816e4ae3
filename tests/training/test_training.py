"""Training: overfitting, the train CLI end to end, checkpoint -> model file round trip,
exact resume (config writer and folder: tests/training/conftest.py; DDP: test_ddp.py)."""

from __future__ import annotations

import json

import ase.io
import numpy as np
import pytest
import torch
import yaml

from mlip.cli.main import main
from mlip.data import keys
from mlip.graph.build import atoms_to_batch
from mlip.model.build import build_potential
from mlip.model.io import load_model
from mlip.training.metrics import weighted_loss

TINY_BACKBONE = {
    "class_path": "mlip.backbones.equivariant.EquivariantBackbone",
    "init_args": {"channels": 8, "lmax_hidden": 1, "lmax_sh": 1, "correlation": 2,
                  "num_layers": 2, "radial_hidden": 16},
}


def test_overfit_five_frames(bundled_acac):
    """Five acac frames: 150 Adam steps drive the force loss down by more than 10x."""
    torch.manual_seed(0)
    frames = ase.io.read(bundled_acac / "train_300K.xyz", ":5")
    e0 = {a.numbers[0]: a.get_potential_energy()
          for a in ase.io.read(bundled_acac / "isolated_atoms.xyz", ":")}
    model = build_potential({"backbone": TINY_BACKBONE}, [1, 6, 8], [e0[1], e0[6], e0[8]],
                            1.0, 0.0, 5.0, 12.0)
    data = atoms_to_batch(frames, 5.0, dtype=torch.float32)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    losses = []
    for _ in range(150):
        opt.zero_grad()
        parts = weighted_loss(model(data, training=True), data, 1.0, 100.0, 0.0)
        parts["loss"].backward()
        opt.step()
        losses.append(float(parts["loss_f"]))
    assert losses[-1] < losses[0] / 10, (losses[0], losses[-1])


def test_train_cli_writes_run_and_model_round_trips(tiny_data, write_config, capsys):
    cfg = write_config(tiny_data)
    assert main(["train", "--config", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert "held-out force MAE on acac_20.xyz" in out
    # Without a terminal: one line per epoch with the train and validation errors, in order.
    lines = [ln for ln in out.splitlines() if ln.startswith("epoch ")]
    assert [ln.split(",")[0] for ln in lines] == ["epoch 1/2", "epoch 2/2"], out
    assert all("train F MAE" in ln and "val F MAE" in ln and "elapsed" in ln for ln in lines)
    assert "training stopped after 2 epochs" in out
    run = tiny_data / "runs" / "tiny"
    for rel in ("config.yaml", "model.pt", "summary.json", "checkpoints/last.ckpt",
                "checkpoints/best.ckpt"):
        assert (run / rel).is_file(), rel
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    # The model file is plain data: loadable with weights_only=True.
    payload = torch.load(run / "model.pt", weights_only=True)
    assert payload["atomic_numbers"] == [1, 6, 8] and payload["cutoff"] == 4.0
    # checkpoint (EMA weights) + the final E0 refit's E0s -> model file -> reload: identical
    # predictions.
    from mlip.ops.buffers import register_exact
    from mlip.training.module import PotentialModule

    ckpt = torch.load(run / "checkpoints" / "best.ckpt", weights_only=True)
    module = PotentialModule(**ckpt["hyper_parameters"])
    module.load_state_dict(ckpt["state_dict"])
    module.on_load_checkpoint(ckpt)
    module.model.load_state_dict(module.export_state_dict())
    refit = json.loads((run / "summary.json").read_text())["final_e0_refit"]["e0s"]
    assert refit != module.model.e0s.tolist()  # the refit moved them
    register_exact(module.model, "e0s", torch.tensor(refit, dtype=torch.float64), persistent=True)
    frames = ase.io.read(tiny_data / "tiny" / "acac_20.xyz", ":4")
    data = atoms_to_batch(frames, 4.0, dtype=torch.float64)
    a = module.model(data)
    b = load_model(run / "model.pt")(data)
    assert torch.equal(a[keys.ENERGY], b[keys.ENERGY])
    assert torch.equal(a[keys.FORCES], b[keys.FORCES])
    # A second run into the same folder is refused with a clear message.
    assert main(["train", "--config", str(cfg)]) == 1
    assert "--resume" in capsys.readouterr().err
    # mlip eval: table, JSON, parity plots.
    js = tiny_data / "eval.json"
    assert main(["eval", str(run / "model.pt"), str(tiny_data / "tiny" / "acac_20.xyz"),
                 "--json", str(js), "--plots", str(tiny_data / "plots")]) == 0
    result = json.loads(js.read_text())["results"][0]
    assert result["structures"] == 20 and result["atoms"] == 300
    # The reported errors equal an independent computation from the model's predictions on
    # the frames as ASE reads them (meV, meV/Å).
    frames = ase.io.read(tiny_data / "tiny" / "acac_20.xyz", ":")
    model = load_model(run / "model.pt")
    pred = model(atoms_to_batch(frames, model.cutoff, dtype=torch.float64))
    f_ref = np.concatenate([a.get_forces() for a in frames])
    e_ref = np.array([a.get_potential_energy() for a in frames])
    f_err = pred[keys.FORCES].detach().numpy() - f_ref
    e_err = pred[keys.ENERGY].detach().numpy() - e_ref
    assert result["f_mae"] == pytest.approx(1000 * np.abs(f_err).mean(), rel=1e-9)
    assert result["f_rmse"] == pytest.approx(1000 * np.sqrt(np.mean(f_err**2)), rel=1e-9)
    assert result["e_mae"] == pytest.approx(1000 * np.abs(e_err).mean(), rel=1e-9)
    assert result["e_mae_per_atom"] == pytest.approx(1000 * np.abs(e_err / 15).mean(), rel=1e-9)
    assert (tiny_data / "plots" / "acac_20_forces.png").is_file()
    # Training and evaluating wrote nothing beside the data file (caches: $MLIP_CACHE_DIR).
    assert sorted(p.name for p in (tiny_data / "tiny").iterdir()) == ["acac_20.xyz"]


def test_eval_energy_only_file(tiny_data, write_config, tiny, capsys):
    cfg = write_config(tiny_data, max_epochs=1)
    assert main(["train", "--config", str(cfg), "data.test=[]"]) == 0
    # --overwrite replaces the earlier run (and says so); a folder without a run is kept.
    (tiny_data / "runs" / "tiny" / "stale.txt").write_text("from the earlier run")
    capsys.readouterr()
    assert main(["train", "--config", str(cfg), "data.test=[]", "--overwrite"]) == 0
    assert "replacing the earlier run" in capsys.readouterr().out
    assert not (tiny_data / "runs" / "tiny" / "stale.txt").exists()
    # A replacement that fails in its setup (here: a missing training file) keeps the earlier run.
    before = (tiny_data / "runs" / "tiny" / "model.pt").read_bytes()
    assert main(["train", "--config", str(cfg), "data.test=[]", "data.train=missing.xyz",
                 "--overwrite"]) == 1
    assert "missing.xyz" in capsys.readouterr().err
    assert (tiny_data / "runs" / "tiny" / "model.pt").read_bytes() == before
    assert sorted(p.name for p in (tiny_data / "runs").iterdir()) == ["tiny"]
    (tiny_data / "runs" / "tiny" / "config.yaml").unlink()
    assert main(["train", "--config", str(cfg), "data.test=[]", "--overwrite"]) == 1
    assert "holds no mlip run" in capsys.readouterr().err
    assert (tiny_data / "runs" / "tiny" / "model.pt").exists()
    no_forces = tiny_data / "no_forces.xyz"
    no_forces.write_bytes((tiny / "no_forces.xyz").read_bytes())
    js = tiny_data / "e.json"
    assert main(["eval", str(tiny_data / "runs" / "tiny" / "model.pt"), str(no_forces),
                 "--json", str(js)]) == 0
    result = json.loads(js.read_text())["results"][0]
    assert "e_mae" in result and "f_mae" not in result


def test_resume_continues_exactly(tiny_data, write_config):
    """2 epochs straight == 1 epoch, then --resume to 2 (weights, EMA and optimiser)."""
    cfg = write_config(tiny_data)
    assert main(["train", "--config", str(cfg), "run_name=straight"]) == 0
    assert main(["train", "--config", str(cfg), "run_name=split",
                 "training.schedule.max_epochs=1"]) == 0
    assert main(["train", "--config", str(cfg), "run_name=split", "--resume"]) == 0
    a = torch.load(tiny_data / "runs" / "straight" / "model.pt", weights_only=True)
    b = torch.load(tiny_data / "runs" / "split" / "model.pt", weights_only=True)
    la = torch.load(tiny_data / "runs" / "straight" / "checkpoints" / "last.ckpt", weights_only=True)
    lb = torch.load(tiny_data / "runs" / "split" / "checkpoints" / "last.ckpt", weights_only=True)
    assert la["epoch"] == lb["epoch"]
    for k, v in la["state_dict"].items():
        torch.testing.assert_close(lb["state_dict"][k], v, rtol=1e-10, atol=1e-12)
    for k, v in a["state_dict"].items():
        torch.testing.assert_close(b["state_dict"][k], v, rtol=1e-10, atol=1e-12)


TINY_TRANSIP = {"class_path": "mlip.backbones.transip.TransIPBackbone",
                "init_args": {"width": 16, "depth": 1, "heads": 2, "edge_width": 16,
                              "embedding_channels": 4, "embedding_lmax": 1}}


@pytest.mark.parametrize(("direct_forces", "objective"),
                         [(False, "regression"), (True, "regression"), (False, "contrastive")])
def test_transip_trains_with_objective_and_runs_md(tiny_data, write_config, capsys,
                                                  direct_forces, objective):
    """TransIP through the same CLI: train with augmentation + the learned-equivariance
    objective (logged; the contrastive run with the learned T(R) and a warm-up/decay
    schedule), then `mlip md` with the exported model (conservative forces, or the direct
    force head)."""
    extra = ({"equivariance_objective": "contrastive", "equivariance_transform": "wigner_mix",
              "equivariance_schedule": "warmup_decay"} if objective == "contrastive" else {})
    cfg = write_config(tiny_data, augment_rotations=True, equivariance_weight=1.0, **extra)
    config = yaml.safe_load(cfg.read_text())
    config["model"]["backbone"] = {"class_path": TINY_TRANSIP["class_path"],
                                   "init_args": {**TINY_TRANSIP["init_args"],
                                                 "direct_forces": direct_forces}}
    cfg.write_text(yaml.safe_dump(config))
    assert main(["train", "--config", str(cfg)]) == 0
    run = tiny_data / "runs" / "tiny"
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(next((run / "tensorboard").glob("events.out.tfevents.*"))))
    events.Reload()
    eq = [s.value for s in events.Scalars("train/equivariance_loss")]
    assert eq and all(np.isfinite(eq)), eq
    if objective == "contrastive":
        # T(R) trained jointly (its zero-initialised last layer moved), kept out of model.pt
        state = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
        assert state["loss_terms.equivariance.transform.net.2.weight"].abs().sum() > 0
        exported = torch.load(run / "model.pt", weights_only=True)["state_dict"]
        assert exported and not any("transform" in k for k in exported), list(exported)
        assert set(exported) == set(load_model(run / "model.pt").state_dict())
    capsys.readouterr()
    assert main(["md", "--compile", "none", str(run / "model.pt"), str(tiny_data / "tiny" / "acac_20.xyz"),
                 "--ensemble", "langevin", "--steps", "20", "--timestep", "0.25",
                 "--device", "cpu", "--quiet", "--log", str(tiny_data / "md.log")]) == 0
    assert "20 langevin steps of 15 atoms" in capsys.readouterr().out
    assert np.loadtxt(tiny_data / "md.log").shape[0] == 3


def test_final_e0_refit_removes_the_mean_energy_offset_on_the_training_split(tiny_data, write_config, capsys):
    """After training, the E0s move by the least-squares fit of the training split's energy
    residuals over element counts: for one composition the residuals then average to zero
    (two epochs leave an offset of tens of meV); switched off, the file keeps the E0 file's."""
    from mlip.training.config import load_config
    from mlip.training.datamodule import PotentialDataModule
    from mlip.training.finetune import training_split_loader

    cfg = write_config(tiny_data)
    assert main(["train", "--config", str(cfg), "data.test=[]"]) == 0
    assert "E0s refit on the training split after training" in capsys.readouterr().out
    run = tiny_data / "runs" / "tiny"
    dm = PotentialDataModule(load_config(cfg))
    dm.prepare()
    model = load_model(run / "model.pt")
    residuals = []
    for batch in training_split_loader(dm):
        out = model(batch, compute_forces=False)
        residuals += (batch[keys.ENERGY] - out[keys.ENERGY]).tolist()
    summary = json.loads((run / "summary.json").read_text())["final_e0_refit"]
    assert len(residuals) == 14 and abs(np.mean(residuals)) < 1e-9
    assert summary["mae_per_atom_after"] <= summary["mae_per_atom_before"]
    file_e0s = {a.numbers[0]: a.get_potential_energy()
                for a in ase.io.read(tiny_data / "acac" / "isolated_atoms.xyz", ":")}
    moved = model.e0s.numpy() - [file_e0s[z] for z in model.atomic_numbers]
    np.testing.assert_allclose(moved, np.array(summary["delta_mev"]) / 1000, atol=1e-12)
    assert np.abs(moved).max() > 1e-4  # two epochs do leave an offset to remove
    assert main(["train", "--config", str(cfg), "data.test=[]", "training.final_e0_refit=false",
                 "--overwrite"]) == 0
    kept = load_model(run / "model.pt")
    assert kept.e0s.tolist() == [file_e0s[z] for z in kept.atomic_numbers]
