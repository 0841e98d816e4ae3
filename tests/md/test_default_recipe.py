"""Stable defaults: the README's quickstart recipe, cut to 20 epochs (about two minutes
of training on a quiet 2-core machine; an epoch budget, so a loaded machine trains the same
model, only later), gives a model that runs 10 ps of NVE on acac with `mlip md`'s defaults (300 K,
0.5 fs) without blowing up: no stop by the drift or temperature guards, a bounded
temperature, total energy conserved to a few meV/atom and no collapsed contacts."""

from __future__ import annotations

from pathlib import Path

import ase.io
import numpy as np
import pytest

from mlip.cli.main import main

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_quickstart_model_runs_10_ps_of_nve(tmp_path: Path, capsys) -> None:
    config = REPO / "configs" / "quickstart.yaml"
    assert main(["train", "--config", str(config), f"output_dir={tmp_path}", "run_name=qs",
                 "training.schedule.max_epochs=20", "training.schedule.max_time=null", "data.test=[]",
                 "training.trainer.enable_progress_bar=false"]) == 0
    model = tmp_path / "qs" / "model.pt"
    log, traj = tmp_path / "md.log", tmp_path / "md.xyz"
    assert main(["md", str(model), str(REPO / "data" / "acac" / "test_MD_300K.xyz"),
                 "--steps", "20000", "--log", str(log), "--out", str(traj), "--log-every", "200",
                 "--quiet", "--no-malloc-tuning"]) == 0
    assert "20000 nve steps" in capsys.readouterr().out
    rows = np.loadtxt(log)  # time [ps], Epot, Ekin, Etot [eV], T [K]
    assert rows[-1, 0] == pytest.approx(10.0)
    natoms = len(ase.io.read(traj, 0))
    drift = np.abs(rows[:, 3] - rows[0, 3]).max() / natoms
    assert drift < 5e-3, f"total energy moved {drift * 1e3:.2f} meV/atom"  # 3-min model: 0.35
    assert rows[:, 4].max() < 1500.0  # 3-min model: 208-390 K
    for atoms in ase.io.read(traj, ":"):
        d = atoms.get_all_distances()[np.triu_indices(natoms, 1)]
        assert d.min() > 0.6, f"collapsed contact {d.min():.2f} Å at {atoms.info}"
