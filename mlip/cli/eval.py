"""`mlip eval MODEL FILE... [--json OUT] [--plots DIR] [--uncertainty]`: held-out errors
per file (MODEL: a model file or a committee file)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mlip.cli.main import CliError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate a model file on held-out data files")
    p.add_argument("model", help="deployable model file (model.pt from mlip train) or committee file")
    p.add_argument("files", nargs="+", help="data files (extxyz, ASE db/traj, or .lmdb)")
    p.add_argument("--json", dest="json_out", help="write the metrics to this JSON file")
    p.add_argument("--plots", help="write parity plots (PNG) into this folder")
    p.add_argument("--equivariance", action="store_true",
                   help="also measure the model's rotation/reflection error on each file")
    p.add_argument("--rotations", type=int, default=10, help="random rotations per structure")
    p.add_argument("--max-structures", type=int, default=20,
                   help="structures per file used for --equivariance")
    p.add_argument("--uncertainty", action="store_true",
                   help="also report how the predicted uncertainty ranks and matches the actual "
                        "errors (Spearman, miscalibration area); with --plots a calibration plot")
    p.add_argument("--batch-size", type=int, default=20)
    p.add_argument("--compile", action="store_true",
                   help="AOTInductor-compiled force path (built once per batch size, cached)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    p.add_argument("--dtype", choices=("float32", "float64"), default=None)
    p.add_argument("--energy-key", default=None)
    p.add_argument("--forces-key", default=None)
    p.add_argument("--stress-key", default=None)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mlip.inference.engine import ForceField
    from mlip.training.evaluate import (
        equivariance_errors,
        evaluate_file,
        format_equivariance,
        format_table,
    )

    try:
        engine = ForceField(args.model, device=args.device, dtype=args.dtype, compile=args.compile)
    except (FileNotFoundError, ValueError) as err:
        raise CliError(str(err)) from err
    if args.uncertainty and not engine.has_uncertainty:
        raise CliError(f"{args.model} has no uncertainty: retrain with training.uncertainty=llpr, "
                       "or evaluate a committee file (mlip train --committee K)")
    mapping = {"energy_key": args.energy_key, "forces_key": args.forces_key,
               "stress_key": args.stress_key}
    results = []
    for path in args.files:
        try:
            results.append(evaluate_file(engine, path, args.batch_size, mapping,
                                         keep_predictions=bool(args.plots),
                                         progress=sys.stderr.isatty(),
                                         uncertainty=args.uncertainty))
        except (FileNotFoundError, ValueError) as err:
            raise CliError(f"{path}: {err}") from err
    print(format_table(results))
    if args.plots:
        from mlip.training.plots import parity_plots

        for r in results:
            for png in parity_plots(r, Path(args.plots)):
                print(f"wrote {png}")
    if args.uncertainty:
        from mlip.training.calibration import calibration_plot, format_metrics

        print(format_metrics(results))
        if args.plots:
            for r in results:
                png = calibration_plot(r["calibration"], Path(args.plots) / f"{Path(r['file']).stem}_calibration.png",
                                       f"{Path(args.model).name} on {Path(r['file']).name}")
                print(f"wrote {png}")
    for r in results:
        r.pop("predictions", None)
        r.pop("calibration", None)
    if args.equivariance:
        symmetry = [equivariance_errors(engine.model, path, args.rotations, args.max_structures,
                                        key_mapping=mapping) for path in args.files]
        print(format_equivariance(symmetry))
        for r, sym in zip(results, symmetry, strict=True):
            r["equivariance"] = {k: sym[k] for k in ("rotation", "reflection", "rotations")}
    if args.json_out:
        Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
        with open(args.json_out, "w") as fh:
            json.dump({"model": args.model, "results": results}, fh, indent=2)
        print(f"wrote {args.json_out}")
    return 0
