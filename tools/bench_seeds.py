"""Accuracy over seeds at equal wall time: an mlip config against the MACE baseline recipe.

For each seed, mlip (tools/bench_train.py) and MACE (tools/bench_mace.py, in its own venv)
start at the same moment, each pinned to its own core with ``taskset`` and one thread. mlip
trains for ``--minutes`` of wall time; MACE trains the epoch count that fits the same time
(``--mace-epochs``, by default ``--minutes`` over ``--mace-epoch-seconds``, so that its
second stage starts at the same fraction of the budget). Both are then evaluated on the
test files of the mlip config. Written to ``--out``: ``seeds.json`` (every run's figures,
mean and sample standard deviation over seeds) and ``seeds.md`` (the tables):

    python tools/bench_seeds.py --config configs/acac_bench_gaunt_l3.yaml --seeds 0 1 2 \
        --minutes 20 --mace-venv ~/mace-venv --out runs/seeds_gaunt_l3

Run it alone on the machine: the pairs share the two cores and nothing else should. mlip
stops at the budget while MACE trains a fixed epoch count, so other load on the machine
costs mlip epochs and gives MACE more time; the tables list both models' epochs and minutes.
``--no-mace`` trains mlip alone (its seeds one after the other, on the first core).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
METRICS = ("e_mae", "e_rmse", "f_mae", "f_rmse")


def mean_std(values: list[float]) -> dict[str, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    vals = [v for v in values if v is not None and math.isfinite(v)]
    if not vals:
        return {"mean": float("nan"), "std": float("nan"), "n": 0}
    std = statistics.stdev(vals) if len(vals) > 1 else 0.0
    return {"mean": statistics.fmean(vals), "std": std, "n": len(vals)}


def taskset(core: str | None) -> list[str]:
    return ["taskset", "-c", core] if core is not None and shutil.which("taskset") else []


def mlip_command(args: argparse.Namespace, seed: int, out: Path) -> list[str]:
    return [*taskset(args.cores[0]), sys.executable, str(ROOT / "tools" / "bench_train.py"),
            "--config", args.config, "--threads", "1",
            "--max-time", f"00:{args.minutes // 60:02d}:{args.minutes % 60:02d}:00",
            "--run-name", f"mlip_seed{seed}",
            "--out", str(out / f"mlip_seed{seed}.json"),
            f"seed={seed}", f"output_dir={out}", *args.overrides]


def mace_command(args: argparse.Namespace, seed: int, out: Path, data: dict) -> list[str]:
    tests = data["test"] if isinstance(data["test"], list) else [data["test"]]
    return [*taskset(args.cores[1]), sys.executable, str(ROOT / "tools" / "bench_mace.py"),
            "--mace-venv", args.mace_venv, "--train", data["train"], "--e0s", data["e0s"],
            "--val-size", str(data["val_size"]), "--seed", str(seed),
            "--epochs", str(args.mace_epochs), "--threads", "1",
            "--out", str(out / f"mace_seed{seed}"), "--test", *tests]


def run_pair(args: argparse.Namespace, seed: int, out: Path, data: dict) -> dict:
    """Start mlip and MACE together for one seed; wait for both; return their figures."""
    procs = {}
    logs = {}
    for name, cmd in [("mlip", mlip_command(args, seed, out)),
                      ("mace", mace_command(args, seed, out, data) if args.mace_venv else None)]:
        if cmd is None:
            continue
        logs[name] = open(out / f"{name}_seed{seed}.log", "w")  # noqa: SIM115 - closed below
        logs[name].write(" ".join(cmd) + "\n")
        logs[name].flush()
        procs[name] = subprocess.Popen(cmd, stdout=logs[name], stderr=subprocess.STDOUT, cwd=ROOT,
                                       env={**os.environ, "OMP_NUM_THREADS": "1",
                                            "PYTHONUNBUFFERED": "1"})
    t0 = time.time()
    while any(p.poll() is None for p in procs.values()):
        time.sleep(15)
        running = [n for n, p in procs.items() if p.poll() is None]
        print(f"  seed {seed}: {time.time() - t0:6.0f} s, running: {', '.join(running)}", flush=True)
    for fh in logs.values():
        fh.close()
    failed = [n for n, p in procs.items() if p.returncode != 0]
    if failed:
        raise SystemExit(f"seed {seed}: {', '.join(failed)} failed; see "
                         + ", ".join(str(out / f'{n}_seed{seed}.log') for n in failed))
    row: dict = {"seed": seed}
    m = json.loads((out / f"mlip_seed{seed}.json").read_text())
    row["mlip"] = {"epochs": m["epochs"], "train_seconds": m["fit_seconds"],
                   "parameters": m["parameters"],
                   "test": {Path(r["file"]).name: {k: r[k] for k in METRICS} for r in m["test"]}}
    if "mace" in procs:
        c = json.loads((out / f"mace_seed{seed}" / "bench.json").read_text())
        row["mace"] = {"epochs": c["epochs"], "train_seconds": c["train_seconds"],
                       "test": {Path(r["file"]).name: {k: r[k] for k in METRICS} for r in c["test"]}}
    return row


def summarize(rows: list[dict]) -> dict:
    """Mean and spread per model, test file and metric; ratios mlip / MACE per seed."""
    summary: dict = {}
    for model in ("mlip", "mace"):
        if not all(model in r for r in rows):
            continue
        files = rows[0][model]["test"].keys()
        summary[model] = {
            "epochs": mean_std([r[model]["epochs"] for r in rows]),
            "train_seconds": mean_std([r[model]["train_seconds"] for r in rows]),
            "test": {f: {k: mean_std([r[model]["test"][f][k] for r in rows]) for k in METRICS}
                     for f in files},
        }
    if "mlip" in summary and "mace" in summary:
        summary["ratio"] = {
            f: {k: mean_std([r["mlip"]["test"][f][k] / r["mace"]["test"][f][k] for r in rows])
                for k in METRICS}
            for f in summary["mlip"]["test"]
        }
    return summary


def fmt(s: dict, digits: int = 2) -> str:
    return f"{s['mean']:.{digits}f} ± {s['std']:.{digits}f}"


def markdown(rows: list[dict], summary: dict, meta: dict) -> str:
    lines = [f"Config `{meta['config']}`, seeds {meta['seeds']}, {meta['minutes']} min wall time "
             f"each, 1 thread, one core per model, started {meta['started']} on {meta['host']}. "
             "Energies: total-energy MAE/RMSE [meV]; forces: component MAE/RMSE [meV/Å]. "
             "Mean ± sample standard deviation over seeds.", ""]
    files = list(summary["mlip"]["test"])
    models = [m for m in ("mlip", "mace") if m in summary]
    lines += ["| model | test file | E MAE | F MAE | F RMSE | epochs | train min |",
              "|---|---|---|---|---|---|---|"]
    for m in models:
        for f in files:
            t = summary[m]["test"][f]
            lines.append(f"| {m} | {f} | {fmt(t['e_mae'])} | {fmt(t['f_mae'])} | {fmt(t['f_rmse'])} "
                         f"| {fmt(summary[m]['epochs'], 0)} "
                         f"| {summary[m]['train_seconds']['mean'] / 60:.1f} |")
    if "ratio" in summary:
        lines += ["", "mlip / MACE, per seed then mean ± std:", "",
                  "| test file | E MAE | F MAE | F RMSE |", "|---|---|---|---|"]
        for f in files:
            r = summary["ratio"][f]
            lines.append(f"| {f} | {fmt(r['e_mae'])} | {fmt(r['f_mae'])} | {fmt(r['f_rmse'])} |")
    lines += ["", "Per seed (train min: the wall time each model trained; mlip stops at the budget, "
              "MACE trains its epoch count, so on a loaded machine MACE trains longer):", "",
              "| seed | model | test file | E MAE | F MAE | F RMSE | epochs | train min |",
              "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        for m in models:
            for f in files:
                t = r[m]["test"][f]
                lines.append(f"| {r['seed']} | {m} | {f} | {t['e_mae']:.2f} | {t['f_mae']:.2f} "
                             f"| {t['f_rmse']:.2f} | {r[m]['epochs']} "
                             f"| {r[m]['train_seconds'] / 60:.1f} |")
    return "\n".join(lines) + "\n"


def rewrite(out: Path) -> None:
    """Write ``seeds.md`` again from ``seeds.json`` (``--report``)."""
    data = json.loads((out / "seeds.json").read_text())
    (out / "seeds.md").write_text(markdown(data["runs"], summarize(data["runs"]), data["meta"]))
    print((out / "seeds.md").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="mlip run config")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--minutes", type=int, default=46, help="wall time per model and seed")
    parser.add_argument("--mace-venv", default=os.environ.get("MACE_VENV"),
                        help="venv with mace-torch (default $MACE_VENV)")
    parser.add_argument("--no-mace", action="store_true", help="mlip only")
    parser.add_argument("--mace-epochs", type=int, default=None,
                        help="MACE epochs (default: --minutes over --mace-epoch-seconds)")
    parser.add_argument("--mace-epoch-seconds", type=float, default=22.5,
                        help="one MACE epoch with validation on one core beside a running mlip "
                             "(22-23 s on the 2-core CI machine kind, 2026-12-07)")
    parser.add_argument("--cores", default="0,1", help="cores for mlip and MACE")
    parser.add_argument("--out", default="runs/seeds")
    parser.add_argument("--report", action="store_true",
                        help="only write the tables again from --out's seeds.json")
    parser.add_argument("overrides", nargs="*", help="dotted overrides for the mlip config")
    args = parser.parse_args()
    if args.report:
        rewrite(Path(args.out))
        return
    if not args.config:
        parser.error("give --config")
    args.cores = args.cores.split(",")
    if args.no_mace:
        args.mace_venv = None
    elif not args.mace_venv:
        parser.error("give --mace-venv (or $MACE_VENV), or --no-mace")
    if args.mace_epochs is None:
        args.mace_epochs = max(1, round(args.minutes * 60 / args.mace_epoch_seconds))
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    cfg = yaml.safe_load(Path(args.config).read_text())
    data = {k: cfg["data"].get(k) for k in ("train", "e0s", "val_size", "test")}
    if args.mace_venv and not (isinstance(data["train"], str) and data["val_size"]):
        parser.error("the MACE baseline needs data.train as one file and data.val_size in the config")
    meta = {"config": args.config, "seeds": args.seeds, "minutes": args.minutes,
            "mace_epochs": args.mace_epochs if args.mace_venv else None,
            "overrides": args.overrides, "host": os.uname().nodename,
            "started": time.strftime("%Y-%m-%d %H:%M")}
    rows = []
    for seed in args.seeds:
        print(f"seed {seed}: mlip {args.minutes} min"
              + (f" and MACE {args.mace_epochs} epochs, started together" if args.mace_venv else ""),
              flush=True)
        rows.append(run_pair(args, seed, out, data))
        summary = summarize(rows)
        (out / "seeds.json").write_text(json.dumps({"meta": meta, "runs": rows, "summary": summary},
                                                   indent=2))
        (out / "seeds.md").write_text(markdown(rows, summary, meta))
    print((out / "seeds.md").read_text())
    print(f"wrote {out / 'seeds.json'} and {out / 'seeds.md'}")


if __name__ == "__main__":
    main()
