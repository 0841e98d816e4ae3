"""`mlip data convert|info|dissociation`: build LMDB datasets from structure files, inspect
them, make dissociation frames (:mod:`mlip.cli.dissociation`)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from mlip.cli.main import CliError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "data",
        help="convert structure files to LMDB and inspect datasets",
        description="Convert structure files to an mlip LMDB dataset and inspect datasets.",
    )
    sub = parser.add_subparsers(dest="data_command", metavar="COMMAND")
    parser.set_defaults(func=lambda _args: _help(parser))

    conv = sub.add_parser(
        "convert",
        help="stream structure files (extxyz, ASE .db, .traj, .aselmdb) into an LMDB dataset",
        description="Stream structure files (anything ASE reads, and fairchem ASE-LMDB files) "
        "into one LMDB dataset or a folder of LMDB shards.",
    )
    conv.add_argument("inputs", nargs="+", metavar="INPUT",
                      help="structure files (extxyz, .traj, ASE .db, fairchem .aselmdb) or "
                      "folders of .aselmdb files, read in order")
    conv.add_argument("-o", "--output", required=True, metavar="OUT",
                      help="LMDB file to create (a folder of shards with --shard-size)")
    conv.add_argument("--shard-size", type=int, metavar="K",
                      help="write a folder of LMDB shards of at most K structures each, with "
                      "manifest.json (for data sets larger than one file should be)")
    conv.add_argument("--workers", type=int, default=1, metavar="N",
                      help="convert with N processes (parallel over .aselmdb row ranges and "
                      "over input files); default 1")
    conv.add_argument("--overwrite", action="store_true", help="replace an existing output")
    for label, where in (("energy", "info"), ("forces", "arrays"), ("stress", "info")):
        conv.add_argument(
            f"--{label}-key",
            metavar="KEY",
            help=f"read {label} from atoms.{where}[KEY] (default: ASE calculator results)",
        )
    conv.add_argument(
        "--skip-invalid",
        action="store_true",
        help="skip (and report) unreadable or invalid frames instead of stopping",
    )
    conv.add_argument(
        "--allow-missing-labels",
        action="store_true",
        help="accept frames that lack a label frame 0 of their file has (masked in training); "
        "default: such a frame is an error",
    )
    conv.add_argument(
        "--e0s",
        metavar="FILE",
        help="isolated-atom energies (single-atom frames) for the statistics; "
        "default: least-squares fit",
    )
    conv.add_argument(
        "--cutoff",
        type=float,
        metavar="R",
        help="neighbor cutoff [Å]: compute statistics (E0s, scales, avg. neighbors within R) "
        "in the same pass (--e0s alone also computes them, without neighbors)",
    )
    conv.add_argument("--no-progress", action="store_true", help="no progress bar")
    conv.set_defaults(func=run_convert)

    info = sub.add_parser(
        "info",
        help="summarise an LMDB dataset",
        description="Print counts, elements, labels and statistics of an LMDB dataset.",
    )
    info.add_argument("path", metavar="DATA", help="an mlip LMDB file or shard folder")
    info.add_argument("--json", action="store_true", help="print header and metadata as JSON")
    info.set_defaults(func=run_info)

    from mlip.cli import dissociation

    dissociation.register(sub)


def _help(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())


def run_convert(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from mlip.data.convert import convert
    from mlip.data.stats import MissingE0Error
    from mlip.data.structure import InvalidStructureError
    from mlip.graph.stats import closest_pairs, count_edges

    def report_skip(message: str) -> None:
        tqdm.write(f"mlip data: skipped {message}", file=sys.stderr)

    try:
        report = convert(
            args.inputs,
            args.output,
            energy_key=args.energy_key,
            forces_key=args.forces_key,
            stress_key=args.stress_key,
            skip_invalid=args.skip_invalid,
            overwrite=args.overwrite,
            e0s_file=args.e0s,
            cutoff=args.cutoff,
            neighbor_counter=count_edges if args.cutoff is not None else None,
            pair_distances=closest_pairs if args.cutoff is not None else None,
            shard_size=args.shard_size,
            workers=args.workers,
            progress=not args.no_progress,
            on_skip=report_skip,
            allow_missing_labels=args.allow_missing_labels,
        )
    except FileExistsError as err:
        raise CliError(f"{_one_line(err)} (pass --overwrite)") from None
    except (InvalidStructureError, MissingE0Error, FileNotFoundError, ValueError) as err:
        raise CliError(_one_line(err)) from None
    if report.skipped:
        print(f"mlip data: skipped {report.skipped} invalid frame(s)", file=sys.stderr)
    for warning in report.warnings:
        print(f"mlip data: warning: {warning}", file=sys.stderr)
    print(report.summary_line())
    if report.statistics is not None:
        print(f"statistics stored as metadata {report.statistics_key!r}")
    return 0


def run_info(args: argparse.Namespace) -> int:
    from mlip.data.lmdb import LmdbFormatError
    from mlip.data.shards import ShardedDataset, open_dataset

    try:
        dataset = open_dataset(args.path)
        header = dataset.header
        metadata = {name: dataset.metadata(name) for name in dataset.metadata_names()}
    except (FileNotFoundError, LmdbFormatError) as err:
        raise CliError(_one_line(err)) from None
    shards = None
    if isinstance(dataset, ShardedDataset):
        shards = [{k: v for k, v in s.items() if k != "statistics_state"}
                  for s in dataset.manifest["shards"]]
    dataset.close()
    if args.json:
        out = {"path": args.path, "header": header, "metadata": metadata}
        if shards is not None:
            out["shards"] = shards
        print(json.dumps(out, indent=2))
    else:
        lines = format_info(args.path, header, metadata)
        if shards is not None:
            counts = [s["count"] for s in shards]
            lines.insert(1, f"shards:  {len(shards)} (structures per shard: min {min(counts)}, "
                            f"max {max(counts)})")
        print("\n".join(lines))
    return 0


def format_info(path: str, header: dict[str, Any], metadata: dict[str, Any]) -> list[str]:
    """Human-readable lines describing an LMDB header and its metadata."""
    from ase.data import chemical_symbols

    count = header["count"]
    lines = [f"{path}: {count} structures ({header['creator']}, {header['created']})"]
    per_element = header["atoms_per_element"]
    lines.append(
        "elements:  "
        + ", ".join(f"{chemical_symbols[int(z)]} {n}" for z, n in per_element.items())
        + " atoms"
    )
    aps = header["atoms_per_structure"]
    lines.append(
        f"atoms per structure:  min {aps['min']}, mean {aps['mean']:.2f}, max {aps['max']}"
    )
    labels = header["labels"]
    lines.append("labels:  " + ", ".join(f"{name} {n}/{count}" for name, n in labels.items()))
    mapping = {k: v for k, v in header["key_mapping"].items() if v is not None}
    if mapping:
        lines.append("key mapping:  " + ", ".join(f"{k} <- {v!r}" for k, v in mapping.items()))
    stats = header["label_statistics"]
    for name, unit in (("energy", "eV"), ("energy_per_atom", "eV/atom")):
        s = stats.get(name)
        if s:
            lines.append(
                f"{name.replace('_', ' ')} [{unit}]:  mean {s['mean']:.6g}, std {s['std']:.6g}, "
                f"min {s['min']:.6g}, max {s['max']:.6g}"
            )
    for name, unit in (("forces", "eV/Å"), ("stress", "eV/Å^3")):
        s = stats.get(name)
        if s:
            lines.append(
                f"{name} [{unit}]:  RMS {s['rms']:.6g}, max |component| "
                f"{s['max_abs_component']:.6g}"
            )
    lines.append("sources:  " + ", ".join(header["sources"]))
    for name, blob in metadata.items():
        lines.append(f"metadata {name!r}:")
        lines.extend(f"  {k}: {_short(v)}" for k, v in blob.items())
    return lines


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_short(v)}" for k, v in value.items()) + "}"
    return str(value)
