"""Replay for fine-tuning (``data.replay``): frames of the pretraining data mixed into every
epoch, so the model keeps what it knew while it learns the new data.

The frames are chosen once, before training, from the replay file(s) (any input ``mlip``
reads: extxyz, LMDB, shards): a fixed ``count`` or a ``fraction``, at random or by
farthest-point sampling of the starting model's descriptors (each structure's mean
invariant node features, standardised). With ``pseudolabels`` their energies and forces
are the starting model's own predictions, so the original labels are not needed. They are
written to ``<run>/replay.lmdb`` (atomically) and join the training split with their own
loss weight, like ``data.extra`` frames (never in validation or the statistics).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

from mlip.data import keys
from mlip.model.potential import Potential

SELECTIONS = ("random", "fps")


def farthest_points(x: np.ndarray, count: int, first: int = 0) -> np.ndarray:
    """Greedy farthest-point order: start at ``first``, then repeatedly the point farthest
    (Euclidean) from all chosen so far.

    Args:
        x: (M, F) descriptors.
        count: how many to choose (<= M).

    Returns:
        (count,) distinct indices, in the order chosen.

    >>> farthest_points(np.array([[0.0], [1.0], [10.0], [4.0]]), 3).tolist()
    [0, 2, 3]
    """
    chosen = [int(first)]
    dist = np.linalg.norm(x - x[first], axis=1)
    for _ in range(1, count):
        nxt = int(np.argmax(dist))
        chosen.append(nxt)
        dist = np.minimum(dist, np.linalg.norm(x - x[nxt], axis=1))
    return np.array(chosen, dtype=np.int64)


@torch.no_grad()
def descriptors_and_predictions(potential: Potential, dataset: Any, batch_size: int,
                                pseudolabels: bool, head: int | None = None,
                                ) -> tuple[np.ndarray, list[tuple[float, np.ndarray]]]:
    """Each structure's mean invariant node features (M, F) and, with ``pseudolabels``, the
    model's (energy [eV], forces (n, 3) [eV/Å]), on readout ``head`` of a multi-head model."""
    from mlip.graph.build import GraphDataset, as_batch_dict, collate
    from mlip.ops.scatter import scatter_sum

    if potential.backbone.outputs.node_features is None:
        raise ValueError(f"{type(potential.backbone).__name__} returns no node features: "
                         "data.replay.select=fps needs them; use select: random")
    param = next(potential.parameters())
    loader = DataLoader(GraphDataset(dataset, potential.cutoff, dtype=param.dtype),
                        batch_size=batch_size, collate_fn=collate, generator=torch.Generator())
    feats, labels = [], []
    training = potential.training
    potential.eval()
    for batch in loader:
        data = {k: v.to(param.device) for k, v in as_batch_dict(batch).items()}
        if head is not None:
            data[keys.HEAD] = torch.full_like(data[keys.NUM_ATOMS], head)
        with torch.enable_grad():
            out = potential(data, compute_forces=pseudolabels)
        n = data[keys.NUM_ATOMS]
        sums = scatter_sum(out[keys.NODE_FEATURES].double(), data[keys.BATCH], len(n))
        feats.append((sums / n[:, None].double()).cpu().numpy())
        if pseudolabels:
            forces = out[keys.FORCES].detach().double().cpu().numpy()
            offsets = np.concatenate([[0], np.cumsum(n.cpu().numpy())])
            labels += [(float(e), forces[offsets[i]:offsets[i + 1]])
                       for i, e in enumerate(out[keys.ENERGY].detach().cpu().tolist())]
    potential.train(training)
    return np.concatenate(feats), labels


def choose(count: int, total: int, select: str, seed: int,
           descriptors: np.ndarray | None = None) -> np.ndarray:
    """``count`` distinct indices of ``total``: at random (seeded), or by farthest-point
    sampling of standardised ``descriptors`` from a seeded random start; sorted."""
    rng = np.random.default_rng(seed)
    if select == "random":
        return np.sort(rng.choice(total, size=count, replace=False))
    assert descriptors is not None
    x = descriptors - descriptors.mean(axis=0)
    x = x / np.where(x.std(axis=0) > 0, x.std(axis=0), 1.0)
    return np.sort(farthest_points(x, count, first=int(rng.integers(total))))


def replay_count(settings: dict[str, Any], total: int) -> int:
    """Frames to replay: ``count`` (at most all) or ``fraction`` of ``total`` (at least 1)."""
    if settings.get("count") is not None:
        return min(int(settings["count"]), total)
    return max(1, round(float(settings["fraction"]) * total))


def build_replay(settings: dict[str, Any], potential: Potential, key_mapping: dict[str, Any],
                 out: Path, seed: int, batch_size: int,
                 e0_shift: dict[int, float] | None = None, head: int | None = None) -> dict[str, Any]:
    """Choose the replay frames and write them to ``out`` (an LMDB, atomically).

    Args:
        settings: the resolved ``data.replay`` section.
        potential: the starting model (descriptors, pseudolabels, the elements it knows).
        e0_shift: Z -> change of the model's E0 from the file's (``data.e0s: refit``), added
            to the original energy labels so they sit on the run's energy reference
            (pseudolabels already do).
        head: the readout head the frames train (a multi-head model): pseudolabels are its
            predictions, and the original labels keep their own energy reference.

    Returns:
        {'file': str(out), 'frames': chosen count, 'of': frames in the replay files,
        'indices': chosen indices (over the files in order)}.

    Raises:
        ValueError: a replay file with elements the model cannot represent, or without
            the labels training needs when ``pseudolabels`` is off (one line naming it).
    """
    from ase.data import chemical_symbols
    from torch.utils.data import ConcatDataset

    from mlip.data.lmdb_writer import LmdbWriter
    from mlip.data.open import open_datasets

    files = settings["file"]
    sets = open_datasets(files, key_mapping)
    known = set(potential.atomic_numbers)
    for path, ds in zip(files, sets, strict=True):
        unknown = sorted(set(int(z) for z in ds.header["elements"]) - known)
        if unknown:
            raise ValueError(f"{path} (data.replay): element(s) "
                             f"{[chemical_symbols[z] for z in unknown]} are not in the model "
                             f"(it knows {[chemical_symbols[z] for z in potential.atomic_numbers]})")
        labels = ds.header.get("labels", {})
        if not settings["pseudolabels"] and not (labels.get("energy") or labels.get("forces")):
            raise ValueError(f"{path} (data.replay): no energy or force labels; set "
                             "data.replay.pseudolabels: true to label it with the starting model")
    full = ConcatDataset(sets)
    count = replay_count(settings, len(full))
    descriptors = None
    if settings["select"] == "fps":
        descriptors, _ = descriptors_and_predictions(potential, full, batch_size, False)
    chosen = choose(count, len(full), settings["select"], seed, descriptors)
    subset = Subset(full, chosen.tolist())
    predicted: list[tuple[float, np.ndarray]] = []
    if settings["pseudolabels"]:
        _, predicted = descriptors_and_predictions(potential, subset, batch_size, True, head)
    with LmdbWriter(out, overwrite=True, sources=[str(f) for f in files]) as writer:
        for k in range(len(subset)):
            s = subset[k]
            if predicted:
                energy, forces = predicted[k]
                s = dataclasses.replace(s, energy=energy, forces=forces, stress=None)
            elif e0_shift and s.energy is not None:
                s = dataclasses.replace(s, energy=s.energy + sum(e0_shift.get(int(z), 0.0)
                                                                 for z in s.numbers))
            writer.add(s)
    return {"file": str(out), "frames": int(count), "of": len(full), "indices": chosen.tolist()}
