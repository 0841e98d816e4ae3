"""Batching by structure count or atom budget: determinism, DDP splits, loss normalisation."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mlip.cli.main import main
from mlip.data import keys
from mlip.training.batching import StructureBatchSampler
from mlip.training.metrics import weighted_loss

SIZES = np.random.default_rng(0).integers(3, 60, size=101)


def test_atom_budget_is_kept_and_every_structure_comes_once() -> None:
    sampler = StructureBatchSampler(SIZES, max_atoms=150, seed=4)
    batches = list(sampler)
    flat = sorted(i for b in batches for i in b)
    assert flat == list(range(len(SIZES)))
    assert all(SIZES[b].sum() <= 150 for b in batches)
    # greedy: the next structure would not have fitted into the batch before it
    order = [i for b in batches for i in b]
    for b, nxt in zip(batches[:-1], batches[1:], strict=True):
        assert SIZES[b].sum() + SIZES[nxt[0]] > 150
    assert order == StructureBatchSampler(SIZES, batch_size=1, seed=4)._order()
    again = StructureBatchSampler(SIZES, max_atoms=150, seed=4)
    assert list(again) == batches
    again.set_epoch(1)
    assert list(again) != batches
    big = StructureBatchSampler(np.array([10, 500, 10]), max_atoms=100, shuffle=False)
    assert list(big) == [[0], [1], [2]]  # larger than the budget: alone


def test_fixed_count_keeps_the_seed_epoch_permutation() -> None:
    sampler = StructureBatchSampler(SIZES, batch_size=7, seed=3)
    sampler.set_epoch(2)
    g = torch.Generator().manual_seed(3 * 100_003 + 2)
    perm = torch.randperm(len(SIZES), generator=g).tolist()
    assert list(sampler) == [perm[i:i + 7] for i in range(0, len(SIZES), 7)]


@pytest.mark.parametrize("budget", [None, 150])
def test_ddp_ranks_are_disjoint_and_run_the_same_number_of_steps(budget) -> None:
    world = 3
    ranks = [StructureBatchSampler(SIZES, batch_size=5, max_atoms=budget, seed=1, rank=r,
                                   world_size=world) for r in range(world)]
    for r in ranks:
        r.set_epoch(5)
    batches = [list(r) for r in ranks]
    assert len({len(b) for b in batches}) == 1 and len(batches[0]) == len(ranks[0])
    seen = [i for b in batches for batch in b for i in batch]
    assert len(seen) == len(set(seen))  # disjoint
    total = ranks[0].all_batches()
    assert len(total) - world < len(batches[0]) * world <= len(total)
    # evaluation: padded instead, so every structure is seen
    evals = [list(StructureBatchSampler(SIZES, batch_size=5, shuffle=False, rank=r,
                                        world_size=world)) for r in range(world)]
    assert len({len(b) for b in evals}) == 1
    assert {i for b in evals for batch in b for i in batch} == set(range(len(SIZES)))


def _fake(n_structures: int, rng: np.random.Generator) -> tuple[dict, dict]:
    natoms = torch.as_tensor(SIZES[:n_structures])
    n = int(natoms.sum())
    batch = torch.repeat_interleave(torch.arange(n_structures), natoms)
    ref = {keys.NUM_ATOMS: natoms, keys.BATCH: batch,
           keys.ENERGY: torch.as_tensor(rng.normal(size=n_structures)),
           keys.FORCES: torch.as_tensor(rng.normal(size=(n, 3))),
           keys.ENERGY_MASK: torch.ones(n_structures, dtype=torch.float64),
           keys.FORCES_MASK: torch.ones(n_structures, dtype=torch.float64)}
    pred = {keys.ENERGY: ref[keys.ENERGY] + torch.as_tensor(rng.normal(size=n_structures)),
            keys.FORCES: ref[keys.FORCES] + torch.as_tensor(rng.normal(size=(n, 3)))}
    return pred, ref


def _select(pred: dict, ref: dict, idx: list[int]) -> tuple[dict, dict]:
    natoms = ref[keys.NUM_ATOMS]
    starts = torch.cumsum(natoms, 0) - natoms
    atoms = torch.cat([torch.arange(int(starts[i]), int(starts[i] + natoms[i])) for i in idx])
    sub_ref = {keys.NUM_ATOMS: natoms[idx], keys.ENERGY: ref[keys.ENERGY][idx],
               keys.ENERGY_MASK: ref[keys.ENERGY_MASK][idx], keys.FORCES_MASK: ref[keys.FORCES_MASK][idx],
               keys.FORCES: ref[keys.FORCES][atoms],
               keys.BATCH: torch.repeat_interleave(torch.arange(len(idx)), natoms[idx])}
    return {keys.ENERGY: pred[keys.ENERGY][idx], keys.FORCES: pred[keys.FORCES][atoms]}, sub_ref


def test_budget_loss_does_not_depend_on_the_grouping() -> None:
    n = 40
    pred, ref = _fake(n, np.random.default_rng(2))
    totals = {}
    for budget in (120, 300):
        sampler = StructureBatchSampler(SIZES[:n], max_atoms=budget, seed=0)
        norm = sampler.loss_normalisers()
        batches = list(sampler)
        # the epoch's mean batch loss: what the optimiser follows over an epoch
        totals[budget] = sum(float(weighted_loss(*_select(pred, ref, b), 1.0, 1.0, 0.0,
                                                 normalisers=norm)["loss"]) for b in batches) \
            / len(batches)
    assert totals[120] == pytest.approx(totals[300], rel=1e-12)
    whole = weighted_loss(pred, ref, 1.0, 1.0, 0.0)["loss"]  # per-structure / per-atom means
    assert totals[120] == pytest.approx(float(whole), rel=1e-12)


def test_training_with_an_atom_budget(tiny_data, write_config, capsys) -> None:
    cfg = write_config(tiny_data, stage_two_start=None)
    assert main(["train", "--config", str(cfg), "data.max_atoms_per_batch=50", "data.test=[]"]) == 0
    capsys.readouterr()
    summary = json.loads((tiny_data / "runs" / "tiny" / "summary.json").read_text())
    assert summary["epochs"] == 2 and summary["last_metrics"]["train"]["structures"] == 14


def test_lightning_reaches_set_epoch() -> None:
    from lightning.fabric.utilities.data import _set_sampler_epoch

    sampler = StructureBatchSampler(SIZES, batch_size=5, seed=0)
    loader = torch.utils.data.DataLoader(list(range(len(SIZES))), batch_sampler=sampler)
    _set_sampler_epoch(loader, 7)
    assert sampler.epoch == 7
    # Lightning resuming creates the iterator first, then sets the epoch: it must count
    it = iter(sampler)
    sampler.set_epoch(3)
    expected = StructureBatchSampler(SIZES, batch_size=5, seed=0)
    expected.set_epoch(3)
    assert next(it) == next(iter(expected))
