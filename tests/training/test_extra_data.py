"""``data.extra``: frames added to the training split only, each file with its loss weight
(the dissociation frames of `mlip data dissociation`)."""

from __future__ import annotations

import ase
import ase.io
import numpy as np
import pytest
import torch
from ase.calculators.singlepoint import SinglePointCalculator

from mlip.data import keys
from mlip.training.config import load_config
from mlip.training.datamodule import PotentialDataModule
from mlip.training.metrics import stage_weights, weighted_loss


def _batch(weights=None):
    torch.manual_seed(0)
    n = torch.tensor([2, 3, 1])
    ref = {keys.NUM_ATOMS: n, keys.ENERGY: torch.randn(3, dtype=torch.float64),
           keys.FORCES: torch.randn(6, 3, dtype=torch.float64),
           keys.ENERGY_MASK: torch.tensor([1.0, 1.0, 0.0], dtype=torch.float64),
           keys.FORCES_MASK: torch.ones(3, dtype=torch.float64),
           keys.BATCH: torch.repeat_interleave(torch.arange(3), n)}
    if weights is not None:
        ref[keys.LOSS_WEIGHT] = torch.tensor(weights, dtype=torch.float64)
    pred = {keys.ENERGY: torch.randn(3, dtype=torch.float64), keys.FORCES: torch.randn(6, 3, dtype=torch.float64)}
    return pred, ref


def test_loss_weights_scale_each_structure_and_keep_the_divisors():
    pred, ref = _batch([1.0, 3.0, 0.5])
    loss = weighted_loss(pred, ref, 1.0, 10.0, 0.0)
    de = ((pred[keys.ENERGY] - ref[keys.ENERGY]) / ref[keys.NUM_ATOMS]) ** 2
    expected_e = (1.0 * de[0] + 3.0 * de[1]) / 2  # two energy labels
    w_atoms = torch.tensor([1.0, 3.0, 0.5], dtype=torch.float64)[ref[keys.BATCH]]
    expected_f = (w_atoms[:, None] * (pred[keys.FORCES] - ref[keys.FORCES]) ** 2).sum() / 18
    assert float(loss["loss_e"]) == pytest.approx(float(expected_e), rel=1e-12)
    assert float(loss["loss_f"]) == pytest.approx(float(expected_f), rel=1e-12)
    unweighted = weighted_loss(*_batch(), 1.0, 10.0, 0.0)
    ones = weighted_loss(*_batch([1.0, 1.0, 1.0]), 1.0, 10.0, 0.0)
    assert float(ones["loss"]) == float(unweighted["loss"])
    # LOSS_WEIGHT_FORCES multiplies the force terms alone (0: that structure trains energies only)
    pred, ref = _batch([1.0, 3.0, 0.5])
    ref[keys.LOSS_WEIGHT_FORCES] = torch.tensor([1.0, 0.0, 0.2], dtype=torch.float64)
    factored = weighted_loss(pred, ref, 1.0, 10.0, 0.0)
    w_atoms = torch.tensor([1.0, 0.0, 0.1], dtype=torch.float64)[ref[keys.BATCH]]
    expected_f = (w_atoms[:, None] * (pred[keys.FORCES] - ref[keys.FORCES]) ** 2).sum() / 18
    assert float(factored["loss_f"]) == pytest.approx(float(expected_f), rel=1e-12)
    assert float(factored["loss_e"]) == float(loss["loss_e"])


def _extra_file(path, numbers=(1, 8), count=4):
    frames = []
    for k in range(count):
        a = ase.Atoms(numbers=list(numbers), positions=[[0, 0, 0], [0, 0, 1.0 + 0.5 * k]])
        a.calc = SinglePointCalculator(a, energy=-50.0 - k, forces=np.zeros((2, 3)))
        frames.append(a)
    ase.io.write(path, frames)
    return path


def test_extra_frames_train_only_and_leave_the_statistics(tiny_data, write_config):
    base_cfg = load_config(write_config(tiny_data))
    extra = _extra_file(tiny_data / "extra.xyz")
    cfg = load_config(write_config(tiny_data),
                      [f"data.extra=[{{file: {extra}, weight: 2.5, stage_two_weight: 0.5, forces_weight: 0.1}}]"])
    assert cfg["data"]["extra"] == [{"file": str(extra), "weight": 2.5, "stage_two_weight": 0.5,
                                     "forces_weight": 0.1}]
    plain, with_extra = PotentialDataModule(base_cfg), PotentialDataModule(cfg)
    plain.prepare()
    with_extra.prepare()
    assert len(with_extra.train_set) == len(plain.train_set) + 4 and with_extra.extra_count == 4
    assert len(with_extra.val_set) == len(plain.val_set)
    assert with_extra.val_set.indices == plain.val_set.indices
    assert with_extra.statistics == plain.statistics  # E0s, scale, neighbours, closest pairs
    assert with_extra.data_info()["shift"] == plain.data_info()["shift"]
    np.testing.assert_array_equal(with_extra.train_weights,
                                  [[1.0, 1.0, 1.0]] * len(plain.train_set) + [[2.5, 0.5, 0.1]] * 4)
    seen = []
    for batch in with_extra.train_dataloader():
        assert keys.LOSS_WEIGHT in batch
        seen += list(zip(batch[keys.NUM_ATOMS].tolist(), batch[keys.LOSS_WEIGHT].tolist(),
                         batch[keys.LOSS_WEIGHT_STAGE_TWO].tolist(),
                         batch[keys.LOSS_WEIGHT_FORCES].tolist(), strict=True))
        two = stage_weights(batch, stage_two=True)
        assert torch.equal(two[keys.LOSS_WEIGHT], batch[keys.LOSS_WEIGHT_STAGE_TWO])
        assert stage_weights(batch, stage_two=False) is batch
    assert sorted((w, w2, round(fw, 6)) for n, w, w2, fw in seen if n == 2) == [(2.5, 0.5, 0.1)] * 4  # the dimers
    assert all(w == w2 == fw == 1.0 for n, w, w2, fw in seen if n != 2)
    assert all(keys.LOSS_WEIGHT not in b for b in plain.train_dataloader())


def test_extra_frames_with_unknown_elements_are_refused(tiny_data, write_config):
    extra = _extra_file(tiny_data / "nitrogen.xyz", numbers=(1, 7))
    cfg = load_config(write_config(tiny_data), [f"data.extra=[{extra}]"])
    # by default an extra file sits out stage two (whose x1000 energy weight is for the data)
    assert cfg["data"]["extra"] == [{"file": str(extra), "weight": 1.0, "stage_two_weight": 0.0,
                                     "forces_weight": 1.0}]
    dm = PotentialDataModule(cfg)
    with pytest.raises(ValueError, match=r"nitrogen.xyz \(data.extra\): element\(s\) \['N'\] are not in "
                                         "the training data"):
        dm.prepare()


def test_extra_entries_are_checked(tiny_data, write_config):
    with pytest.raises(ValueError, match=r"data.extra: expected a list of \{file: PATH, weight"):
        load_config(write_config(tiny_data), ["data.extra=[{file: x.xyz, weight: -1}]"])
    with pytest.raises(ValueError, match=r"data.extra: expected"):
        load_config(write_config(tiny_data), ["data.extra=[{file: x.xyz, stage_two_weight: -1}]"])
    with pytest.raises(ValueError, match=r"data.extra: expected"):
        load_config(write_config(tiny_data), ["data.extra=[{file: x.xyz, forces_weight: -0.5}]"])
