"""Structures in one LMDB file: the file format and a fork-safe torch ``Dataset``.

File layout (``subdir=False``: one data file, no directory):

* records ``0 .. count-1`` under 8-byte big-endian keys (key order = index order), each a
  :mod:`mlip.data.codec` record (no pickle);
* ``__header__``: JSON described in :meth:`mlip.data.lmdb_writer.LmdbWriter.header`;
* ``__meta__/<name>``: cached JSON blobs, e.g. statistics
  (:func:`mlip.data.lmdb_writer.write_metadata`);
* ``__sizes__``: atoms per record, int32 little-endian plus a CRC-32 (what size-aware
  batching needs without decoding every record; files written before it have none and
  their sizes are read from the records once).

Corruption is detected, not read as numbers (schema 3): every record carries a CRC-32
(:mod:`mlip.data.codec`), the header and metadata blobs a ``__crc32__`` of their canonical
JSON, and a file shorter than its last page (a truncated copy, which LMDB would otherwise
hit as SIGBUS) is refused on opening. Files are written by :mod:`mlip.data.lmdb_writer`.
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lmdb
import numpy as np
import torch.utils.data

from mlip.data.codec import CodecError, decode_structure
from mlip.data.structure import Structure

SCHEMA_VERSION = 3  # 2: the header's element list is 'elements' (was 'species' in 1); 3: checksums
FORMAT_NAME = "mlip-lmdb"
HEADER_KEY = b"__header__"
SIZES_KEY = b"__sizes__"
META_PREFIX = b"__meta__/"
UNITS = {"energy": "eV", "forces": "eV/Å", "stress": "eV/Å^3", "positions": "Å"}
_INDEX = struct.Struct(">Q")


class LmdbFormatError(ValueError):
    """The file is not an mlip LMDB, or one this version cannot read."""


CRC_FIELD = "__crc32__"


def _canonical(blob: dict[str, Any]) -> bytes:
    return json.dumps(blob, sort_keys=True, separators=(",", ":")).encode()


def dump_checked(blob: dict[str, Any]) -> bytes:
    """JSON of ``blob`` with a CRC-32 of its canonical form under ``__crc32__``."""
    return json.dumps({**blob, CRC_FIELD: zlib.crc32(_canonical(blob))}).encode()


def load_checked(raw: bytes | memoryview, what: str) -> Any:
    """Parse :func:`dump_checked` JSON (blobs without a checksum, from before schema 3,
    are returned as they are).

    Raises:
        LmdbFormatError: not JSON, or the checksum does not match; ``what`` names the blob.
    """
    try:
        blob = json.loads(bytes(raw))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise LmdbFormatError(f"{what} is corrupted ({err})") from None
    if isinstance(blob, dict) and CRC_FIELD in blob:
        stored = blob.pop(CRC_FIELD)
        if stored != zlib.crc32(_canonical(blob)):
            raise LmdbFormatError(f"{what} is corrupted (checksum mismatch)")
    return blob


def index_key(index: int) -> bytes:
    """Key of record ``index`` (8-byte big-endian, so keys sort in index order)."""
    return _INDEX.pack(index)


def meta_key(name: str) -> bytes:
    """Key of the metadata blob ``name``."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"metadata name must be a non-empty string, got {name!r}")
    return META_PREFIX + name.encode()


def _unpack_sizes(raw: bytes, count: int, path: str) -> np.ndarray:
    data, crc = raw[:-4], raw[-4:]
    if len(raw) != 4 * count + 4 or struct.unpack("<I", crc)[0] != zlib.crc32(data):
        raise LmdbFormatError(f"{path}: the __sizes__ record is damaged; convert the file again")
    return np.frombuffer(data, dtype="<i4").astype(np.int64)


