"""Writing mlip LMDB files (the format: :mod:`mlip.data.lmdb`): new files, atomically, and
metadata blobs into existing ones.

The writer fills ``OUT.partial-<pid>`` and renames it to ``OUT`` only after the last record
and the header are on disk, so a crash or an invalid frame never leaves a half-written
``OUT`` behind; the next writer of ``OUT`` deletes partial files of processes that died.
"""

from __future__ import annotations

import json
import os
import struct
import time
import zlib
from array import array
from pathlib import Path
from types import TracebackType
from typing import Any

import lmdb
import numpy as np

from mlip import __version__
from mlip.cache import process_alive
from mlip.data.codec import encode_structure
from mlip.data.lmdb import (
    FORMAT_NAME,
    HEADER_KEY,
    SCHEMA_VERSION,
    SIZES_KEY,
    UNITS,
    LmdbDataset,
    close_reader,
    dump_checked,
    index_key,
    meta_key,
)
from mlip.data.stats import DatasetSummary
from mlip.data.structure import Structure

INITIAL_MAP_SIZE = 64 * 2**20


def _put_all(env: lmdb.Environment, items: list[tuple[bytes, bytes]]) -> None:
    """Write ``items`` in one transaction, doubling the map size while it is full."""
    while True:
        try:
            with env.begin(write=True) as txn:
                for key, value in items:
                    txn.put(key, value)
            return
        except lmdb.MapFullError:
            env.set_mapsize(env.info()["map_size"] * 2)


def _remove(path: str) -> None:
    for p in (path, path + "-lock"):
        try:
            os.remove(p)
        except FileNotFoundError:
            pass


