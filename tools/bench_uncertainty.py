"""Uncertainty: calibration on held-out files and cost, last-layer estimate (LLPR) against
committees, in one run on one machine.

For every model file (each with its fitted LLPR) and every committee file:
``mlip eval --uncertainty``'s metrics on each test file (Spearman of predicted and actual
per-structure force RMS error, per-atom force error, per-structure energy error;
miscalibration areas; predicted over actual RMS error), and the cost of a force call on
one molecule and on a batch, with and without the uncertainty (called in turn), eager,
median of ``--repeats`` timed calls after warm-up (min-max spread reported):

    python tools/bench_uncertainty.py --models runs/qs_committee/member_*/model.pt \
        --committees runs/qs_committee/committee.pt \
        --tests data/acac/test_MD_300K.xyz data/acac/test_MD_600K.xyz --json out.json
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import ase.io
import numpy as np
import torch


def timed(engines: list, data, repeats: int) -> list[dict]:
    """Median, min and max time of a force call of each engine, the engines called in turn
    (so a load that comes and goes during the run falls on all of them alike)."""
    for engine in engines:
        for _ in range(3):
            engine.evaluate(data)
    times = [[] for _ in engines]
    for _ in range(repeats):
        for k, engine in enumerate(engines):
            t = time.perf_counter()
            engine.evaluate(data)
            times[k].append(time.perf_counter() - t)
    return [{"median_ms": 1000 * float(np.median(t)), "min_ms": 1000 * float(np.min(t)),
             "max_ms": 1000 * float(np.max(t))} for t in times]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="*", default=[])
    p.add_argument("--committees", nargs="*", default=[])
    p.add_argument("--tests", nargs="+", required=True)
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    from mlip.graph.build import atoms_to_batch
    from mlip.inference.engine import ForceField
    from mlip.model.io import load_model
    from mlip.training.evaluate import evaluate_file

    frames = ase.io.read(args.tests[0], ":20")
    results = {"command": "python tools/bench_uncertainty.py " + " ".join(
        f"--{k} {' '.join(v) if isinstance(v, list) else v}" for k, v in vars(args).items() if v),
        "date": time.strftime("%Y-%m-%d"), "threads": args.threads, "entries": []}
    for kind, paths in (("llpr", args.models), ("committee", args.committees)):
        for path in paths:
            engine = ForceField(path, device="cpu")
            entry = {"kind": kind, "model": path, "tests": []}
            for test in args.tests:
                r = evaluate_file(engine, test, 25, progress=False, uncertainty=True)
                r.pop("calibration")
                entry["tests"].append({"file": test, "f_mae": r["f_mae"], "e_mae": r["e_mae"], **r["uncertainty"]})
            dtype = engine.dtype
            one = atoms_to_batch(frames[:1], engine.cutoff, dtype=dtype)
            batch = atoms_to_batch(frames, engine.cutoff, dtype=dtype)
            engines = [engine]
            if kind == "llpr":  # the same weights without the uncertainty, timed in turn
                plain = copy.deepcopy(load_model(path))
                plain.uncertainty = None
                engines.append(ForceField(plain, device="cpu"))
            singles, batches = timed(engines, one, args.repeats), timed(engines, batch, args.repeats)
            entry["cost"] = {"one_molecule": singles[0], "batch_20": batches[0]}
            if kind == "llpr":
                entry["cost_without"] = {"one_molecule": singles[1], "batch_20": batches[1]}
            results["entries"].append(entry)
            print(f"{kind:<10} {Path(path).parent.name}/{Path(path).name}", flush=True)
            for t in entry["tests"]:
                print(f"    {Path(t['file']).name:<20} F MAE {t['f_mae']:7.2f}  rho F/str "
                      f"{t['spearman_forces_structure']:.3f}  rho F/atom {t['spearman_forces_atom']:.3f}  "
                      f"rho E {t['spearman_energy']:.3f}  miscal F {t['miscalibration_forces']:.3f}  "
                      f"miscal E {t['miscalibration_energy']:.3f}  u/err F {t['rms_ratio_forces']:.2f}")
            c = entry["cost"]
            line = f"    cost: one molecule {c['one_molecule']['median_ms']:.2f} ms, batch of 20 {c['batch_20']['median_ms']:.2f} ms"
            if "cost_without" in entry:
                w = entry["cost_without"]
                line += (f"; without uncertainty {w['one_molecule']['median_ms']:.2f} / {w['batch_20']['median_ms']:.2f} ms "
                         f"(x{c['one_molecule']['median_ms'] / w['one_molecule']['median_ms']:.2f} / "
                         f"x{c['batch_20']['median_ms'] / w['batch_20']['median_ms']:.2f})")
            print(line, flush=True)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
