"""MD with a model that has an uncertainty: the largest per-atom force uncertainty is logged,
``--max-uncertainty`` writes the offending frame and stops (or warns), for one system and for
batched replicas."""

from __future__ import annotations

import copy

import ase.io
import numpy as np
import pytest
import torch

from mlip.cli.main import main
from mlip.graph.build import atoms_to_batch
from mlip.model.io import save_model
from mlip.model.uncertainty import fit_last_layer


@pytest.fixture(scope="module")
def uncertain_model_file(stable_acac_model, stable_backbone, tmp_path_factory):
    model, frames = stable_acac_model
    model = copy.deepcopy(model)
    batches = [atoms_to_batch(frames[k:k + 5], 5.0, dtype=torch.float64) for k in range(0, 50, 5)]
    fit_last_layer(model, batches[:8], batches[8:])
    return save_model(tmp_path_factory.mktemp("u") / "model.pt", model, {"backbone": stable_backbone}, 12.0)


def md(model, structure, tmp_path, *extra):
    return main(["md", "--compile", "none", str(model), str(structure), "--ensemble", "langevin",
                 "--steps", "20", "--log-every", "5", "--device", "cpu", "--quiet",
                 "--log", str(tmp_path / "md.log"), *extra])


def test_largest_uncertainty_is_logged_and_a_high_limit_never_fires(uncertain_model_file, bundled_acac,
                                                                    tmp_path, capsys):
    frames = tmp_path / "u.xyz"
    assert md(uncertain_model_file, bundled_acac / "train_300K.xyz", tmp_path, "--max-uncertainty", "1e6",
              "--uncertain-out", str(frames)) == 0
    log = np.loadtxt(tmp_path / "md.log")
    assert log.shape == (5, 6) and (log[:, 5] > 0).all()  # time Epot Ekin Etot T maxUF
    assert "largest per-atom force uncertainty" in capsys.readouterr().out
    assert not frames.exists()


def test_limit_stops_and_writes_the_frame(uncertain_model_file, bundled_acac, tmp_path, capsys):
    frames = tmp_path / "u.xyz"
    code = md(uncertain_model_file, bundled_acac / "train_300K.xyz", tmp_path, "--max-uncertainty", "1e-6",
              "--uncertain-out", str(frames))
    err = capsys.readouterr().err
    assert code == 1
    lines = [line for line in err.splitlines() if line.startswith("mlip md")]
    assert len(lines) == 1 and "force uncertainty" in lines[0] and "step 0" in lines[0]
    written = ase.io.read(frames, ":")
    assert len(written) == 1 and written[0].info["md_step"] == 0
    u = written[0].arrays["forces_uncertainty"]
    assert written[0].info["max_forces_uncertainty"] == pytest.approx(u.max())


def test_warn_keeps_running_and_writes_one_frame_per_log_interval(uncertain_model_file, bundled_acac,
                                                                   tmp_path, capsys):
    frames = tmp_path / "u.xyz"
    assert md(uncertain_model_file, bundled_acac / "train_300K.xyz", tmp_path, "--max-uncertainty", "1e-6",
              "--on-uncertainty", "warn", "--uncertain-out", str(frames)) == 0
    out = capsys.readouterr().out
    assert out.count("mlip md: warning") == 1 and "21 step(s) above" in out
    assert [a.info["md_step"] for a in ase.io.read(frames, ":")] == [0, 5, 10, 15, 20]


def test_replicas_stop_naming_the_replica(uncertain_model_file, bundled_acac, tmp_path, capsys):
    frames = tmp_path / "u.xyz"
    code = md(uncertain_model_file, bundled_acac / "train_300K.xyz", tmp_path, "--replicas", "2",
              "--max-uncertainty", "1e-6", "--uncertain-out", str(frames))
    assert code == 1 and "force uncertainty" in capsys.readouterr().err
    written = ase.io.read(frames, ":")
    assert len(written) == 1 and written[0].info["replica"] in (0, 1)
    log = np.loadtxt(tmp_path / "md.log", ndmin=2)
    assert log.shape[1] == 7  # replica time Epot Ekin Etot T maxUF


def test_limit_without_an_uncertainty_is_a_one_line_error(stable_acac_model, stable_backbone, bundled_acac,
                                                          tmp_path, capsys):
    model, _ = stable_acac_model
    plain = save_model(tmp_path / "plain.pt", model, {"backbone": stable_backbone}, 12.0)
    assert md(plain, bundled_acac / "train_300K.xyz", tmp_path, "--max-uncertainty", "0.1") == 1
    assert "needs a model with an uncertainty" in capsys.readouterr().err
