"""Active learning against random selection on a GFN2-xTB acac system (``mlip learn``).

Prepares, from the bundled acac geometries relabelled with GFN2-xTB (tblite, neutral
singlet; free atoms in their Hund's-rule multiplicities for the E0s):

* ``initial.xyz``: ``--initial`` frames of data/acac/train_300K.xyz (300 K DFT MD geometries);
* ``test_600K.xyz``: ``--test`` frames of data/acac/test_MD_600K.xyz (600 K, a higher
  temperature than the starting data);
* ``isolated_atoms.xyz``: the xTB free-atom energies;

then runs the loop twice on them, once selecting by uncertainty and once at random (same
MD candidates source, same rounds, same labels per round, same training), each in its own
process with one thread, both at once, from one shared round-0 model (trained once, copied),
and prints the test force MAE after every round:

    python tools/bench_active_learning.py --out runs/al_bench --rounds 4 --per-round 10 \
        --round-epochs 300 --max-uncertainty 1.0

Rounds train for ``--round-epochs`` epochs (deterministic on one thread), or for
``--round-time`` when given (then contention changes what a round reaches).

Writes ``<out>/comparison.json`` (rounds, labels, errors, calibration of both loops).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import ase
import ase.io
import numpy as np
import yaml
from ase.calculators.singlepoint import SinglePointCalculator

ROOT = Path(__file__).resolve().parents[1]
MULTIPLICITY = {1: 2, 6: 3, 8: 3}  # free atoms (Hund's rules)


def xtb(multiplicity: int = 1):
    from tblite.ase import TBLite

    return TBLite(method="GFN2-xTB", accuracy=1.0, electronic_temperature=300.0, charge=0,
                  multiplicity=multiplicity, verbosity=0)


def relabel(frames: list[ase.Atoms]) -> list[ase.Atoms]:
    calc = xtb()
    out = []
    for a in frames:
        b = ase.Atoms(numbers=a.numbers, positions=a.positions)
        b.calc = calc
        e, f = b.get_potential_energy(), b.get_forces()
        b.calc = SinglePointCalculator(b, energy=e, forces=f)
        out.append(b)
    return out


def prepare(out: Path, initial: int, test: int, seed: int) -> None:
    data = out / "data"
    if (data / "test_600K.xyz").exists():
        return
    data.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    train = ase.io.read(ROOT / "data/acac/train_300K.xyz", ":")
    hot = ase.io.read(ROOT / "data/acac/test_MD_600K.xyz", ":")
    ase.io.write(data / "initial.xyz", relabel([train[int(k)] for k in rng.choice(len(train), initial, replace=False)]))
    ase.io.write(data / "test_600K.xyz", relabel([hot[int(k)] for k in np.sort(rng.choice(len(hot), test, replace=False))]))
    atoms = []
    for z, mult in MULTIPLICITY.items():
        a = ase.Atoms(numbers=[z])
        a.calc = xtb(mult)
        a.calc = SinglePointCalculator(a, energy=a.get_potential_energy(), forces=np.zeros((1, 3)))
        a.info["config_type"] = "isolated_atom"
        atoms.append(a)
    ase.io.write(data / "isolated_atoms.xyz", atoms)


def loop_config(out: Path, selection: str, args: argparse.Namespace) -> Path:
    data = out / "data"
    config = {
        "run_dir": str(out / selection), "train_config": str(ROOT / "configs/quickstart.yaml"),
        "overrides": [f"data.e0s={data / 'isolated_atoms.xyz'}", "data.test=[]", "data.val_size=null",
                      "data.val_fraction=0.2", "training.trainer.threads=1",
                      "training.trainer.enable_progress_bar=false",
                      *([f"training.schedule.max_time={args.round_time}", "training.schedule.max_epochs=100000"]
                        if args.round_time else [f"training.schedule.max_epochs={args.round_epochs}",
                                                 "training.schedule.max_time=null"])],
        "initial": str(data / "initial.xyz"), "test": [str(data / "test_600K.xyz")],
        "rounds": args.rounds, "per_round": args.per_round, "selection": selection, "seed": args.seed,
        "sampling": {"temperature": args.temperature, "steps": args.steps, "interval": args.interval,
                     "starts": args.starts, "max_uncertainty": args.max_uncertainty},
    }
    path = out / f"{selection}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def plot(comparison: dict, path: Path) -> None:
    """Test force MAE against labels, one line per selection (needs matplotlib)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.8, 3.6), dpi=120)
    for selection, rounds in comparison["loops"].items():
        ax.plot([r["labels"] for r in rounds], [r["f_mae"] for r in rounds], "o-", label=selection)
    ax.set_xlabel("labelled frames")
    ax.set_ylabel("600 K test force MAE [meV/Å]")
    ax.set_title("active learning on GFN2-xTB acac", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/al_bench")
    p.add_argument("--initial", type=int, default=20)
    p.add_argument("--test", type=int, default=200)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--per-round", type=int, default=10)
    p.add_argument("--round-epochs", type=int, default=300, help="training epochs per round")
    p.add_argument("--round-time", default=None, help="instead: training time per round (DD:HH:MM:SS)")
    p.add_argument("--temperature", type=float, default=600.0, help="MD sampling temperature [K]")
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--interval", type=int, default=10)
    p.add_argument("--starts", type=int, default=4)
    p.add_argument("--max-uncertainty", type=float, default=None,
                   help="eV/Å: an MD run stops at the first frame above it (kept)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--selections", nargs="+", default=["uncertainty", "random"])
    args = p.parse_args()
    out = Path(args.out).resolve()
    t0 = time.time()
    prepare(out, args.initial, args.test, args.seed)
    print(f"bench_active_learning: data ready in {time.time() - t0:.0f} s ({out / 'data'})", flush=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    configs = {selection: loop_config(out, selection, args) for selection in args.selections}
    first = args.selections[0]
    if not (out / first / "round_00" / "metrics.json").exists():  # the shared round 0
        subprocess.run([sys.executable, "-m", "mlip", "learn", "--config", str(configs[first]), "rounds=0"],
                       stdout=open(out / "round0.log", "a"), stderr=subprocess.STDOUT, env=env, cwd=ROOT,  # noqa: SIM115
                       check=True)
    for selection in args.selections[1:]:
        if not (out / selection / "round_00").exists():
            (out / selection / "models").mkdir(parents=True, exist_ok=True)
            shutil.copytree(out / first / "round_00", out / selection / "round_00")
            shutil.copytree(out / first / "models" / "round_00", out / selection / "models" / "round_00")
    procs = {}
    for selection in args.selections:
        cfg = configs[selection]
        log = open(out / f"{selection}.log", "a")  # noqa: SIM115 - closed below
        procs[selection] = (subprocess.Popen([sys.executable, "-m", "mlip", "learn", "--config", str(cfg)],
                                             stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT), log)
    failed = []
    for selection, (proc, log) in procs.items():
        if proc.wait() != 0:
            failed.append(selection)
        log.close()
    if failed:
        raise SystemExit(f"bench_active_learning: the {', '.join(failed)} loop(s) failed: see {out}/*.log")
    comparison = {"command": " ".join(sys.argv), "seconds": time.time() - t0, "loops": {}}
    print(f"{'round':>5}" + "".join(f"{s + ' labels':>20}{s + ' F MAE':>20}" for s in args.selections))
    summaries = {s: json.loads((out / s / "summary.json").read_text()) for s in args.selections}
    for r in range(args.rounds + 1):
        row = f"{r:>5}"
        for s in args.selections:
            rec = summaries[s]["rounds"][r]
            row += f"{rec['labels']:>20}{rec['test'][0]['f_mae']:>20.2f}"
        print(row)
    for s in args.selections:
        comparison["loops"][s] = [{"round": rec["round"], "labels": rec["labels"], "failures": rec.get("failures", 0),
                                   "f_mae": rec["test"][0]["f_mae"], "e_mae": rec["test"][0]["e_mae"],
                                   "uncertainty": rec["test"][0].get("uncertainty"), "sampling": rec.get("sampling")}
                                  for rec in summaries[s]["rounds"]]
    (out / "comparison.json").write_text(json.dumps(comparison, indent=2))
    plot(comparison, out / "comparison.png")
    print(f"bench_active_learning: wrote {out / 'comparison.json'} ({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
