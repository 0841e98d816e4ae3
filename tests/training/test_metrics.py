"""Training-time losses and metrics respect label masks: a structure
without forces (or energy) contributes nothing to the force (energy) loss and MAE, whatever
placeholder values its batch slots hold."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mlip.data import keys
from mlip.data.structure import Structure
from mlip.graph.build import structures_to_batch
from mlip.training.metrics import metric_sums, summarize, weighted_loss


def _structures() -> list[Structure]:
    rng = np.random.default_rng(0)
    out = []
    for n, forces, energy in ((3, True, True), (4, False, True), (2, True, False)):
        out.append(Structure(numbers=[1] * n, positions=rng.normal(size=(n, 3)) * 2,
                             energy=-float(n) if energy else None,
                             forces=rng.normal(size=(n, 3)) if forces else None))
    return out


def test_masked_structures_do_not_count() -> None:
    structures = _structures()
    batch = structures_to_batch(structures, 3.0, dtype=torch.float64)
    assert batch[keys.FORCES_MASK].tolist() == [1.0, 0.0, 1.0]
    assert batch[keys.ENERGY_MASK].tolist() == [1.0, 1.0, 0.0]
    rng = np.random.default_rng(1)
    pred = {keys.ENERGY: torch.tensor([-2.5, -3.0, 100.0], dtype=torch.float64),
            keys.FORCES: torch.tensor(rng.normal(size=(9, 3)))}
    # Garbage in the unlabelled slots must change nothing.
    ref = dict(batch)
    ref[keys.FORCES] = batch[keys.FORCES].clone()
    ref[keys.FORCES][3:7] = 1e6
    ref[keys.ENERGY] = batch[keys.ENERGY].clone()
    ref[keys.ENERGY][2] = -1e6
    metrics = summarize(metric_sums(pred, ref))
    labelled = np.r_[0:3, 7:9]
    f_err = (pred[keys.FORCES][labelled] - torch.tensor(
        np.concatenate([structures[0].forces, structures[2].forces]))).abs()
    assert metrics["f_mae"] == pytest.approx(1000 * f_err.mean().item(), rel=1e-12)
    assert metrics["e_mae"] == pytest.approx(1000 * (0.5 + 1.0) / 2, rel=1e-12)
    loss = weighted_loss(pred, ref, 1.0, 1.0, 0.0)
    assert loss["loss_f"].item() == pytest.approx(f_err.square().mean().item(), rel=1e-12)
    e_per_atom = np.array([0.5 / 3, 1.0 / 4])
    assert loss["loss_e"].item() == pytest.approx(np.mean(e_per_atom**2), rel=1e-12)


def test_no_labels_gives_no_metric() -> None:
    s = Structure(numbers=[1, 1], positions=[[0, 0, 0], [0.8, 0, 0]])
    batch = structures_to_batch([s], 3.0, dtype=torch.float64)
    pred = {keys.ENERGY: torch.zeros(1, dtype=torch.float64),
            keys.FORCES: torch.zeros(2, 3, dtype=torch.float64)}
    assert summarize(metric_sums(pred, batch)) == {}
    assert weighted_loss(pred, batch, 1.0, 1.0, 0.0)["loss"].item() == 0.0
