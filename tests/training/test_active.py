"""The active-learning loop end to end on tiny data with a fake labeller (ASE's EMT, failing
on purpose on some frames): rounds write their frames, labels, failures, models and
metrics; a loop killed in round 2 resumes there without redoing rounds 0 and 1; selection
by uncertainty takes the most uncertain candidates, diverse ones first."""

from __future__ import annotations

import json

import ase
import ase.io
import numpy as np
import pytest
import yaml
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator

from mlip.cli.main import main
from mlip.training.active import sample_candidates, select_frames

FLAKY = '''
import os
from pathlib import Path
from ase.calculators.emt import EMT


class FlakyEMT(EMT):
    """EMT that fails every third call (an SCF that does not converge) and, while the file
    KILL exists, interrupts the process at its call number given in that file."""

    calls = 0

    def calculate(self, atoms=None, properties=("energy",), system_changes=None):
        FlakyEMT.calls += 1
        kill = Path(os.environ["FLAKY_DIR"]) / "KILL"
        if kill.exists() and FlakyEMT.calls >= int(kill.read_text()):
            raise KeyboardInterrupt("killed")
        if FlakyEMT.calls % 3 == 0:
            raise RuntimeError("SCF not converged")
        super().calculate(atoms, properties, system_changes or ["positions"])
'''


def _emt_frames(frames: list[ase.Atoms]) -> list[ase.Atoms]:
    out = []
    for a in frames:
        b = ase.Atoms(numbers=a.numbers, positions=a.positions)
        b.calc = EMT()
        b.calc = SinglePointCalculator(b, energy=b.get_potential_energy(), forces=b.get_forces())
        out.append(b)
    return out


@pytest.fixture
def loop(tiny_data, write_config, monkeypatch):
    (tiny_data / "flaky_labeller.py").write_text(FLAKY)
    monkeypatch.syspath_prepend(str(tiny_data))
    monkeypatch.setenv("FLAKY_DIR", str(tiny_data))
    frames = _emt_frames(ase.io.read(tiny_data / "tiny" / "acac_20.xyz", ":"))
    ase.io.write(tiny_data / "initial.xyz", frames[:8])
    ase.io.write(tiny_data / "test.xyz", frames[14:])
    train_config = write_config(tiny_data)
    config = {"run_dir": str(tiny_data / "al"), "train_config": str(train_config),
              "overrides": ["data.val_size=3", "data.test=[]"],
              "initial": str(tiny_data / "initial.xyz"), "test": [str(tiny_data / "test.xyz")],
              "rounds": 2, "per_round": 3, "seed": 0,
              "sampling": {"temperature": 300.0, "steps": 20, "interval": 5, "starts": 2,
                           "max_temperature_factor": 1000.0},
              "labeller": {"calculator": "flaky_labeller:FlakyEMT"}}
    path = tiny_data / "learn.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_two_rounds_run_end_to_end_and_resume_after_a_kill(loop, tiny_data, capsys):
    run = tiny_data / "al"
    (tiny_data / "KILL").write_text("5")  # round 1 labels calls 1-3, round 2 is killed at call 5
    with pytest.raises(KeyboardInterrupt):
        main(["learn", "--config", str(loop)])
    assert (run / "round_01" / "metrics.json").exists()
    assert not (run / "round_02" / "labelled.xyz").exists()  # nothing half-written
    assert not list(run.glob("round_02/*.partial-*"))
    first_model = run / "models" / "round_01" / "model.pt"
    stamp = first_model.stat().st_mtime_ns
    (tiny_data / "KILL").unlink()
    capsys.readouterr()
    assert main(["learn", "--config", str(loop)]) == 0
    out = capsys.readouterr().out
    assert first_model.stat().st_mtime_ns == stamp  # rounds 0 and 1 were not redone
    summary = json.loads((run / "summary.json").read_text())
    assert [r["round"] for r in summary["rounds"]] == [0, 1, 2]
    for r in (1, 2):
        folder = run / f"round_{r:02d}"
        candidates = ase.io.read(folder / "candidates.xyz", ":")
        assert len(candidates) == 2 * 5  # 2 runs x steps 0, 5, ..., 20
        assert all("forces_uncertainty" in c.arrays for c in candidates)
        selected = ase.io.read(folder / "selected.xyz", ":")
        failures = json.loads((folder / "failures.json").read_text())
        labelled = ase.io.read(folder / "labelled.xyz", ":") if (folder / "labelled.xyz").stat().st_size else []
        assert len(selected) == 3 and len(labelled) + len(failures) == 3
        assert all("SCF not converged" in f["error"] for f in failures)
        kept = {tuple(np.round(a.positions.ravel(), 6)) for a in labelled}
        failed = {tuple(np.round(selected[f["index"]].positions.ravel(), 6)) for f in failures}
        assert not kept & failed  # a failed frame is never kept
    assert sum(r.get("failures", 0) for r in summary["rounds"]) >= 1
    labels = [r["labels"] for r in summary["rounds"]]
    assert labels[0] == 8 and labels == sorted(labels)
    assert "round" in out and "F MAE" in out
    assert all("uncertainty" in t for r in summary["rounds"] for t in r["test"])
    # the sampler's stops: past max_uncertainty the frame is kept and the run ends; past the
    # temperature cap the frame is dropped
    model = run / "models" / "round_02" / "model.pt"
    starts = ase.io.read(tiny_data / "initial.xyz", ":2")
    settings = {"temperature": 300.0, "steps": 20, "interval": 5, "timestep": 0.5, "friction": 0.01,
                "starts": 2, "max_uncertainty": 1e-9, "max_temperature_factor": 1000.0, "min_distance": 0.5}
    frames, report = sample_candidates(model, starts, settings, seed=0)
    assert len(frames) == 2 and all(f.info["md_step"] == 0 for f in frames)
    assert all("force uncertainty" in e for e in report["ended_early"])
    settings.update(max_uncertainty=None, max_temperature_factor=1e-6)
    frames, report = sample_candidates(model, starts, settings, seed=0)
    assert len(frames) == 2 and all("frame dropped" in e for e in report["ended_early"])


def test_uncertainty_selection_takes_the_most_uncertain_and_spreads_them():
    frames = []
    for k in range(10):
        a = ase.Atoms("H")
        a.info["rms_forces_uncertainty"] = float(k)
        frames.append(a)
    features = np.array([[0.0], [0.0], [0.0], [0.0], [0.0], [0.0], [1.0], [1.0], [5.0], [5.0]])
    # pool = the 4 most uncertain (9, 8, 7, 6); FPS from 9: then 6 or 7 (feature 1), never 8 (a copy of 9)
    chosen = select_frames(frames, 2, "uncertainty", 2, seed=0, features=features)
    assert 9 in chosen and 8 not in chosen and set(chosen) <= {6, 7, 9}
    random = select_frames(frames, 3, "random", 2, seed=0)
    assert len(set(random)) == 3


def test_bad_loop_configs_are_one_line_errors(loop, tiny_data, capsys):
    assert main(["learn", "--config", str(loop), "selection=best"]) == 1
    assert "selection" in capsys.readouterr().err
    assert main(["learn", "--config", str(loop), "labeller.calculator=nowhere"]) == 1
    err = capsys.readouterr().err
    assert "labeller.calculator" in err or "nowhere" in err
