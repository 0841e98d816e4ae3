"""fairchem's ASE-LMDB files (``.aselmdb``: OMol25, OMat24, ...), read natively.

An ASE-LMDB file is one LMDB data file (``subdir=False``) holding ASE database rows:

* key ``b"<id>"`` (ids 1, 2, ...): a zlib-compressed JSON object, the row: ``numbers``,
  ``positions``, ``cell``, ``pbc``, calculator results (``energy``, ``forces``, ``stress``
  in Voigt order, ASE's sign), ``key_value_pairs`` and ``data`` (OMol25 keeps the total
  ``charge`` and the spin multiplicity ``spin`` there);
* ``b"nextid"``: one past the largest id; ``b"deleted_ids"``: ids removed since;
  ``b"metadata"``: a JSON object.

Arrays are JSON lists (fairchem's writer, orjson) or ASE's ``{"__ndarray__": [shape, dtype,
flat values]}`` objects (the ase-db-backends writer); both are read. Decoding is plain
JSON with a whitelist of array dtypes: nothing from the file is executed or unpickled, and
neither fairchem nor ase-db-backends is needed.

Rows become ``ase.Atoms`` exactly as fairchem's ``AseDBDataset`` presents them (``data`` and
``key_value_pairs`` merged into ``atoms.info``, results on a single-point calculator), so the
usual label keys (``--energy-key`` ...) and :func:`mlip.data.readers.atoms_to_structure` apply.
"""

from __future__ import annotations

import json
import os
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

SUFFIX = ".aselmdb"
RESULT_KEYS = ("energy", "free_energy", "forces", "stress")
_DTYPES = {"float64", "float32", "int64", "int32", "int16", "int8", "uint8", "bool"}


class AseLmdbError(ValueError):
    """A file that is not a readable ASE-LMDB database, or a row that cannot be decoded."""


def is_aselmdb(path: str | Path) -> bool:
    """Whether ``path`` names an ASE-LMDB file (by its ``.aselmdb`` suffix)."""
    return str(path).endswith(SUFFIX)


def expand_inputs(paths: list[str]) -> list[str]:
    """Replace every folder among ``paths`` by the ``*.aselmdb`` files in it, sorted by
    name (OMol25 ships each split as such a folder).

    Raises:
        FileNotFoundError: a folder holds no ``.aselmdb`` file.
    """
    out: list[str] = []
    for path in paths:
        if os.path.isdir(path):
            found = sorted(str(p) for p in Path(path).iterdir() if is_aselmdb(p) and p.is_file())
            if not found:
                raise FileNotFoundError(f"{path}: a folder, but it holds no {SUFFIX} files")
            out.extend(found)
        else:
            out.append(str(path))
    return out


def _object_hook(obj: dict[str, Any]) -> Any:
    spec = obj.get("__ndarray__")
    if spec is None or len(obj) != 1:
        return obj
    try:
        shape, dtype, flat = spec
        if dtype not in _DTYPES:
            return obj  # (complex arrays and the like: no label of ours, left as they are)
        return np.asarray(flat, dtype=dtype).reshape(shape)
    except (TypeError, ValueError) as err:
        raise AseLmdbError(f"malformed __ndarray__ ({err})") from None