class LmdbWriter:
    """Write structures into a new LMDB file, atomically.

    Use as a context manager; on normal exit the header is written and the file moved
    into place, on an exception everything is removed::

        with LmdbWriter("train.lmdb") as writer:
            for s in structures:
                writer.add(s)

    Args:
        path: output file (conventionally ``*.lmdb``).
        overwrite: replace an existing ``path`` (only once the new file is complete).
        key_mapping: label keys used when reading, recorded in the header
            (``{"energy": "REF_energy", "forces": None, ...}``; None = ASE calculator results).
        sources: input files recorded in the header; default: the structures' ``source``.
        map_size: initial LMDB map size [bytes]; doubled whenever it fills up.
        commit_every: records buffered per write transaction.
    """

    def __init__(
        self,
        path: str | Path,
        overwrite: bool = False,
        key_mapping: dict[str, str | None] | None = None,
        sources: list[str] | None = None,
        map_size: int = INITIAL_MAP_SIZE,
        commit_every: int = 1000,
    ) -> None:
        self.path = str(path)
        self.overwrite = overwrite
        self.key_mapping = dict(key_mapping or {"energy": None, "forces": None, "stress": None})
        self.sources = sources
        self.map_size = int(map_size)
        self.commit_every = commit_every
        self.partial_path = f"{self.path}.partial-{os.getpid()}"
        self.summary = DatasetSummary()
        self._env: lmdb.Environment | None = None
        self._pending: list[tuple[bytes, bytes]] = []
        self._metadata: dict[str, dict[str, Any]] = {}
        self._sizes = array("i")

    def __enter__(self) -> LmdbWriter:
        if os.path.exists(self.path) and not self.overwrite:
            raise FileExistsError(f"{self.path} exists; choose another name or overwrite it")
        parent = os.path.dirname(self.path) or "."
        if not os.path.isdir(parent):
            raise FileNotFoundError(f"output directory {parent} does not exist")
        _remove(self.partial_path)
        _remove_stale_partials(self.path)
        self._env = lmdb.open(
            self.partial_path,
            map_size=self.map_size,
            subdir=False,
            lock=False,  # the partial file is private to this process
            sync=False,  # one explicit sync before the rename
            metasync=False,
            readahead=False,
        )
        return self

    def add(self, structure: Structure) -> int:
        """Append one (already validated) structure.

        Returns:
            Its index in the file.
        """
        if self._env is None:
            raise RuntimeError("LmdbWriter.add() outside the `with` block")
        index = self.add_encoded(encode_structure(structure), structure.num_atoms)
        self.summary.add(structure)
        return index

    def add_encoded(self, record: bytes, num_atoms: int) -> int:
        """Append one record that is already encoded (copied from another mlip LMDB).
        The caller accounts for it in :attr:`summary` (e.g. ``summary.merge``).

        Returns:
            Its index in the file.
        """
        if self._env is None:
            raise RuntimeError("LmdbWriter.add_encoded() outside the `with` block")
        index = len(self._sizes)
        self._pending.append((index_key(index), bytes(record)))
        self._sizes.append(int(num_atoms))
        if len(self._pending) >= self.commit_every:
            self._flush(self._env)
        return index

    def set_metadata(self, name: str, blob: dict[str, Any]) -> None:
        """Store a JSON blob under ``name`` together with the records."""
        json.dumps(blob)  # fail now, not at commit
        meta_key(name)
        self._metadata[name] = blob

    def __len__(self) -> int:
        return len(self._sizes)

    def header(self) -> dict[str, Any]:
        """The ``__header__`` record.

        Returns:
            ``format``, ``schema_version``, ``count``, ``elements`` (sorted Z),
            ``atoms_per_element`` (str(Z) -> atoms), ``atoms_per_structure`` {min, mean, max},
            ``labels`` (number of structures with energy / forces / stress),
            ``label_statistics`` (see :meth:`DatasetSummary.to_dict`), ``units``,
            ``key_mapping``, ``sources``, ``creator`` (``mlip <version>``) and
            ``created`` (UTC, ISO 8601).
        """
        header: dict[str, Any] = {"format": FORMAT_NAME, "schema_version": SCHEMA_VERSION}
        header.update(self.summary.to_dict())
        header["units"] = dict(UNITS)
        header["key_mapping"] = dict(self.key_mapping)
        header["sources"] = list(self.sources if self.sources is not None else self.summary.sources)
        header["creator"] = f"mlip {__version__}"
        header["created"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        return header

    def _flush(self, env: lmdb.Environment) -> None:
        if self._pending:
            _put_all(env, self._pending)
            self._pending = []

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        env, self._env = self._env, None
        if env is None:
            return
        try:
            if exc_type is None:
                self._flush(env)
                if self.summary.count != len(self._sizes):
                    raise RuntimeError(
                        f"{self.path}: {len(self._sizes)} records but a summary of "
                        f"{self.summary.count}; merge the summary of copied records"
                    )
                final = [(HEADER_KEY, dump_checked(self.header())), (SIZES_KEY, _pack_sizes(self._sizes))]
                final += [(meta_key(k), dump_checked(v)) for k, v in self._metadata.items()]
                _put_all(env, final)
                env.sync(True)
            env.close()
            if exc_type is None:
                close_reader(self.path)  # readers in this process must see the new file
                os.replace(self.partial_path, self.path)
        except BaseException:
            _remove(self.partial_path)
            raise
        finally:
            self._pending = []
        _remove(self.partial_path)  # on success only the (absent) lock file is left


def _pack_sizes(sizes: array) -> bytes:
    data = np.asarray(sizes, dtype="<i4").tobytes()
    return data + struct.pack("<I", zlib.crc32(data))


def _remove_stale_partials(path: str) -> None:
    """Delete ``path.partial-<pid>`` files whose writer process is gone (killed mid-way)."""
    folder, name = os.path.split(path)
    prefix = name + ".partial-"
    for entry in os.listdir(folder or "."):
        if not entry.startswith(prefix):
            continue
        pid = entry[len(prefix) :].removesuffix("-lock")
        if pid.isdigit() and int(pid) != os.getpid() and not process_alive(int(pid)):
            _remove(os.path.join(folder, prefix + pid))


def write_metadata(path: str | Path, name: str, blob: dict[str, Any]) -> None:
    """Store (or replace) a JSON blob in an existing mlip LMDB, e.g. cached statistics.

    Readers in this process pick the new blob up on their next access. Readers in other
    processes must not be reading the file while it is written (LMDB readers opened
    without locks are not protected from a writer): cache blobs before training starts.

    Args:
        path: an mlip LMDB file.
        name: blob name, e.g. :func:`mlip.data.stats.statistics_key` ``("train", 5.0)``.
        blob: JSON-serialisable dict.

    Raises:
        LmdbFormatError: ``path`` is not an mlip LMDB.
        OSError: the file cannot be written (read-only location).
    """
    path = str(path)
    value = dump_checked(blob)
    key = meta_key(name)
    _check = LmdbDataset(path).header  # raises unless this is an mlip LMDB
    close_reader(path)
    size = os.path.getsize(path)
    try:
        # With the lock (file ``path-lock``) concurrent writers, e.g. DDP ranks, serialise.
        env = lmdb.open(path, subdir=False, map_size=size + 2 * len(value) + 2**20, readahead=False)
    except lmdb.Error as err:
        raise OSError(f"cannot write metadata to {path}: {err}; is the file writable?") from None
    try:
        _put_all(env, [(key, value)])
    finally:
        env.close()

