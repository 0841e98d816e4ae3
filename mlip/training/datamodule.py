"""LightningDataModule: LMDB datasets, seeded splits, statistics of the training split.

Inputs may be any ASE-readable file or an mlip LMDB (opened by :mod:`mlip.data.open`:
structure files are converted once into the user cache folder, nothing is written beside
the user's file).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from mlip.training.lightning_import import L  # isort: split

import numpy as np
import torch
from torch.utils.data import ConcatDataset, DataLoader, Subset

from mlip.data.lmdb import LmdbDataset, split_indices
from mlip.data.open import (
    ensure_lmdb,
    key_mapping,
    load_statistics,
    merged_shard_statistics,
    open_datasets,
    store_statistics,
)
from mlip.data.shards import open_dataset
from mlip.data.stats import DatasetStatistics, compute_statistics, e0s_from_file
from mlip.graph.build import GraphDataset, collate
from mlip.graph.stats import closest_pairs, count_edges
from mlip.ranks import local_rank
from mlip.training.batching import StructureBatchSampler


class PotentialDataModule(L.LightningDataModule):
    """Train/val/test loaders of graph batches plus training-split statistics.

    Args:
        config: the resolved run config; uses ``config['data']`` and ``config['seed']``.
    """

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        self.config = config
        self.cfg = config["data"]
        self.dtype = getattr(torch, config["model"]["dtype"])
        self.train_set: torch.utils.data.Dataset | None = None
        self.val_set: torch.utils.data.Dataset | None = None
        self.statistics: DatasetStatistics | None = None
        self.has_stress = False
        self.extra_count = 0
        self.train_weights: np.ndarray | None = None

    def prepare(self) -> None:
        """Open (converting if needed) the data, split it and compute statistics."""
        cfg = self.cfg
        if not cfg["train"]:
            raise ValueError("data.train is not set: give the training file(s)")
        train_sets = open_datasets(cfg["train"], key_mapping(cfg))
        full = ConcatDataset(train_sets) if len(train_sets) > 1 else train_sets[0]
        if cfg["val"]:
            train_idx = np.arange(len(full))
            val = open_datasets(cfg["val"], key_mapping(cfg))
            self.val_set = ConcatDataset(val) if len(val) > 1 else val[0]
        else:
            size = cfg["val_size"]
            train_idx, val_idx = split_indices(
                len(full),
                val_fraction=None if size is not None else cfg["val_fraction"],
                val_size=size,
                seed=self.config["seed"] if cfg["split_seed"] is None else cfg["split_seed"],
            )
            self.val_set = Subset(full, val_idx.tolist())
        if cfg["max_train"] is not None:
            train_idx = train_idx[: int(cfg["max_train"])]
        self.train_set = Subset(full, train_idx.tolist())
        self.statistics = self._statistics(train_sets, train_idx)
        self._check_elements(train_sets, val_idx=None if cfg["val"] else val_idx)
        self.has_stress = any(ds.header.get("labels", {}).get("stress", 0) for ds in train_sets)
        self._add_extra(train_sets, train_idx)

    def _add_extra(self, train_sets: list[LmdbDataset], train_idx: np.ndarray) -> None:
        """``data.extra``: frames appended to the training split only (after the statistics,
        so they move neither E0s, scale, neighbour counts nor the ZBL core's reference
        distances), each file's frames with its loss weights in stage one and stage two."""
        self._own = (train_sets, train_idx)
        self._extras: list[tuple[LmdbDataset, float, float, float, int | None]] = []
        self.train_heads: np.ndarray | None = None
        self.extra_count = 0
        self.train_weights = None
        entries = self.cfg.get("extra") or []
        if not entries:
            return
        assert self.statistics is not None
        extras = open_datasets([e["file"] for e in entries], key_mapping(self.cfg))
        for entry, ds in zip(entries, extras, strict=True):
            self.add_frames(ds, entry["weight"], entry["stage_two_weight"], entry["file"],
                            known=set(self.statistics.e0s), what="data.extra",
                            forces_weight=entry["forces_weight"])

    def add_frames(self, dataset: LmdbDataset, weight: float, stage_two_weight: float,
                   name: str, known: set[int], what: str, head: int | None = None,
                   forces_weight: float = 1.0) -> None:
        """Append ``dataset``'s frames to the training split with these loss weights (extra
        or replayed frames: never in validation or the statistics), ``forces_weight`` a
        further factor on their force terms; with ``head``, on that readout head of a
        multi-head model (the data's frames on head 0).

        Raises:
            ValueError: elements outside ``known``, naming the file (``name``) and ``what``.
        """
        from ase.data import chemical_symbols

        unknown = set(int(z) for z in dataset.header["elements"]) - known
        if unknown:
            names = sorted(chemical_symbols[z] for z in unknown)
            raise ValueError(f"{name} ({what}): element(s) {names} are not in "
                             "the training data; the model cannot learn them from extra frames")
        self._extras.append((dataset, weight, stage_two_weight, forces_weight, head))
        train_sets, train_idx = self._own
        base = ConcatDataset(list(train_sets) + [ds for ds, *_ in self._extras])
        first = sum(len(ds) for ds in train_sets)
        extra_idx = np.arange(first, len(base))
        self.train_set = Subset(base, np.concatenate([train_idx, extra_idx]).tolist())
        self.train_weights = np.concatenate(
            [np.ones((len(train_idx), 3))]
            + [np.tile([w, w2, fw], (len(ds), 1)) for ds, w, w2, fw, _ in self._extras])
        if any(h is not None for *_, h in self._extras):
            self.train_heads = np.concatenate(
                [np.zeros(len(train_idx), dtype=np.int64)]
                + [np.full(len(ds), h or 0, dtype=np.int64) for ds, *_, h in self._extras])
        self.extra_count = len(extra_idx)

    def _check_elements(self, train_sets: list[LmdbDataset], val_idx: np.ndarray | None) -> None:
        """Validation and test data may hold only elements the model is built for (those of
        the training statistics): else one line naming the element and the file (and frame),
        instead of an index error in the first validation step."""
        from ase.data import chemical_symbols

        assert self.statistics is not None
        known = set(self.statistics.e0s)

        def fail(where: str, zs) -> None:
            names = sorted({chemical_symbols[int(z)] for z in zs})
            trained = [chemical_symbols[z] for z in sorted(known)]
            raise ValueError(f"{where}: element(s) {names} are not in the training data "
                             f"(elements {trained}); the model cannot predict them")

        mapping = key_mapping(self.cfg)
        for path in list(self.cfg["val"] or []) + list(self.cfg["test"] or []):
            if Path(path).exists():
                extra = set(open_dataset(ensure_lmdb(path, mapping)).header["elements"]) - known
                if extra:
                    fail(str(path), extra)
        if val_idx is not None:
            present = set().union(*(set(ds.header["elements"]) for ds in train_sets))
            if present - known:  # some element only in validation frames: find the first
                assert isinstance(self.val_set, Subset)
                for i in range(len(self.val_set)):
                    s = self.val_set[i]
                    extra = set(s.numbers.tolist()) - known
                    if extra:
                        fail(f"{s.where()} (validation split)", extra)

    def _statistics(self, train_sets: list[LmdbDataset], train_idx: np.ndarray) -> DatasetStatistics:
        cfg = self.cfg
        e0_spec = cfg["e0s"]
        # foundation / refit (fine-tuning): the model file's E0s, set by mlip.training.finetune
        e0s = None if e0_spec in (None, "least_squares", "foundation", "refit") else e0s_from_file(e0_spec)
        tag = hashlib.sha1(
            np.asarray(train_idx, dtype=np.int64).tobytes()
            + json.dumps([e0_spec, e0s and sorted(e0s.items())]).encode()
        ).hexdigest()[:12]
        name = f"statistics/v3/train-{tag}/cutoff={cfg['cutoff']:g}"
        single = len(train_sets) == 1
        if single:
            cached = load_statistics(train_sets[0], name)
            if cached:
                return DatasetStatistics.from_dict(cached)
        stats = merged_shard_statistics(train_sets, train_idx, e0s, cfg["cutoff"])
        if stats is not None:
            return stats
        stats = compute_statistics(
            (self.train_set[i] for i in range(len(self.train_set))),
            e0s=e0s,
            cutoff=cfg["cutoff"],
            neighbor_counter=count_edges,
            pair_distances=closest_pairs,
        )
        if single and local_rank() == 0:
            store_statistics(train_sets[0], name, stats.to_dict())
        return stats

    def data_info(self) -> dict[str, Any]:
        """Constants the model is built from (all JSON-safe)."""
        s = self.statistics
        assert s is not None, "call prepare() first"
        zs = sorted(s.e0s)
        return {
            "atomic_numbers": zs,
            "e0s": [s.e0s[z] for z in zs],
            "scale": s.force_rms or s.energy_per_atom_rms or 1.0,
            "shift": [(s.energy_per_atom_by_element or {}).get(z, s.energy_per_atom_mean or 0.0)
                      for z in zs],
            "cutoff": float(self.cfg["cutoff"]),
            "avg_num_neighbors": s.avg_num_neighbors or 1.0,
            "has_stress": self.has_stress,
            "closest_pairs": s.closest_pairs or {},
            "statistics": s.to_dict(),
            "batch_normalisers": self.train_sampler(0, 1).loss_normalisers()
            if self.cfg.get("max_atoms_per_batch") else None,
        }

    def _sizes(self, subset: Subset) -> np.ndarray:
        """Atoms per structure of a split (from the datasets' size records)."""
        base = subset.dataset
        parts = base.datasets if isinstance(base, ConcatDataset) else [base]
        sizes = np.concatenate([ds.sizes() for ds in parts])
        return sizes[np.asarray(subset.indices, dtype=np.int64)]

    def _ranks(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        return (int(trainer.global_rank), int(trainer.world_size)) if trainer else (0, 1)

    def train_sampler(self, rank: int, world_size: int) -> StructureBatchSampler:
        """Training batches: ``data.batch_size`` structures, or ``data.max_atoms_per_batch``
        atoms, in a (seed, epoch) order, this rank's share."""
        assert isinstance(self.train_set, Subset)
        budget = self.cfg.get("max_atoms_per_batch")
        return StructureBatchSampler(
            self._sizes(self.train_set), batch_size=self.cfg["batch_size"],
            max_atoms=None if budget is None else int(budget), shuffle=True,
            seed=self.config["seed"], rank=rank, world_size=world_size)

    def _loader(self, dataset, sampler: StructureBatchSampler,
                weights: np.ndarray | None = None, heads: np.ndarray | None = None) -> DataLoader:
        workers = int(self.cfg["num_workers"])
        return DataLoader(
            GraphDataset(dataset, self.cfg["cutoff"], dtype=self.dtype, weights=weights, heads=heads),
            batch_sampler=sampler,
            collate_fn=collate,
            num_workers=workers,
            persistent_workers=workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, self.train_sampler(*self._ranks()), self.train_weights,
                            self.train_heads)

    def val_dataloader(self) -> DataLoader:
        return self._val_loader(*self._ranks())

    def _val_loader(self, rank: int, world: int) -> DataLoader:
        sizes = np.zeros(len(self.val_set), dtype=np.int64)  # (counts only; batches by size)
        sampler = StructureBatchSampler(sizes, batch_size=self.cfg["val_batch_size"],
                                        shuffle=False, rank=rank, world_size=world)
        return self._loader(self.val_set, sampler)

    def whole_split_loaders(self) -> tuple[DataLoader, DataLoader]:
        """Every structure of the training and the validation split in this one process, in
        order (not this rank's share): for fits made after training, once, on rank 0."""
        assert isinstance(self.train_set, Subset)
        train = StructureBatchSampler(self._sizes(self.train_set), batch_size=self.cfg["val_batch_size"],
                                      shuffle=False, rank=0, world_size=1)
        return (self._loader(self.train_set, train, self.train_weights, self.train_heads),
                self._val_loader(0, 1))
