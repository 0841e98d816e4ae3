"""Stream :class:`~mlip.data.structure.Structure` records out of any file ASE can read.

Frames are read one at a time with ``ase.io.iread`` (extxyz, ASE ``.db``, ``.traj``, ...),
so memory stays flat however large the input is.

Where labels come from:

* by default from the calculator results ASE attaches on reading (ASE >= 3.23 puts the
  extxyz ``energy``/``forces``/``stress`` fields into a ``SinglePointCalculator``);
* with a custom key (e.g. ``energy_key="REF_energy"``) from ``atoms.info`` (energy, stress)
  or ``atoms.arrays`` (forces) under that name, falling back to the calculator results
  under that name.

A label that is absent is ``None``, not an error.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from mlip.data.structure import InvalidStructureError, Structure

CHARGE_INFO_KEYS = ("charge", "total_charge")
SPIN_INFO_KEYS = ("spin_multiplicity", "spin")


class FrameReadError(InvalidStructureError):
    """ASE could not parse a frame. The message names the file and the frame index.

    Attributes:
        source: the file.
        frame: 0-based index of the frame that failed.
        problem: what went wrong.
    """

    def __init__(self, source: str, frame: int, problem: str, can_continue: bool = False) -> None:
        super().__init__(f"{source}, frame {frame}: {problem}")
        self.source = source
        self.frame = frame
        self.problem = problem
        self.can_continue = can_continue  # frames after it can still be read (random access)


def iter_structures(
    path: str | Path,
    energy_key: str | None = None,
    forces_key: str | None = None,
    stress_key: str | None = None,
    validate: bool = True,
) -> Iterator[Structure]:
    """Yield the frames of ``path`` as structures, one at a time.

    Args:
        path: any file ``ase.io.iread`` understands (format guessed from the name/content).
        energy_key: read the total energy [eV] from ``atoms.info[energy_key]`` instead of
            the calculator results; None = calculator results ``"energy"``.
        forces_key: read forces [eV/Å], shape (n, 3), from ``atoms.arrays[forces_key]``.
        stress_key: read stress [eV/Å^3] (Voigt-6, 9 or 3x3) from ``atoms.info[stress_key]``.
        validate: call :meth:`Structure.validate` on each frame.

    Yields:
        Structures with ``source=str(path)`` and ``frame`` = 0-based index in the file.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        FrameReadError: ASE failed on a frame (frames before it have been yielded).
        InvalidStructureError: a frame has unusable values or fails validation.
    """
    for frame, atoms in iter_atoms(path):
        structure = atoms_to_structure(
            atoms,
            source=str(path),
            frame=frame,
            energy_key=energy_key,
            forces_key=forces_key,
            stress_key=stress_key,
        )
        if validate:
            structure.validate()
        yield structure


def iter_atoms(path: str | Path, start: int = 0) -> Iterator[tuple[int, Any]]:
    """Yield ``(frame index, ase.Atoms)`` for every frame of ``path``, streaming.

    ASE-LMDB files (``.aselmdb``) are read natively (:mod:`mlip.data.aselmdb`), everything
    else through ``ase.io.iread``. ``start`` skips the frames before it (random access for
    ASE-LMDB; others read and drop them).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        FrameReadError: ASE failed on a frame; the frames before it have been yielded and
            the file cannot be read past it. (ASE's extxyz reader indexes the whole file
            before the first frame, so a broken atom-count line fails before any frame
            is yielded; the error still names the frame that is broken.)
    """
    import ase.io

    source = str(path)
    if not Path(path).is_file():
        raise FileNotFoundError(f"{source}: no such file")
    from mlip.data.aselmdb import is_aselmdb, iter_aselmdb

    if is_aselmdb(source):
        yield from iter_aselmdb(source, start=start)
        return
    frames = ase.io.iread(source, index=f"{int(start)}:" if start else ":")
    frame = int(start)
    while True:
        try:
            atoms = next(frames)
        except StopIteration:
            if source.endswith((".xyz", ".extxyz")):
                _check_xyz_end(source, frame)
            return
        except (KeyboardInterrupt, MemoryError):
            raise
        except Exception as err:  # ASE raises many types on bad input; report them all alike
            if frame == 0 and "Expected xyz header" in str(err):
                frame = _find_bad_count_line(source)
            raise FrameReadError(source, frame, _describe(err)) from err
        yield frame, atoms
        frame += 1


def _walk_xyz(path: str) -> tuple[int, str]:
    """Walk the atom-count lines of an (ext)xyz file.

    Returns:
        ``(frame, how)``: where the walk stopped and why: ``"bad count"`` (the count line of
        ``frame`` is not an integer), ``"short"`` (``frame`` has fewer lines than it
        announces), ``"blank"`` (a blank line where the count of ``frame`` belongs, with
        more text after it) or ``"end"``.
    """
    frame = 0
    with open(path, errors="replace") as f:
        for line in f:
            if not line.strip():
                return frame, ("blank" if any(rest.strip() for rest in f) else "end")
            try:
                natoms = int(line)
            except ValueError:
                return frame, "bad count"
            for _ in range(natoms + 1):  # comment line + atom lines
                if not f.readline():
                    return frame, "short"
            frame += 1
    return frame, "end"


def _find_bad_count_line(path: str) -> int:
    """Index of the first (ext)xyz frame whose atom-count line is not an integer.

    ASE's extxyz reader reports such a line while indexing the file, before any frame is
    yielded, without saying where; this walks the frames again to name the frame.
    """
    frame, how = _walk_xyz(path)
    return frame if how in ("bad count", "short") else 0


def _check_xyz_end(path: str, frames_read: int) -> None:
    """ASE stops reading an (ext)xyz file at the first blank line where an atom count
    belongs, silently dropping everything after it; make that an error."""
    frame, how = _walk_xyz(path)
    if how == "blank" and frame >= frames_read:
        raise FrameReadError(
            path, frame, "blank line where the atom count belongs; the frames after it "
            "would be lost (remove the blank line)"
        )


def atoms_to_structure(
    atoms: Any,
    source: str = "",
    frame: int = -1,
    energy_key: str | None = None,
    forces_key: str | None = None,
    stress_key: str | None = None,
) -> Structure:
    """Convert one ``ase.Atoms`` to a (not yet validated) structure.

    A cell is kept only when the structure is periodic along some axis; free molecules
    (``pbc`` all False) get a zero cell, whatever dummy box the file carried.

    Args:
        atoms: the ASE atoms object.
        source: file name recorded in the structure.
        frame: frame index recorded in the structure.
        energy_key: see :func:`iter_structures`.
        forces_key: see :func:`iter_structures`.
        stress_key: see :func:`iter_structures`.

    Returns:
        The structure; absent labels are None.

    Raises:
        InvalidStructureError: a label or info value cannot be converted (e.g. a
            non-numeric charge, a stress of the wrong size); names file and frame.
    """
    try:
        return _convert(atoms, source, frame, energy_key, forces_key, stress_key)
    except (TypeError, ValueError) as err:
        raise InvalidStructureError(f"{source or '<memory>'}, frame {frame}: {err}") from err


def _convert(
    atoms: Any,
    source: str,
    frame: int,
    energy_key: str | None,
    forces_key: str | None,
    stress_key: str | None,
) -> Structure:
    results: Mapping[str, Any] = {}
    if atoms.calc is not None:
        results = getattr(atoms.calc, "results", None) or {}
    info, arrays = atoms.info, atoms.arrays
    energy = _label(results, info, energy_key, "energy")
    forces = _label(results, arrays, forces_key, "forces")
    stress = _label(results, info, stress_key, "stress")
    pbc = np.asarray(atoms.pbc, dtype=bool)
    cell = np.array(atoms.cell.array, dtype=np.float64) if pbc.any() else np.zeros((3, 3))
    return Structure(
        numbers=np.array(atoms.numbers, dtype=np.int64),
        positions=np.array(atoms.positions, dtype=np.float64),
        cell=cell,
        pbc=pbc,
        energy=None if energy is None else _scalar(energy, "energy"),
        forces=None if forces is None else np.array(forces, dtype=np.float64),
        stress=None if stress is None else np.array(stress, dtype=np.float64),
        charge=_first(info, CHARGE_INFO_KEYS, 0.0),
        spin_multiplicity=_first(info, SPIN_INFO_KEYS, 1.0),
        config_type=str(info.get("config_type", "")),
        source=source,
        frame=frame,
    )


def _label(
    results: Mapping[str, Any], store: Mapping[str, Any], key: str | None, default: str
) -> Any:
    if key is None:
        return results.get(default)
    if key in store:
        return store[key]
    return results.get(key)


def _first(info: Mapping[str, Any], keys: tuple[str, ...], default: float) -> float:
    for key in keys:
        if key in info and info[key] is not None:
            return _scalar(info[key], key)
    return default


def _scalar(value: Any, name: str) -> float:
    arr = np.asarray(value)
    if arr.size != 1 or arr.dtype.kind not in "biuf":
        raise ValueError(f"{name} must be a single number, got {value!r}")
    return float(arr.reshape(()))


def _describe(err: BaseException) -> str:
    text = str(err).strip() or "no details"
    if isinstance(err, KeyError) and len(err.args) == 1 and isinstance(err.args[0], str):
        return f"unknown element symbol or missing field {err.args[0]!r}"
    if type(err).__name__ == "UnknownFileTypeError":
        return f"unknown file format ({text}); convert it to extxyz, ASE .traj or ASE .db"
    return f"could not parse frame ({type(err).__name__}: {text})"
