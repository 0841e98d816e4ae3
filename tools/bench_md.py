"""MD speed: steps/s and atom-steps/s through the ASE calculator, with a per-step split.

    python tools/bench_md.py --threads 1 --steps 20 [--model checkpoints/quickstart/model.pt]
    python tools/bench_md.py --threads 1 --compile           # torch.compile'd backbone

Systems: one acac molecule, the 960-atom periodic acac box (shared/data/bench/acac_box64.xyz,
the system of the MACE figures in shared/BASELINES.md) and a 1,000-atom fcc Cu cell. Speed
does not depend on the weights, so without --model a randomly initialised model with the
quickstart architecture is timed (a Cu model for the Cu cell). ASE VelocityVerlet, 0.5 fs,
float32 by default, after warm-up. The split: neighbour list (builds with the 0.5 Å Verlet
skin), model (energy + forces), and everything else (ASE integrator, copies).
The glibc allocator setting is printed; compare with MALLOC_MMAP_MAX_=0
MALLOC_TRIM_THRESHOLD_=100000000000 in the environment.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import ase.io
import numpy as np
import torch
import yaml
from ase import units
from ase.build import bulk
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
from ase.md.verlet import VelocityVerlet

from mlip.calculator import MLIPCalculator
from mlip.model.build import build_potential
from mlip.model.io import load_model

ROOT = Path(__file__).resolve().parents[1]


def quickstart_model(elements: list[int], dtype: torch.dtype):
    config = yaml.safe_load((ROOT / "configs" / "quickstart.yaml").read_text())
    torch.manual_seed(0)
    e0s = [-1.0] * len(elements)
    model = build_potential(config["model"], elements, e0s, 1.0, -1.0, config["data"]["cutoff"], 30.0)
    return model.to(dtype)


def time_md(atoms, model, steps: int, warmup: int, compile_: bool) -> dict:
    calc = MLIPCalculator(model, device="cpu", compile=compile_, min_distance=None)
    timers = {"neighbors": 0.0, "model": 0.0}
    build, forward = calc._build, calc.model.forward

    def timed_build(a):
        t = time.perf_counter()
        build(a)
        timers["neighbors"] += time.perf_counter() - t

    def timed_forward(*args, **kwargs):
        t = time.perf_counter()
        out = forward(*args, **kwargs)
        timers["model"] += time.perf_counter() - t
        return out

    calc._build = timed_build
    calc.model.forward = timed_forward
    atoms = atoms.copy()
    atoms.calc = calc
    MaxwellBoltzmannDistribution(atoms, temperature_K=300, rng=np.random.default_rng(0))
    dyn = VelocityVerlet(atoms, 0.5 * units.fs)
    t = time.perf_counter()
    dyn.run(warmup)
    warm_seconds = time.perf_counter() - t
    timers.update(neighbors=0.0, model=0.0)
    builds0 = calc.num_builds
    t = time.perf_counter()
    dyn.run(steps)
    total = time.perf_counter() - t
    return {"steps_per_s": steps / total, "atom_steps_per_s": steps * len(atoms) / total,
            "ms_neighbors": 1e3 * timers["neighbors"] / steps, "ms_model": 1e3 * timers["model"] / steps,
            "ms_other": 1e3 * (total - timers["neighbors"] - timers["model"]) / steps,
            "builds": calc.num_builds - builds0, "warmup_s": warm_seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description="MD speed benchmark")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=20, help="timed steps (box/Cu: /10)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    parser.add_argument("--model", default=None, help="acac model file (default: random quickstart)")
    parser.add_argument("--compile", action="store_true", help="also time the compiled model")
    parser.add_argument("--systems", default="acac,box,cu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    acac_model = load_model(args.model, dtype=dtype) if args.model else quickstart_model([1, 6, 8], dtype)
    cu_model = quickstart_model([29], dtype)
    box = ROOT.parent / "shared" / "data" / "bench" / "acac_box64.xyz"
    systems = {
        "acac": ("one acac molecule", ase.io.read(ROOT / "data" / "acac" / "train_300K.xyz", 0), acac_model, args.steps),
        "box": ("64 acac, periodic box", ase.io.read(box) if box.is_file() else None, acac_model, max(2, args.steps // 10)),
        "cu": ("fcc Cu 5x5x10, periodic", bulk("Cu", "fcc", a=3.61, cubic=True).repeat((5, 5, 10)), cu_model, max(2, args.steps // 10)),
    }
    env_tuned = os.environ.get("MALLOC_MMAP_MAX_") == "0"
    malloc = ("tuned by environment" if env_tuned else
              "default glibc" if os.environ.get("MLIP_NO_MALLOC_TUNING") else
              "tuned in-process by MLIPCalculator")
    print(f"threads {args.threads}, {args.dtype}, allocator: {malloc}")
    print(f"{'system':<26}{'atoms':>6}{'mode':>9}{'steps/s':>10}{'atom-st/s':>11}"
          f"{'NL ms':>8}{'model ms':>10}{'other ms':>10}{'builds':>7}")
    for key in args.systems.split(","):
        name, atoms, model, steps = systems[key]
        if atoms is None:
            print(f"{name}: structure not found, skipped")
            continue
        modes = [False, True] if args.compile else [False]
        for comp in modes:
            r = time_md(atoms, model, steps, args.warmup, comp)
            print(f"{name:<26}{len(atoms):>6}{'compiled' if comp else 'eager':>9}"
                  f"{r['steps_per_s']:>10.2f}{r['atom_steps_per_s']:>11.0f}{r['ms_neighbors']:>8.1f}"
                  f"{r['ms_model']:>10.1f}{r['ms_other']:>10.1f}{r['builds']:>7}", flush=True)


if __name__ == "__main__":
    main()
