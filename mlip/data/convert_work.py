"""The work of a conversion (:func:`mlip.data.convert.convert`), cut into units.

A unit is a row range of an ASE-LMDB file (random access) or a whole file of another
format. Each unit is read, validated and written by one process, into the final output
(:class:`DirectSink`) or into part files (:class:`PartSink`) that the caller puts together
in input order; :func:`run_units` runs them in this process or in a pool of workers.
"""

from __future__ import annotations

import math
import multiprocessing
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mlip.data.aselmdb import AseLmdbError, AseLmdbFile, is_aselmdb
from mlip.data.labels import LabelCheck, LabelKeyError
from mlip.data.lmdb_writer import LmdbWriter
from mlip.data.readers import FrameReadError, atoms_to_structure, iter_atoms
from mlip.data.stats import (
    DatasetSummary,
    MissingE0Error,
    NeighborCounter,
    PairDistances,
    StatisticsAccumulator,
)
from mlip.data.structure import InvalidStructureError, Structure


@dataclass(frozen=True)
class ConvertOptions:
    """The settings of one conversion, shared by all its units (picklable for workers)."""

    keys: dict[str, str | None]
    skip_invalid: bool
    allow_missing: bool
    e0s: dict[int, float] | None
    e0_source: str
    cutoff: float | None
    neighbor_counter: NeighborCounter | None
    pair_distances: PairDistances | None
    statistics: bool
    map_size: int

    def accumulator(self) -> StatisticsAccumulator | None:
        if not self.statistics:
            return None
        return StatisticsAccumulator(
            e0s=self.e0s, cutoff=self.cutoff, neighbor_counter=self.neighbor_counter,
            e0_source=self.e0_source, pair_distances=self.pair_distances,
        )


@dataclass(frozen=True)
class Unit:
    """Frames ``start .. stop`` of one input file; ``index``: its place in input order."""

    index: int
    path: str
    start: int = 0
    stop: int | None = None  # None: to the end of the file


@dataclass
class Part:
    """One LMDB a unit wrote (a shard, or a piece of a single output)."""

    file: str
    count: int
    summary: DatasetSummary
    statistics_state: dict[str, Any] | None


@dataclass
class UnitResult:
    """What a unit produced: its part files, skipped frames, the label check, or an error."""

    unit: Unit
    parts: list[Part] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    labels: LabelCheck | None = None
    error: tuple[str, str] | None = None  # (kind, one-line message)


class PartSink:
    """Writes a unit's structures into part files, a new one every ``shard_size``."""

    def __init__(self, folder: str, unit: Unit, options: ConvertOptions, shard_size: int | None) -> None:
        self.folder, self.unit, self.options, self.shard_size = folder, unit, options, shard_size
        self.parts: list[Part] = []
        self.writer: LmdbWriter | None = None
        self.stats: StatisticsAccumulator | None = None

    def add(self, structure: Structure) -> None:
        if self.writer is None:
            name = os.path.join(self.folder, f"unit{self.unit.index:07d}-{len(self.parts):05d}.lmdb")
            self.writer = LmdbWriter(name, key_mapping=self.options.keys, sources=[self.unit.path],
                                     map_size=self.options.map_size).__enter__()
            self.stats = self.options.accumulator()
        self.writer.add(structure)
        if self.stats is not None:
            self.stats.add(structure)
        if self.shard_size is not None and len(self.writer) >= self.shard_size:
            self.close()

    def close(self) -> None:
        writer, self.writer = self.writer, None
        if writer is None:
            return
        writer.__exit__(None, None, None)
        state = None if self.stats is None else self.stats.state()
        self.parts.append(Part(writer.path, len(writer), writer.summary, state))

    def abort(self, exc: BaseException) -> None:
        writer, self.writer = self.writer, None
        if writer is not None:
            writer.__exit__(type(exc), exc, None)


class DirectSink:
    """Writes straight into the final single output (one process, no copy)."""

    def __init__(self, writer: LmdbWriter, stats: StatisticsAccumulator | None) -> None:
        self.writer, self.stats = writer, stats

    def add(self, structure: Structure) -> None:
        self.writer.add(structure)
        if self.stats is not None:
            self.stats.add(structure)