def _open_readonly(path: str) -> lmdb.Environment:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such file; create it with `mlip data convert`")
    try:
        env = lmdb.open(
            path, readonly=True, lock=False, readahead=False, subdir=False, max_readers=2048
        )
    except lmdb.Error as err:
        raise LmdbFormatError(
            f"{path} is not an LMDB file ({err}); create it with `mlip data convert`"
        ) from None
    needed = (env.info()["last_pgno"] + 1) * env.stat()["psize"]
    size = os.path.getsize(path)
    if size < needed:  # reading the missing pages would kill the process with SIGBUS
        env.close()
        raise LmdbFormatError(
            f"{path} is truncated ({size} of {needed} bytes); copy or convert it again"
        )
    return env


class _ReaderCache:
    """One read-only environment per file and process.

    LMDB (and py-lmdb's guard) allow a file to be open only once per process, so every
    :class:`LmdbDataset` on the same file shares one environment. After a fork the
    inherited environments belong to the parent: the child closes its copies (safe for
    these lock-free read-only environments; the parent's stay valid) and opens its own.
    """

    def __init__(self) -> None:
        self._pid = os.getpid()
        self._envs: dict[str, lmdb.Environment] = {}  # by real path
        self._real: dict[str, str] = {}  # path as given -> real path

    def _key(self, path: str) -> str:
        key = self._real.get(path)
        if key is None:
            key = self._real[path] = os.path.realpath(path)
        return key

    def _after_fork(self) -> None:
        if self._pid != os.getpid():
            for env in self._envs.values():
                env.close()
            self._envs.clear()
            self._pid = os.getpid()

    def get(self, path: str) -> lmdb.Environment:
        self._after_fork()
        key = self._key(path)
        env = self._envs.get(key)
        if env is None:
            env = self._envs[key] = _open_readonly(path)
        return env

    def drop(self, path: str) -> None:
        """Close the environment of ``path`` (next :meth:`get` reopens it)."""
        self._after_fork()  # discards inherited environments
        env = self._envs.pop(self._key(path), None)
        self._real.pop(path, None)
        if env is not None:
            env.close()


_READERS = _ReaderCache()


def close_reader(path: str) -> None:
    """Close this process's read-only environment of ``path``; the next read opens the file
    anew (a writer replaced it or added to it)."""
    _READERS.drop(path)


def _check_header(path: str, raw: bytes | None) -> dict[str, Any]:
    if raw is None:
        raise LmdbFormatError(
            f"{path} is an LMDB file but not an mlip dataset (no __header__ record); "
            "create it with `mlip data convert`"
        )
    header = load_checked(raw, f"{path}: the __header__ record")
    if not isinstance(header, dict) or header.get("format") != FORMAT_NAME:
        raise LmdbFormatError(f"{path}: __header__ is not an mlip LMDB header")
    version = header.get("schema_version")
    if not isinstance(version, int) or version > SCHEMA_VERSION:
        raise LmdbFormatError(
            f"{path} has schema version {version}, newer than this mlip reads "
            f"({SCHEMA_VERSION}); upgrade mlip or re-create the file with this version"
        )
    if version < 2 and "species" in header:  # "species" is an index everywhere else
        header["elements"] = header.pop("species")
    return header


