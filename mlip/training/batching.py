"""Batches by structure count or by atom budget, deterministic and DDP-aware.

:class:`StructureBatchSampler` yields lists of dataset indices. The order depends only on
``(seed, epoch)`` (the same permutation as a single-process run), so a resumed run sees the
same batches as an uninterrupted one. With an atom budget (``data.max_atoms_per_batch``)
structures are packed greedily in that order until the next one would exceed the budget;
a structure larger than the budget forms a batch of its own.

Under DDP every rank builds the same list of batches and takes batches ``rank, rank + W,
...``: ranks see disjoint structures. In training the batches that do not fill a last round
over all ranks are left out (a different few each epoch), so every rank runs the same
number of steps; in evaluation they are repeated from the start instead (DistributedSampler's
padding), so no structure is left out.

With an atom budget the per-batch loss is normalised by constants of the epoch (mean
structures and atoms per batch, :meth:`StructureBatchSampler.loss_normalisers`) instead of
by the batch's own counts, so an epoch's summed gradient does not depend on how the
structures were grouped.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch


class StructureBatchSampler(torch.utils.data.Sampler[list[int]]):
    """Lists of indices into a dataset of ``len(sizes)`` structures.

    Args:
        sizes: (n,) atoms per structure, in dataset order.
        batch_size: structures per batch (used when ``max_atoms`` is None).
        max_atoms: atom budget per batch; None = fixed ``batch_size``.
        shuffle: a fresh ``(seed, epoch)`` permutation every epoch (training); else in order.
        seed: the run seed.
        rank: this process's rank among ``world_size`` (DDP).
        world_size: number of processes.
    """

    def __init__(self, sizes: np.ndarray, batch_size: int | None = None, max_atoms: int | None = None,
                 shuffle: bool = True, seed: int = 0, rank: int = 0, world_size: int = 1) -> None:
        if max_atoms is None and (batch_size is None or batch_size < 1):
            raise ValueError(f"batch_size must be a positive integer, got {batch_size}")
        if max_atoms is not None and max_atoms < 1:
            raise ValueError(f"data.max_atoms_per_batch must be positive, got {max_atoms}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in 0..{world_size - 1}")
        self.sizes = np.asarray(sizes, dtype=np.int64)
        self.batch_size, self.max_atoms = batch_size, max_atoms
        self.shuffle, self.seed = shuffle, seed
        self.rank, self.world_size = rank, world_size
        self.epoch = 0
        # Lightning calls set_epoch on ``dataloader.batch_sampler.sampler`` (not on the
        # batch sampler itself): this attribute forwards it here
        self.sampler = _EpochForwarder(self)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _order(self) -> list[int]:
        n = len(self.sizes)
        if not self.shuffle:
            return list(range(n))
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return torch.randperm(n, generator=g).tolist()

    def all_batches(self) -> list[list[int]]:
        """Every batch of this epoch, over all ranks, before the split between ranks."""
        order = self._order()
        if self.max_atoms is None:
            assert self.batch_size is not None
            return [order[i:i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        batches: list[list[int]] = []
        current: list[int] = []
        atoms = 0
        for i in order:
            n = int(self.sizes[i])
            if current and atoms + n > self.max_atoms:
                batches.append(current)
                current, atoms = [], 0
            current.append(i)
            atoms += n
        if current:
            batches.append(current)
        return batches

    def _rank_batches(self) -> list[list[int]]:
        batches = self.all_batches()
        w = self.world_size
        if w == 1:
            return batches
        if self.shuffle:  # training: drop the incomplete last round
            batches = batches[: (len(batches) // w) * w]
        else:  # evaluation: pad the last round with batches from the start
            rounds = math.ceil(len(batches) / w)
            batches = (batches * w)[: rounds * w] if batches else []
        return batches[self.rank::w]

    def __iter__(self) -> Iterator[list[int]]:
        # a generator: the batches are drawn at the first ``next``, so a ``set_epoch`` after
        # ``iter(loader)`` (Lightning's order when it resumes) still takes effect
        yield from self._rank_batches()

    def __len__(self) -> int:
        return len(self._rank_batches())

    def loss_normalisers(self) -> dict[str, float]:
        """Mean structures and atoms per batch over the epoch (all ranks):
        ``{"structures", "atoms"}``."""
        batches = max(len(self.all_batches()), 1)
        return {"structures": len(self.sizes) / batches,
                "atoms": float(self.sizes.sum()) / batches}


class _EpochForwarder:
    """What Lightning sees as the batch sampler's ``sampler``: forwards ``set_epoch``."""

    def __init__(self, owner: StructureBatchSampler) -> None:
        self._owner = owner

    def set_epoch(self, epoch: int) -> None:
        self._owner.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self._owner.sizes)