def read_unit(unit: Unit, options: ConvertOptions, sink: Any, result: UnitResult,
               tick: Callable[[], None]) -> None:
    """Stream the frames of one unit through validation and the label check into ``sink``."""
    keys = options.keys
    labels = result.labels = LabelCheck(unit.path, keys, options.allow_missing)
    frames = iter_atoms(unit.path, start=unit.start)
    while True:
        try:
            frame, atoms = next(frames)
            if unit.stop is not None and frame >= unit.stop:
                break
            structure = atoms_to_structure(atoms, unit.path, frame, *keys.values()).validate()
            labels.see(structure, atoms)
        except StopIteration:
            break
        except InvalidStructureError as err:
            if not options.skip_invalid:
                raise
            result.skipped.append(str(err))
            if isinstance(err, FrameReadError):
                if not err.can_continue:
                    break  # the reader cannot go past a frame it failed to parse
                if unit.stop is not None and err.frame + 1 >= unit.stop:
                    break
                frames = iter_atoms(unit.path, start=err.frame + 1)
            continue
        sink.add(structure)
        tick()


# The exception a unit's error (reported by name from a worker) is raised as again.
ERRORS: dict[str, type[Exception]] = {
    "InvalidStructureError": InvalidStructureError,
    "FrameReadError": InvalidStructureError,
    "LabelKeyError": LabelKeyError,
    "MissingE0Error": MissingE0Error,
    "FileNotFoundError": FileNotFoundError,
    "ValueError": ValueError,
}
_COUNTER: Any = None  # frames converted, shared with the workers (set by _init_worker)


def _init_worker(counter: Any) -> None:
    global _COUNTER
    _COUNTER = counter


def _tick_shared() -> None:
    with _COUNTER.get_lock():
        _COUNTER.value += 1


def run_unit(args: tuple[Unit, ConvertOptions, str, int | None],
              tick: Callable[[], Any] | None = None) -> UnitResult:
    """A worker's job: convert one unit into part files (errors come back as text)."""
    unit, options, folder, shard_size = args
    result = UnitResult(unit)
    sink = PartSink(folder, unit, options, shard_size)
    try:
        read_unit(unit, options, sink, result, tick or _tick_shared)
        sink.close()
    except (InvalidStructureError, LabelKeyError, MissingE0Error, ValueError, FileNotFoundError) as err:
        sink.abort(err)
        result.error = (type(err).__name__, str(err))
    except BaseException as err:
        sink.abort(err)
        raise
    result.parts = sink.parts
    return result


def plan_units(inputs: list[str], shard_size: int | None, workers: int) -> list[Unit]:
    """Cut the inputs into units: row ranges of ASE-LMDB files, whole other files."""
    units: list[Unit] = []
    for path in inputs:
        if not is_aselmdb(path):
            units.append(Unit(len(units), path))
            continue
        try:
            with AseLmdbFile(path) as db:
                n = len(db)
        except AseLmdbError as err:
            raise FrameReadError(path, 0, str(err).removeprefix(f"{path}: ")) from None
        step = shard_size or max(1000, math.ceil(n / (4 * workers)))
        for start in range(0, max(n, 1), step):
            units.append(Unit(len(units), path, start, start + step))
    return units


def check_labels(results: list[UnitResult]) -> None:
    """The label rules across the units of each file, then the explicit-key check."""
    by_file: dict[str, LabelCheck] = {}
    for result in results:
        assert result.labels is not None
        path = result.unit.path
        if path not in by_file:
            by_file[path] = result.labels
        else:
            by_file[path].absorb(result.labels)
    for check in by_file.values():
        check.finish()


def run_units(units, options, folder, shard_size, workers, bar) -> list[UnitResult]:
    """Run the units (in a pool when ``workers > 1``), results in unit order; stops at
    the first unit that fails."""
    jobs = [(u, options, folder, shard_size) for u in units]
    if workers == 1 or len(units) == 1:
        results = []
        for job in jobs:
            result = run_unit(job, tick=bar.update)
            results.append(result)
            if result.error is not None:
                break
        return results
    # Fresh worker processes, not forks: a fork of a process whose OpenMP pool has run
    # (torch, numpy) can deadlock in the child's first parallel region.
    context = multiprocessing.get_context("spawn")
    counter = context.Value("q", 0)
    with context.Pool(min(workers, len(units)), initializer=_init_worker, initargs=(counter,)) as pool:
        pending = pool.imap(run_unit, jobs)
        results = []
        shown = 0
        while len(results) < len(jobs):
            try:
                result = pending.next(timeout=0.2)
            except multiprocessing.TimeoutError:
                result = None
            if counter.value > shown:
                bar.update(counter.value - shown)
                shown = counter.value
            if result is None:
                continue
            results.append(result)
            if result.error is not None:
                pool.terminate()
                break
        if counter.value > shown:
            bar.update(counter.value - shown)
    return results
