"""The train CLI's scheduler choices (``cosine``, ``none``) and ``data.max_train``."""

from __future__ import annotations

import json

import pytest

from mlip.cli.main import main


def _logged_learning_rates(run) -> list[float]:
    """The per-epoch learning rates Lightning's LearningRateMonitor wrote to TensorBoard."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(next((run / "tensorboard").glob("events.out.tfevents.*"))))
    events.Reload()
    (tag,) = [t for t in events.Tags()["scalars"] if t.startswith("lr")]
    return [s.value for s in sorted(events.Scalars(tag), key=lambda s: s.step)]


@pytest.mark.parametrize(
    ("scheduler", "expected"),
    # lr 0.005, 2 epochs: cosine annealing over T_max = max_epochs gives
    # 0.005 (1 + cos(pi k / 2)) / 2 in epoch k; "none" keeps the rate.
    [("cosine", [0.005, 0.0025]), ("none", [0.005, 0.005])],
)
def test_scheduler_and_max_train(tiny_data, write_config, capsys, scheduler, expected):
    cfg = write_config(tiny_data, scheduler=scheduler, stage_two_start=None)
    assert main(["train", "--config", str(cfg), "data.max_train=5", "data.test=[]"]) == 0
    assert "5 train / 6 val structures" in capsys.readouterr().out
    run = tiny_data / "runs" / "tiny"
    assert _logged_learning_rates(run) == pytest.approx(expected, rel=1e-6)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["epochs"] == 2 and summary["train_structures"] == 5
    assert summary["last_metrics"]["train"]["structures"] == 5  # of the 14 left after val
    assert summary["last_metrics"]["val"]["structures"] == 6


def test_unknown_scheduler_is_refused(tiny_data, write_config, capsys):
    cfg = write_config(tiny_data, scheduler="exponential")
    assert main(["train", "--config", str(cfg)]) == 1
    assert ("training.schedule.scheduler: expected one of plateau, cosine, none, got 'exponential'"
            in capsys.readouterr().err)


def test_best_checkpoint_is_chosen_within_stage_two(tiny_data, write_config):
    """From stage two on val/loss carries the stage-two weights and the best-checkpoint
    selection restarts: the exported model is a stage-two epoch, not a stage-one epoch
    ranked by a loss with other weights."""
    import torch

    # a stage two that trains energies only, at a high rate: forces get worse, so a
    # selection by the stage-one loss would keep epoch 0
    cfg = write_config(tiny_data, stage_two_start=1, stage_two_energy_weight=1000.0,
                       stage_two_forces_weight=0.0, stage_two_lr=0.05)
    assert main(["train", "--config", str(cfg), "data.test=[]", "training.schedule.max_epochs=3"]) == 0
    run = tiny_data / "runs" / "tiny"
    summary = json.loads((run / "summary.json").read_text())
    best = torch.load(summary["best_checkpoint"], map_location="cpu", weights_only=True)
    assert best["stage_two"] is True and best["epoch"] >= 1
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]


def test_unknown_element_in_validation_data_is_one_line(tiny_data, write_config, tiny, capsys):
    """Validation data with an element the training split lacks."""
    cu = tiny_data / "cu.xyz"
    cu.write_bytes((tiny / "cu_emt_10.xyz").read_bytes())
    cfg = write_config(tiny_data, max_epochs=1)
    assert main(["train", "--config", str(cfg), f"data.val=[{cu}]", "data.test=[]"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert f"{cu}: element(s) ['Cu'] are not in the training data" in err
    assert not any((tiny_data / "runs").rglob("*.ckpt"))


def test_cosine_anneals_over_the_time_budget_when_it_binds(tmp_path):
    """With a wall-time budget that binds before max_epochs, the cosine factor follows the
    elapsed fraction of the budget (0.5 at half of it, 0 at its end); without one, or while
    the epochs bind first, it follows epoch / max_epochs."""
    import math
    import time

    import yaml

    from mlip.training.config import load_config
    from mlip.training.module import PotentialModule

    backbone = {"class_path": "mlip.backbones.equivariant.EquivariantBackbone",
                "init_args": {"channels": 4, "lmax_hidden": 1, "lmax_sh": 1, "correlation": 2,
                              "num_layers": 1, "radial_hidden": 8}}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"data": {"train": "train.xyz"}, "model": {"backbone": backbone},
                                    "training": {"schedule": {"scheduler": "cosine", "max_epochs": 100,
                                                              "max_time": "00:00:01:40"}}}))
    info = {"atomic_numbers": [1, 6], "e0s": [-13.6, -1029.0], "scale": 1.0, "shift": 0.0,
            "cutoff": 4.0, "avg_num_neighbors": 8.0, "closest_pairs": {}}
    module = PotentialModule(load_config(path), info)
    assert module._cosine_factor(0) == 1.0
    assert module._cosine_factor(50) == pytest.approx(0.5)  # not started: epochs only
    module._fit_start = time.time() - 50.0  # half of the 100 s budget used, 10 epochs done
    assert module._cosine_factor(10) == pytest.approx(0.5, abs=0.02)
    module._fit_start = time.time() - 100.0
    assert module._cosine_factor(10) == pytest.approx(0.0, abs=1e-9)
    module._fit_start = time.time() - 10.0  # epochs bind first: 60 / 100
    assert module._cosine_factor(60) == pytest.approx(0.5 * (1 + math.cos(0.6 * math.pi)), abs=0.02)
