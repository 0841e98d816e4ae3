"""Sharded datasets: a folder of mlip LMDB shards plus a ``manifest.json``.

Layout (written by ``mlip data convert ... --shard-size K``)::

    DATA/manifest.json
    DATA/shard-00000.lmdb  DATA/shard-00001.lmdb  ...

The manifest (JSON with a ``__crc32__``) holds ``format`` (``"mlip-shards"``),
``schema_version``, the total ``count``, a ``header`` shaped like an LMDB header (the merged
summary of all shards: elements, label counts and statistics), ``metadata`` (e.g. dataset
statistics under :func:`mlip.data.stats.statistics_key`) and, per shard, its ``file``,
``count``, ``elements``, ``atoms`` and, when statistics were computed, the mergeable
``statistics_state`` of :class:`~mlip.data.stats.StatisticsAccumulator`. Statistics of any
union of shards follow from merging their states, without reading a record.

:func:`open_dataset` opens either kind; both give the same ``Dataset`` interface (``len``,
indexing, ``header``, ``metadata``, ``sizes``).
"""

from __future__ import annotations

import bisect
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch.utils.data

from mlip.data.lmdb import LmdbDataset, LmdbFormatError, dump_checked, load_checked
from mlip.data.structure import Structure

MANIFEST = "manifest.json"
FORMAT_NAME = "mlip-shards"
SCHEMA_VERSION = 1


def shard_name(index: int) -> str:
    """File name of shard ``index``.

    >>> shard_name(3)
    'shard-00003.lmdb'
    """
    return f"shard-{index:05d}.lmdb"


def is_sharded(path: str | Path) -> bool:
    """Whether ``path`` is a folder with a shard manifest."""
    return os.path.isfile(os.path.join(path, MANIFEST))


def write_manifest(folder: str | Path, manifest: dict[str, Any]) -> None:
    """Write ``manifest.json`` (with checksum) into ``folder``, atomically."""
    target = Path(folder) / MANIFEST
    tmp = target.with_name(f"{MANIFEST}.tmp-{os.getpid()}")
    tmp.write_bytes(dump_checked(manifest))
    os.replace(tmp, target)


def read_manifest(folder: str | Path) -> dict[str, Any]:
    """The checked manifest of a shard folder.

    Raises:
        FileNotFoundError: no manifest.
        LmdbFormatError: damaged, not a shard manifest, or a newer schema.
    """
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{folder}: no {MANIFEST}; is this a sharded mlip dataset?")
    manifest = load_checked(path.read_bytes(), f"{path}")
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise LmdbFormatError(f"{path} is not an mlip shard manifest")
    version = manifest.get("schema_version")
    if not isinstance(version, int) or version > SCHEMA_VERSION:
        raise LmdbFormatError(
            f"{path} has schema version {version}, newer than this mlip reads ({SCHEMA_VERSION})"
        )
    counts = [int(s["count"]) for s in manifest["shards"]]
    if sum(counts) != manifest["count"]:
        raise LmdbFormatError(f"{path}: shard counts add up to {sum(counts)}, not {manifest['count']}")
    return manifest


class ShardedDataset(torch.utils.data.Dataset):
    """Read-only random access over the shards of a folder, in manifest order.

    Shards are opened lazily, in the process that reads (fork-safe like
    :class:`~mlip.data.lmdb.LmdbDataset`); a shard whose record count differs from the
    manifest is an error naming the shard.

    Args:
        path: the folder written by ``mlip data convert --shard-size``.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self.manifest = read_manifest(path)
        self._shards = [LmdbDataset(os.path.join(self.path, s["file"]))
                        for s in self.manifest["shards"]]
        self._ends = np.cumsum([int(s["count"]) for s in self.manifest["shards"]]).tolist()
        self._checked: set[int] = set()
        self._sizes: np.ndarray | None = None

    @property
    def header(self) -> dict[str, Any]:
        """The merged header of all shards (see :meth:`mlip.data.lmdb_writer.LmdbWriter.header`)."""
        return self.manifest["header"]

    @property
    def shards(self) -> list[LmdbDataset]:
        return list(self._shards)

    def __len__(self) -> int:
        return int(self.manifest["count"])

    def _shard(self, k: int) -> LmdbDataset:
        shard = self._shards[k]
        if k not in self._checked:
            expected = int(self.manifest["shards"][k]["count"])
            if len(shard) != expected:
                raise LmdbFormatError(
                    f"{shard.path} holds {len(shard)} structures, the manifest says {expected}; "
                    "the folder is inconsistent (convert it again)"
                )
            self._checked.add(k)
        return shard

    def locate(self, index: int) -> tuple[int, int]:
        """(shard, index inside it) of global ``index``."""
        n = len(self)
        i = int(index) + (n if int(index) < 0 else 0)
        if not 0 <= i < n:
            raise IndexError(f"index {index} out of range for {self.path} with {n} structures")
        k = bisect.bisect_right(self._ends, i)
        return k, i - (self._ends[k - 1] if k else 0)

    def __getitem__(self, index: int) -> Structure:
        k, j = self.locate(index)
        return self._shard(k)[j]

    def __iter__(self) -> Iterator[Structure]:
        for k in range(len(self._shards)):
            yield from self._shard(k)

    def sizes(self) -> np.ndarray:
        """Atoms per structure, (count,) int64, in index order."""
        if self._sizes is None:
            parts = [self._shard(k).sizes() for k in range(len(self._shards))]
            self._sizes = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
        return self._sizes

    def metadata(self, name: str) -> dict[str, Any] | None:
        return self.manifest.get("metadata", {}).get(name)

    def metadata_names(self) -> list[str]:
        return sorted(self.manifest.get("metadata", {}))

    def statistics_states(self) -> list[dict[str, Any]] | None:
        """Per-shard mergeable statistics sums, or None if a shard has none."""
        states = [s.get("statistics_state") for s in self.manifest["shards"]]
        return None if any(s is None for s in states) else states

    def close(self) -> None:
        for shard in self._shards:
            shard.close()


def open_dataset(path: str | Path) -> LmdbDataset | ShardedDataset:
    """An mlip dataset: a shard folder (with ``manifest.json``) or one LMDB file."""
    if os.path.isdir(path):
        if not is_sharded(path):
            raise FileNotFoundError(
                f"{path}: a folder without {MANIFEST}; give an mlip LMDB file or a folder "
                "written by `mlip data convert --shard-size`"
            )
        return ShardedDataset(path)
    return LmdbDataset(path)


def dataset_stat_path(path: str | Path) -> Path:
    """The file whose size and modification time identify a dataset's contents."""
    return Path(path) / MANIFEST if is_sharded(path) else Path(path)
