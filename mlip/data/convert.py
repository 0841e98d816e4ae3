"""Convert structure files (anything ASE reads, and fairchem ASE-LMDB files) into an mlip
dataset: one LMDB file, or a folder of LMDB shards with a manifest (``shard_size``), in one
streaming pass, optionally with several worker processes.

Work is cut into units (:mod:`mlip.data.convert_work`): a row range of an ASE-LMDB file
(random access) or a whole file of another format. Each unit is read, validated and written
by one process; here units are put together in input order, so the output does not depend
on the number of workers."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from mlip import __version__
from mlip.cache import process_alive
from mlip.data.aselmdb import expand_inputs
from mlip.data.convert_work import (
    ERRORS,
    ConvertOptions,
    DirectSink,
    UnitResult,
    check_labels,
    plan_units,
    read_unit,
    run_units,
)
from mlip.data.lmdb import UNITS, LmdbDataset
from mlip.data.lmdb_writer import INITIAL_MAP_SIZE, LmdbWriter
from mlip.data.shards import FORMAT_NAME, SCHEMA_VERSION, shard_name, write_manifest
from mlip.data.stats import (
    DatasetStatistics,
    DatasetSummary,
    NeighborCounter,
    PairDistances,
    StatisticsAccumulator,
    e0s_from_file,
    statistics_key,
)


@dataclass
class ConvertReport:
    """What a conversion did.

    Attributes:
        output: the LMDB file (or shard folder) written.
        written: structures written.
        skipped: invalid frames skipped (only with ``skip_invalid``).
        elements: sorted atomic numbers present.
        seconds: wall time of the conversion [s].
        statistics: statistics stored as metadata, or None.
        statistics_key: metadata name of ``statistics``, or None.
        warnings: things the user should know (e.g. a label key that matched nothing).
    """

    output: str
    written: int
    skipped: int
    elements: list[int]
    seconds: float
    statistics: DatasetStatistics | None = None
    statistics_key: str | None = None
    warnings: list[str] = field(default_factory=list)
    shards: int = 0
    workers: int = 1

    @property
    def frames_per_second(self) -> float:
        return self.written / self.seconds if self.seconds > 0 else float("inf")

    def summary_line(self) -> str:
        """One line: frames written and skipped, elements, time and throughput."""
        from ase.data import chemical_symbols

        elements = " ".join(chemical_symbols[z] for z in self.elements)
        where = f"{self.output} ({self.shards} shards)" if self.shards else self.output
        return (
            f"wrote {self.written} frames to {where}, skipped {self.skipped}, "
            f"elements {elements}, {self.seconds:.2f} s, {self.frames_per_second:.0f} frames/s"
        )


def _remove_stale(path: str) -> None:
    """Delete ``OUT.partial-<pid>`` / ``OUT.parts-<pid>`` folders of dead processes."""
    folder, name = os.path.split(path)
    for entry in os.listdir(folder or "."):
        for marker in (".partial-", ".parts-"):
            if entry.startswith(name + marker):
                pid = entry[len(name + marker):]
                full = os.path.join(folder, entry)
                if pid.isdigit() and int(pid) != os.getpid() and not process_alive(int(pid)) \
                        and os.path.isdir(full):
                    shutil.rmtree(full, ignore_errors=True)


def convert(
    inputs: Sequence[str | Path],
    output: str | Path,
    energy_key: str | None = None,
    forces_key: str | None = None,
    stress_key: str | None = None,
    skip_invalid: bool = False,
    overwrite: bool = False,
    e0s_file: str | Path | None = None,
    cutoff: float | None = None,
    neighbor_counter: NeighborCounter | None = None,
    progress: bool = True,
    on_skip: Callable[[str], None] | None = None,
    map_size: int = INITIAL_MAP_SIZE,
    allow_missing_labels: bool = False,
    shard_size: int | None = None,
    workers: int = 1,
    pair_distances: PairDistances | None = None,
) -> ConvertReport:
    """Stream every frame of ``inputs`` into a new dataset ``output``.

    Statistics (:class:`~mlip.data.stats.DatasetStatistics` of all frames) are computed in
    the same pass when ``cutoff`` or ``e0s_file`` is given and stored as metadata under
    ``statistics_key("all", cutoff)``; a sharded output also keeps each shard's mergeable
    sums in its manifest.

    Args:
        inputs: structure files (extxyz, ASE .db, .traj, fairchem .aselmdb, ...) or folders
            of .aselmdb files (OMol25's layout), read in order.
        output: the LMDB file (or, with ``shard_size``, the folder) to create; never left
            half-written.
        energy_key: info key of the energy [eV]; None = ASE calculator results.
        forces_key: arrays key of the forces [eV/Å]; None = ASE calculator results.
        stress_key: info key of the stress [eV/Å^3]; None = ASE calculator results.
        skip_invalid: skip frames that cannot be parsed or fail validation (a text file that
            breaks off keeps its frames before the break) instead of aborting.
        overwrite: replace an existing ``output``.
        e0s_file: isolated-atom energies; None fits E0s by least squares.
        cutoff: neighbor cutoff [Å] for the average neighbor count.
        neighbor_counter: (structure, cutoff) -> directed edges, used with ``cutoff``
            (with ``workers > 1`` it must be a module-level function).
        progress: show a progress bar on stderr (only when it is a terminal).
        on_skip: called with a one-line description of every skipped frame.
        map_size: initial LMDB map size [bytes] (it grows as needed).
        allow_missing_labels: accept files whose frames differ in which labels they carry
            (missing labels are masked in training); by default every frame of a file must
            have the labels its frame 0 has.
        shard_size: write a folder of LMDB shards of at most this many structures each,
            with ``manifest.json`` (:mod:`mlip.data.shards`); None = one LMDB file.
        workers: processes that read and validate in parallel (units: row ranges of
            .aselmdb inputs, whole files otherwise).
        pair_distances: (structure, cutoff) -> closest distance per element pair, for the
            statistics' ``closest_pairs`` (what training needs for the repulsion).

    Returns:
        A :class:`ConvertReport`.

    Raises:
        FileNotFoundError: an input is missing.
        FileExistsError: ``output`` exists and ``overwrite`` is False.
        InvalidStructureError: a frame is unreadable or invalid, or lacks a label the
            file's frame 0 has (without ``skip_invalid``); the message reads
            ``FILE, frame N: problem``.
        LabelKeyError: an explicit ``*_key`` matches nothing in a file (always an error;
            the message lists the keys the file does have).
        MissingE0Error: the E0 file lacks an element of the data.
        ValueError: no frame could be converted, or bad ``shard_size`` / ``workers``.
    """
    import ase.io  # noqa: F401 - imported before the clock starts (about a second)

    start = time.perf_counter()
    if shard_size is not None and int(shard_size) < 1:
        raise ValueError(f"shard size must be at least 1, got {shard_size}")
    if int(workers) < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    workers = int(workers)
    for path in inputs:
        if not Path(path).exists():
            raise FileNotFoundError(f"{path}: no such file")
    inputs = expand_inputs([str(p) for p in inputs])
    for path in inputs:
        if not Path(path).is_file():
            raise FileNotFoundError(f"{path}: no such file")
    output = str(output)
    if os.path.exists(output) and not overwrite:
        raise FileExistsError(f"{output} exists; choose another name or overwrite it")
    parent = os.path.dirname(output) or "."
    if not os.path.isdir(parent):
        raise FileNotFoundError(f"output directory {parent} does not exist")
    options = ConvertOptions(
        keys={"energy": energy_key, "forces": forces_key, "stress": stress_key},
        skip_invalid=skip_invalid,
        allow_missing=allow_missing_labels,
        e0s=None if e0s_file is None else e0s_from_file(e0s_file),
        e0_source=str(e0s_file),
        cutoff=cutoff,
        neighbor_counter=neighbor_counter,
        pair_distances=pair_distances,
        statistics=cutoff is not None or e0s_file is not None,
        map_size=map_size,
    )
    units = plan_units(inputs, shard_size, workers)
    stats_name = statistics_key("all", cutoff) if options.statistics else None
    bar = tqdm(desc="converting", unit=" frames", disable=None if progress else True)
    with bar:
        if shard_size is None and workers == 1:
            written, skipped, statistics = _convert_direct(units, options, output, overwrite,
                                                           inputs, stats_name, bar, on_skip)
            shards = 0
        else:
            written, skipped, statistics, shards = _convert_parts(
                units, options, output, overwrite, inputs, stats_name, bar, on_skip,
                shard_size, workers)
    warnings = []
    if cutoff is not None and neighbor_counter is None:
        warnings.append("no neighbor counter available; avg_num_neighbors was not computed")
    return ConvertReport(
        output=output,
        written=written.count,
        skipped=skipped,
        elements=written.elements,
        seconds=time.perf_counter() - start,
        statistics=statistics,
        statistics_key=stats_name,
        warnings=warnings,
        shards=shards,
        workers=workers,
    )


def _convert_direct(units, options, output, overwrite, inputs, stats_name, bar, on_skip):
    """One process, one output file: frames go straight into it."""
    stats = options.accumulator()
    skipped = 0
    writer = LmdbWriter(output, overwrite=overwrite, key_mapping=options.keys, sources=inputs,
                        map_size=options.map_size)
    with writer:
        results = []
        for unit in units:
            result = UnitResult(unit)
            read_unit(unit, options, DirectSink(writer, stats), result, bar.update)
            for message in result.skipped:
                if on_skip is not None:
                    on_skip(message)
            skipped += len(result.skipped)
            results.append(result)
        check_labels(results)
        if len(writer) == 0:
            raise ValueError(f"{', '.join(inputs)}: no valid frames; nothing written")
        statistics = None if stats is None else stats.finalize()
        if statistics is not None:
            writer.set_metadata(stats_name, statistics.to_dict())
    return writer.summary, skipped, statistics


def _convert_parts(units, options, output, overwrite, inputs, stats_name, bar, on_skip,
                   shard_size, workers):
    """Units write part files in a private folder; they become the shards of a folder
    output, or are copied in order into one output file."""
    _remove_stale(output)
    sharded = shard_size is not None
    folder = f"{output}.{'partial' if sharded else 'parts'}-{os.getpid()}"
    shutil.rmtree(folder, ignore_errors=True)
    os.mkdir(folder)
    try:
        results = run_units(units, options, folder, shard_size, workers, bar)
        skipped = 0
        for result in results:
            for message in result.skipped:
                if on_skip is not None:
                    on_skip(message)
            skipped += len(result.skipped)
            if result.error is not None:
                kind, message = result.error
                raise ERRORS.get(kind, ValueError)(message)
        check_labels(results)
        parts = [p for r in results for p in r.parts]
        summary = DatasetSummary()
        for part in parts:
            summary.merge(part.summary)
        if summary.count == 0:
            raise ValueError(f"{', '.join(inputs)}: no valid frames; nothing written")
        statistics = None
        merged = None
        if options.statistics:
            merged = StatisticsAccumulator.from_state(parts[0].statistics_state)
            for part in parts[1:]:
                merged.merge(StatisticsAccumulator.from_state(part.statistics_state))
            statistics = merged.finalize()
        if sharded:
            _finish_shards(folder, parts, summary, options, inputs, stats_name, statistics)
            _move_into_place(folder, output, overwrite)
        else:
            _concatenate(parts, output, overwrite, options, inputs, summary, stats_name, statistics)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return summary, skipped, statistics, len(parts) if sharded else 0


def _header(summary: DatasetSummary, options: ConvertOptions, inputs: list[str]) -> dict[str, Any]:
    header: dict[str, Any] = {"format": FORMAT_NAME, "schema_version": SCHEMA_VERSION}
    header.update(summary.to_dict())
    header["units"] = dict(UNITS)
    header["key_mapping"] = dict(options.keys)
    header["sources"] = list(inputs)
    header["creator"] = f"mlip {__version__}"
    header["created"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return header


def _finish_shards(folder, parts, summary, options, inputs, stats_name, statistics) -> None:
    shards = []
    for i, part in enumerate(parts):
        os.replace(part.file, os.path.join(folder, shard_name(i)))
        shards.append({
            "file": shard_name(i),
            "count": part.count,
            "elements": part.summary.elements,
            "atoms": int(sum(part.summary.atoms_per_element.values())),
            "sources": list(part.summary.sources),
            "statistics_state": part.statistics_state,
        })
    header = _header(summary, options, inputs)
    manifest = {
        "format": FORMAT_NAME,
        "schema_version": SCHEMA_VERSION,
        "count": summary.count,
        "header": header,
        "metadata": {} if statistics is None else {stats_name: statistics.to_dict()},
        "shards": shards,
    }
    write_manifest(folder, manifest)


def _move_into_place(folder: str, output: str, overwrite: bool) -> None:
    if os.path.exists(output):
        if not overwrite:
            raise FileExistsError(f"{output} exists; choose another name or overwrite it")
        old = f"{output}.old-{os.getpid()}"
        os.replace(output, old)
        os.replace(folder, output)
        if os.path.isdir(old):
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.remove(old)
        return
    os.replace(folder, output)


def _concatenate(parts, output, overwrite, options, inputs, summary, stats_name, statistics) -> None:
    """Copy the parts' records, in order and still encoded, into one output LMDB."""
    writer = LmdbWriter(output, overwrite=overwrite, key_mapping=options.keys, sources=inputs,
                        map_size=options.map_size)
    with writer:
        for part in parts:
            source = LmdbDataset(part.file)
            sizes = source.sizes()
            for i, raw in enumerate(source.iter_raw()):
                writer.add_encoded(raw, int(sizes[i]))
            source.close()
        writer.summary.merge(summary)
        if statistics is not None:
            writer.set_metadata(stats_name, statistics.to_dict())
