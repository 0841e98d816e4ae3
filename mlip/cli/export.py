"""`mlip export lammps MODEL.pt -o MODEL.pt2`: compile a model for another MD engine;
`mlip export head MODEL.pt --head NAME -o OUT.pt`: one head of a multi-head model;
`mlip export committee A.pt B.pt ... -o OUT.pt [--calibrate FILE]`: one committee file."""

from __future__ import annotations

import argparse
import sys

from mlip.cli.main import CliError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="compile a model file for another MD engine (LAMMPS), or "
                       "write one head of a multi-head model")
    targets = p.add_subparsers(dest="target", metavar="TARGET", required=True)
    lmp = targets.add_parser(
        "lammps", help="an AOTInductor package for pair_style mlip (compiled locally)")
    lmp.add_argument("model", help="model file (model.pt from mlip train)")
    lmp.add_argument("-o", "--output", required=True, help="package to write (.pt2)")
    lmp.add_argument("--dtype", choices=("float32", "float64"), default=None,
                     help="precision of the package (default: the model's)")
    lmp.add_argument("--device", default="cpu",
                     help="cpu or cuda: where LAMMPS will run it (cuda needs a CUDA torch)")
    lmp.add_argument("--kernel-threads", type=int, default=1,
                     help="threads the generated CPU loops are written for (default 1: serial "
                          "loops, fastest here even on 2 threads; 0: all)")
    lmp.set_defaults(func=run_lammps)
    head = targets.add_parser(
        "head", help="the single-head model file of one head of a multi-head model")
    head.add_argument("model", help="multi-head model file (model.pt from mlip train)")
    head.add_argument("--head", required=True, help="the head's name")
    head.add_argument("-o", "--output", required=True, help="model file to write (.pt)")
    head.set_defaults(func=run_head)
    com = targets.add_parser(
        "committee", help="one committee file from model files trained apart (same elements and cutoff)")
    com.add_argument("models", nargs="+", help="two or more model files")
    com.add_argument("-o", "--output", required=True, help="committee file to write (.pt)")
    com.add_argument("--calibrate", metavar="FILE",
                     help="labelled data held out of every member's training: the committee's "
                          "scale factors (else 1: its raw spread)")
    com.set_defaults(func=run_committee)


def run_committee(args: argparse.Namespace) -> int:
    from mlip.model.io import save_committee

    alpha = (1.0, 1.0)
    try:
        if args.calibrate:
            from torch.utils.data import DataLoader

            from mlip.data.open import ensure_lmdb
            from mlip.data.shards import open_dataset
            from mlip.graph.build import GraphDataset, as_batch_dict, collate
            from mlip.inference.engine import ForceField
            from mlip.training.calibration import calibrate_committee

            engine = ForceField(list(args.models), device="cpu")
            dataset = open_dataset(ensure_lmdb(args.calibrate, None))
            engine.check_elements(sorted(set(dataset.header.get("elements", []))), where=args.calibrate)
            loader = DataLoader(GraphDataset(dataset, engine.cutoff, dtype=engine.dtype), batch_size=20,
                                collate_fn=collate)
            alpha = calibrate_committee(engine, (as_batch_dict(b) for b in loader))
        path = save_committee(args.output, list(args.models), alpha,
                              {"calibrated_on": args.calibrate})
    except (FileNotFoundError, ValueError) as err:
        raise CliError(str(err)) from err
    how = f"calibrated on {args.calibrate}" if args.calibrate else "uncalibrated (alpha 1)"
    print(f"mlip export: wrote {path}: committee of {len(args.models)}, {how}: alpha_E {alpha[0]:.3g}, "
          f"alpha_F {alpha[1]:.3g}")
    return 0


def run_head(args: argparse.Namespace) -> int:
    from mlip.model.heads import export_head

    try:
        path = export_head(args.model, args.head, args.output)
    except (FileNotFoundError, ValueError) as err:
        raise CliError(str(err)) from err
    print(f"mlip export: wrote {path}: head {args.head} of {args.model}")
    return 0


def run_lammps(args: argparse.Namespace) -> int:
    from mlip.integrations.lammps.export import ExportError, export_lammps

    print(f"mlip export: compiling {args.model} for LAMMPS (AOTInductor; a few minutes)",
          file=sys.stderr, flush=True)
    try:
        report = export_lammps(args.model, args.output, dtype=args.dtype, device=args.device,
                               kernel_threads=args.kernel_threads)
    except (FileNotFoundError, ValueError, ExportError) as err:
        raise CliError(str(err)) from err
    meta = report.metadata
    print(f"mlip export: wrote {report.path} in {report.seconds:.0f} s: elements {meta['elements']}, "
          f"cutoff {float(meta['cutoff']):g} A x {meta['hops']} layers, {meta['dtype']}, "
          f"{meta['device']}")
    print(f"  in LAMMPS: pair_style mlip / pair_coeff * * {report.path} {meta['elements']}")
    return 0