def decode_value(raw: bytes) -> Any:
    """zlib-compressed JSON bytes -> Python / numpy values.

    Raises:
        AseLmdbError: not zlib data, not UTF-8 JSON, or a malformed array.
    """
    try:
        text = zlib.decompress(bytes(raw)).decode("utf-8")
        return json.loads(text, object_hook=_object_hook)
    except (zlib.error, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise AseLmdbError(f"undecodable row ({type(err).__name__}: {err})") from None


class AseLmdbFile:
    """Read-only access to the rows of one ASE-LMDB file, by position (0 .. len-1).

    Args:
        path: the ``.aselmdb`` file.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        AseLmdbError: it is not an LMDB file, or its id bookkeeping is unreadable.
    """

    def __init__(self, path: str | Path) -> None:
        import lmdb

        self.path = str(path)
        if not os.path.isfile(self.path):
            raise FileNotFoundError(f"{self.path}: no such file")
        try:
            self._env = lmdb.open(self.path, subdir=False, readonly=True, lock=False,
                                  readahead=False, max_readers=1)
        except lmdb.Error as err:
            raise AseLmdbError(f"{self.path}: not an LMDB file ({err})") from None
        try:
            with self._env.begin() as txn:
                nextid, deleted = txn.get(b"nextid"), txn.get(b"deleted_ids")
                meta = txn.get(b"metadata")
            next_id = 1 if nextid is None else decode_value(nextid)
            gone = set() if deleted is None else set(decode_value(deleted))
            self.metadata = {} if meta is None else decode_value(meta)
            if not isinstance(next_id, int) or next_id < 1:
                raise AseLmdbError(f"nextid is {next_id!r}, not a positive integer")
        except (AseLmdbError, TypeError, lmdb.Error) as err:
            self._env.close()
            raise AseLmdbError(f"{self.path}: not an ASE-LMDB database ({err})") from None
        self.ids = [i for i in range(1, next_id) if i not in gone]

    def __len__(self) -> int:
        return len(self.ids)

    def row(self, index: int) -> dict[str, Any]:
        """The decoded row at position ``index`` (its id is ``self.ids[index]``).

        Raises:
            AseLmdbError: the row is missing or cannot be decoded (message names the id).
        """
        row_id = self.ids[index]
        with self._env.begin(buffers=True) as txn:
            raw = txn.get(str(row_id).encode("ascii"))
            raw = None if raw is None else bytes(raw)
        if raw is None:
            raise AseLmdbError(f"row id {row_id} is missing")
        row = decode_value(raw)
        if not isinstance(row, dict):
            raise AseLmdbError(f"row id {row_id} is not a JSON object")
        return row

    def atoms(self, index: int) -> Any:
        """The row at position ``index`` as ``ase.Atoms`` (labels on a single-point
        calculator, ``data`` and ``key_value_pairs`` in ``atoms.info``)."""
        return row_to_atoms(self.row(index), self.ids[index])

    def close(self) -> None:
        self._env.close()

    def __enter__(self) -> AseLmdbFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def row_to_atoms(row: dict[str, Any], row_id: int) -> Any:
    """One decoded row -> ``ase.Atoms``.

    Raises:
        AseLmdbError: ``numbers`` or ``positions`` are missing or of the wrong shape.
    """
    from ase import Atoms
    from ase.calculators.singlepoint import SinglePointCalculator

    try:
        numbers = np.asarray(row["numbers"], dtype=np.int64).reshape(-1)
        positions = np.asarray(row["positions"], dtype=np.float64).reshape(len(numbers), 3)
        cell = np.asarray(row.get("cell", np.zeros((3, 3))), dtype=np.float64).reshape(3, 3)
        pbc = np.asarray(row.get("pbc", [False] * 3), dtype=bool).reshape(3)
    except KeyError as err:
        raise AseLmdbError(f"row id {row_id} has no {err.args[0]!r}") from None
    except (TypeError, ValueError) as err:
        raise AseLmdbError(f"row id {row_id}: bad geometry ({err})") from None
    atoms = Atoms(numbers=numbers, positions=positions, cell=cell, pbc=pbc)
    for part in ("data", "key_value_pairs"):
        extra = row.get(part)
        if isinstance(extra, dict):
            atoms.info.update(extra)
    results = {k: np.asarray(row[k], dtype=np.float64) if k in ("forces", "stress") else row[k]
               for k in RESULT_KEYS if row.get(k) is not None}
    if results:
        atoms.calc = SinglePointCalculator(atoms, **results)
    atoms.info["aselmdb_id"] = row_id
    return atoms


def iter_aselmdb(path: str | Path, start: int = 0, stop: int | None = None) -> Iterator[tuple[int, Any]]:
    """Yield ``(position, ase.Atoms)`` for rows ``start .. stop-1`` of an ASE-LMDB file.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        mlip.data.readers.FrameReadError: a row cannot be decoded; names file, position and id.
    """
    from mlip.data.readers import FrameReadError

    try:
        db = AseLmdbFile(path)
    except AseLmdbError as err:
        raise FrameReadError(str(path), start, str(err).removeprefix(f"{path}: ")) from None
    with db:
        for index in range(start, len(db) if stop is None else min(stop, len(db))):
            try:
                atoms = db.atoms(index)
            except AseLmdbError as err:  # the rows after it stay readable
                raise FrameReadError(str(path), index, str(err), can_continue=True) from None
            yield index, atoms