class LmdbDataset(torch.utils.data.Dataset):
    """Read-only, random-access structures from an mlip LMDB file.

    The LMDB environment is opened lazily in the process that reads, and reopened after a
    fork (``os.getpid()`` changes), so the dataset can go to ``DataLoader`` workers as is
    (fork or spawn). Datasets on the same file in one process share one environment.

    Args:
        path: file written by :class:`LmdbWriter` (e.g. by ``mlip data convert``).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self._header: dict[str, Any] | None = None
        self._sizes: np.ndarray | None = None

    def _environment(self) -> lmdb.Environment:
        env = _READERS.get(self.path)
        if self._header is None:
            try:
                try:
                    with env.begin() as txn:
                        raw = txn.get(HEADER_KEY)
                except lmdb.Error as err:
                    raise LmdbFormatError(f"{self.path}: the file is damaged ({err})") from None
                self._header = _check_header(self.path, raw)
            except LmdbFormatError:
                _READERS.drop(self.path)
                raise
        return env

    @property
    def header(self) -> dict[str, Any]:
        """The ``__header__`` record (see :meth:`LmdbWriter.header`)."""
        self._environment()
        assert self._header is not None
        return self._header

    def __len__(self) -> int:
        header = self._header if self._header is not None else self.header
        return int(header["count"])

    def __getitem__(self, index: int) -> Structure:
        env = self._environment()
        n = len(self)
        i = int(index)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"index {index} out of range for {self.path} with {n} structures")
        try:
            with env.begin(buffers=True) as txn:
                raw = txn.get(index_key(i))
                if raw is None:
                    raise LmdbFormatError(f"{self.path}: record {i} is missing; the file is damaged")
                return decode_structure(raw)
        except CodecError as err:
            raise LmdbFormatError(f"{self.path}, record {i}: {err}") from None
        except lmdb.Error as err:  # a damaged page
            raise LmdbFormatError(f"{self.path}, record {i}: the file is damaged ({err})") from None

    def __iter__(self) -> Iterator[Structure]:
        for i in range(len(self)):
            yield self[i]

    def iter_raw(self) -> Iterator[bytes]:
        """The encoded records in index order, undecoded (for copying between files)."""
        env = self._environment()
        with env.begin() as txn:
            for i in range(len(self)):
                raw = txn.get(index_key(i))
                if raw is None:
                    raise LmdbFormatError(f"{self.path}: record {i} is missing; the file is damaged")
                yield raw

    def sizes(self) -> np.ndarray:
        """Atoms per structure, (count,) int64, in index order (from ``__sizes__``; files
        without it are read once)."""
        if self._sizes is None:
            with self._environment().begin() as txn:
                raw = txn.get(SIZES_KEY)
            if raw is None:
                self._sizes = np.array([self[i].num_atoms for i in range(len(self))], dtype=np.int64)
            else:
                self._sizes = _unpack_sizes(raw, len(self), self.path)
        return self._sizes

    def metadata(self, name: str) -> dict[str, Any] | None:
        """The JSON blob stored under ``name``, or None."""
        try:
            with self._environment().begin() as txn:
                raw = txn.get(meta_key(name))
        except lmdb.Error as err:
            raise LmdbFormatError(f"{self.path}: the file is damaged ({err})") from None
        return None if raw is None else load_checked(raw, f"{self.path}: metadata {name!r}")

    def metadata_names(self) -> list[str]:
        """Names of all stored metadata blobs, sorted."""
        names = []
        with self._environment().begin() as txn, txn.cursor() as cursor:
            if cursor.set_range(META_PREFIX):
                for key in cursor.iternext(keys=True, values=False):
                    if not key.startswith(META_PREFIX):
                        break
                    names.append(key[len(META_PREFIX) :].decode())
        return names

    def close(self) -> None:
        """Close this process's environment of the file (any access reopens it)."""
        _READERS.drop(self.path)


def split_indices(
    n: int,
    val_fraction: float | None = None,
    val_size: int | None = None,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic random train/validation split of ``range(n)``.

    Args:
        n: number of structures.
        val_fraction: fraction in [0, 1) for validation (rounded; at least 1 when > 0).
        val_size: number of validation structures; give this or ``val_fraction``.
        seed: seed of ``numpy.random.default_rng``; same seed, same split.

    Returns:
        ``(train_idx, val_idx)``: disjoint, sorted int64 arrays that cover ``range(n)``.

    >>> [a.tolist() for a in split_indices(5, val_size=2, seed=0)]
    [[0, 1, 3], [2, 4]]
    """
    if (val_fraction is None) == (val_size is None):
        raise ValueError("give exactly one of val_fraction and val_size")
    if val_fraction is not None:
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
        val_size = int(round(val_fraction * n))
        if val_fraction > 0 and val_size == 0:
            val_size = 1
    assert val_size is not None
    if not 0 <= val_size < n:
        raise ValueError(
            f"validation size {val_size} leaves no training data out of {n} structures"
        )
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[val_size:]), np.sort(perm[:val_size])
