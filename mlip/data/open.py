"""Open any input as an mlip dataset, through the user cache folder.

A structure file (anything ASE reads, or a folder of fairchem .aselmdb files) is converted
once into an LMDB under ``mlip.cache.cache_dir("data")`` and reused while the file is
unchanged; nothing is written beside the user's file. An mlip LMDB or shard folder is used
as it is. Statistics of a training split are cached inside mlip's own conversions, and for
datasets the user gave in ``cache_dir("statistics")``: mlip never writes into those.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from mlip.cache import cache_dir
from mlip.data.convert import convert
from mlip.data.lmdb import LmdbDataset
from mlip.data.lmdb_writer import write_metadata
from mlip.data.shards import ShardedDataset, dataset_stat_path, is_sharded, open_dataset
from mlip.data.stats import DatasetStatistics, StatisticsAccumulator
from mlip.ranks import local_rank

CACHE_DIR_NAME = ".mlip_cache"  # where older versions put conversions: beside the data file
LABEL_KEYS = ("energy_key", "forces_key", "stress_key")


def key_mapping(data_config: Mapping[str, Any]) -> dict[str, Any]:
    """The label keys of a data config section, as :func:`ensure_lmdb` takes them.

    ``allow_missing_labels`` is included only when set, so cache names of conversions
    without it stay as they were.

    >>> key_mapping({"energy_key": "REF_energy", "forces_key": None, "stress_key": None})
    {'energy_key': 'REF_energy', 'forces_key': None, 'stress_key': None}
    """
    mapping: dict[str, Any] = {k: data_config.get(k) for k in LABEL_KEYS}
    if data_config.get("allow_missing_labels"):
        mapping["allow_missing_labels"] = True
    return mapping


def cache_path_for(path: Path, key_mapping: dict[str, str | None]) -> Path:
    """Where the LMDB cache of ``path`` lives: the user cache folder (``$MLIP_CACHE_DIR``
    moves it), in a subfolder per data folder; the name changes when the file changes."""
    st = path.stat()
    tag = json.dumps([path.name, st.st_size, st.st_mtime_ns, key_mapping], sort_keys=True)
    digest = hashlib.sha1(tag.encode()).hexdigest()[:12]
    folder = cache_dir("data") / hashlib.sha1(str(path.parent.resolve()).encode()).hexdigest()[:12]
    return folder / f"{path.stem}-{digest}.lmdb"


def ensure_lmdb(path: str | Path, key_mapping: dict[str, str | None] | None = None) -> Path:
    """Return an mlip dataset for ``path``: itself if it is one (an LMDB file or a shard
    folder), else its (possibly new) cache (a structure file, or a folder of .aselmdb files).

    Under a multi-process launch, local rank 0 converts and the other processes of the
    node wait for the finished file.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        TimeoutError: another process was to write the cache and did not within 10 min.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"data file {path} does not exist")
    if path.suffix == ".lmdb" or is_sharded(path):
        return path
    key_mapping = key_mapping or {}
    out = cache_path_for(path, key_mapping)
    if out.exists():
        return out
    if local_rank() != 0:  # another process of this node converts; wait for the rename
        for _ in range(6000):
            if out.exists():
                return out
            time.sleep(0.1)
        raise TimeoutError(f"waited 10 min for {out} to be written by local rank 0")
    out.parent.mkdir(parents=True, exist_ok=True)
    convert(
        [path],
        out,
        energy_key=key_mapping.get("energy_key"),
        forces_key=key_mapping.get("forces_key"),
        stress_key=key_mapping.get("stress_key"),
        progress=False,
        allow_missing_labels=bool(key_mapping.get("allow_missing_labels")),
    )
    return out


def open_datasets(paths: list[str], key_mapping: dict[str, Any]) -> list[LmdbDataset | ShardedDataset]:
    """Each of ``paths`` opened (converted first where needed, :func:`ensure_lmdb`)."""
    return [open_dataset(ensure_lmdb(p, key_mapping)) for p in paths]


def is_conversion_cache(path: str | Path) -> bool:
    """Whether ``path`` is an LMDB that mlip converted itself (a cache it may write to),
    as opposed to a dataset the user gave: training never writes into those."""
    path = Path(path).resolve()
    return path.parent.name == CACHE_DIR_NAME or cache_dir("data").resolve() in path.parents


def _statistics_file(dataset: LmdbDataset | ShardedDataset, name: str) -> Path:
    """Where statistics of a user's LMDB are cached: the user cache folder, keyed by the
    file's real path, size and modification time."""
    path = dataset_stat_path(dataset.path).resolve()
    st = path.stat()
    tag = json.dumps([str(path), st.st_size, st.st_mtime_ns, name])
    return cache_dir("statistics") / f"{hashlib.sha1(tag.encode()).hexdigest()[:16]}.json"


def load_statistics(dataset: LmdbDataset | ShardedDataset, name: str) -> dict[str, Any] | None:
    """Statistics cached under ``name`` for ``dataset`` (:func:`store_statistics`, or
    metadata stored by ``mlip data convert --cutoff``), or None."""
    if is_conversion_cache(dataset.path):
        return dataset.metadata(name)
    found = _statistics_file(dataset, name)
    if not found.is_file():
        return dataset.metadata(name)
    try:
        return json.loads(found.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def store_statistics(dataset: LmdbDataset | ShardedDataset, name: str, blob: dict[str, Any]) -> None:
    """Cache training-split statistics: inside mlip's own conversion caches, else in the
    user cache folder; never inside a dataset the user gave. Read-only locations are
    skipped (the statistics are recomputed next time)."""
    try:
        if is_conversion_cache(dataset.path):
            write_metadata(dataset.path, name, blob)
            return
        target = _statistics_file(dataset, name)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(blob))
        os.replace(tmp, target)
    except OSError:
        pass


def merged_shard_statistics(
    train_sets: list[LmdbDataset | ShardedDataset],
    train_idx: np.ndarray,
    e0s: dict[int, float] | None,
    cutoff: float,
) -> DatasetStatistics | None:
    """Training statistics from the per-shard sums in the manifests, without reading a
    record, when the training split is every structure of sharded data sets converted with
    the same cutoff [Å] and E0s (neighbors and closest pairs counted); else None."""
    total = sum(len(ds) for ds in train_sets)
    if len(train_idx) != total or not all(isinstance(ds, ShardedDataset) for ds in train_sets):
        return None
    merged = None
    for ds in train_sets:
        for state in ds.statistics_states() or [None]:
            if state is None or state["cutoff"] != cutoff or not (state["counted"] and state["pairs"]):
                return None
            given = None if state["e0s"] is None else {int(z): e for z, e in state["e0s"].items()}
            if given != e0s:
                return None
            part = StatisticsAccumulator.from_state(state)
            merged = part if merged is None else merged.merge(part)
    return None if merged is None else merged.finalize()
