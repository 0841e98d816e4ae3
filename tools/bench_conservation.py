"""NVE energy conservation and a memory soak through the ASE calculator.

    # 10 ps of one acac molecule in float64 (the benchmark model)
    python tools/bench_conservation.py --model checkpoints/acac_bench_gaunt/model.pt \
        --structure data/acac/test_MD_300K.xyz --dtype float64 --ps 10
    # 2 ps of the 960-atom box in float32
    python tools/bench_conservation.py --model checkpoints/acac_bench_gaunt/model.pt \
        --structure ../shared/data/bench/acac_box64.xyz --dtype float32 --ps 2
    # 100,000 steps, resident memory sampled every 10,000
    python tools/bench_conservation.py --model ... --structure data/acac/test_MD_300K.xyz \
        --steps 100000 --rss-every 10000

ASE VelocityVerlet with the mlip calculator, Maxwell-Boltzmann start at --temperature
(seeded, no net momentum or rotation), total energy logged every --log-every steps. Drift
figures per atom: the largest excursion max|E(t) - E(0)| and the linear-fit drift (slope
times the run length). A run that blows up (the calculator's too-close or non-finite
guards) is reported with the step where it did, and the figures cover the steps before.
Resident memory (VmRSS of this process) is read from /proc every --rss-every steps after
the first block (allocator warm-up). Prints a table and writes JSON.

``--mace`` runs the same loop with mace-torch's MACECalculator (``--model`` is then a MACE
model file); start it with the MACE venv's python (mace-torch pins e3nn 0.4.4), with glibc
malloc tuned through the environment as in ../shared/BASELINES.md:

    MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=100000000000 <mace venv>/bin/python \
        tools/bench_conservation.py --mace --model <mace>.model --structure box.xyz --dtype float32 --ps 2

Besides the total energy it reports how far the potential energy moved (mean of the last
tenth of the run minus the start, meV/atom: a model that releases energy heats in NVE) and
the closest pair at the end.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import ase.io
import numpy as np
import torch
from ase import units
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary, ZeroRotation
from ase.md.verlet import VelocityVerlet
from tqdm import tqdm


class BlewUp(RuntimeError):
    """Non-finite energy from a calculator without guards of its own (MACE)."""


def rss_mb() -> float:
    """Resident set size of this process [MB] (Linux /proc)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def calculator(args: argparse.Namespace):
    """The calculator under test and the exceptions that mean "the run blew up"."""
    if args.mace:
        from mace.calculators import MACECalculator
        return MACECalculator(model_paths=args.model, device=args.device,
                              default_dtype=args.dtype), (BlewUp,)
    from mlip.calculator import AtomsTooCloseError, MLIPCalculator, NonFiniteOutputError
    from mlip.cli.allocator import tune_glibc_malloc
    from mlip.model.io import load_model

    if not args.no_malloc_tuning:
        tune_glibc_malloc()  # as `mlip md` does for its own process
    model = load_model(args.model, dtype=getattr(torch, args.dtype))
    calc = MLIPCalculator(model, device=args.device, dtype=args.dtype)
    return calc, (AtomsTooCloseError, NonFiniteOutputError, BlewUp)


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    atoms = ase.io.read(args.structure, args.frame)
    atoms.calc, blew_up = calculator(args)
    MaxwellBoltzmannDistribution(atoms, temperature_K=args.temperature,
                                 rng=np.random.default_rng(args.seed))
    Stationary(atoms)
    if not atoms.pbc.any():
        ZeroRotation(atoms)
    steps = args.steps if args.steps else int(round(args.ps * 1000 / args.timestep))
    dyn = VelocityVerlet(atoms, args.timestep * units.fs)
    n = len(atoms)
    times, etot, epots, temps, rss = [], [], [], [], []

    def record() -> None:
        epot, ekin = atoms.get_potential_energy(), atoms.get_kinetic_energy()
        if not np.isfinite(epot):
            raise BlewUp(f"non-finite energy {epot} at step {dyn.nsteps}")
        times.append(dyn.nsteps * args.timestep / 1000.0)
        etot.append(epot + ekin)
        epots.append(epot)
        temps.append(ekin / (1.5 * units.kB * n))

    record()
    t0 = time.perf_counter()
    failure = None
    with tqdm(total=steps, desc=f"NVE {n} atoms", unit=" steps", mininterval=2) as bar:
        done = 0
        while done < steps:
            block = min(args.log_every, steps - done)
            try:
                dyn.run(block)
                record()
            except blew_up as err:  # the run blew up
                failure = {"step": dyn.nsteps, "ps": dyn.nsteps * args.timestep / 1000.0,
                           "error": " ".join(str(err).split())}
                break
            done += block
            bar.update(block)
            if args.max_minutes and time.perf_counter() - t0 > 60 * args.max_minutes:
                failure = {"step": dyn.nsteps, "ps": dyn.nsteps * args.timestep / 1000.0,
                           "error": f"stopped: --max-minutes {args.max_minutes:g} reached"}
                break
            if args.rss_every and done % args.rss_every == 0:
                rss.append((done, rss_mb()))
    seconds = time.perf_counter() - t0
    steps = done
    e = np.asarray(etot)
    t = np.asarray(times)
    slope = np.polyfit(t, e, 1)[0] if len(t) > 2 else float("nan")  # eV/ps
    out = {
        "model": args.model, "structure": args.structure, "atoms": n, "dtype": args.dtype,
        "timestep_fs": args.timestep, "steps": steps, "ps": steps * args.timestep / 1000.0,
        "seconds": seconds, "steps_per_second": steps / seconds,
        "max_excursion_meV_per_atom": 1000 * float(np.abs(e - e[0]).max()) / n,
        "fit_drift_meV_per_atom": 1000 * float(slope * t[-1]) / n,
        "epot_change_meV_per_atom": 1000 * float(
            np.mean(epots[-max(1, len(epots) // 10):]) - epots[0]) / n,
        "temperature_K": {"mean": float(np.mean(temps)), "min": float(np.min(temps)),
                          "max": float(np.max(temps))},
        "rss_mb": rss,
        "rss_growth_mb": (rss[-1][1] - rss[0][1]) if len(rss) > 1 else None,
        "failure": failure,
        "min_distance_end_A": float(np.min(atoms.get_all_distances(mic=True)[
            np.triu_indices(n, 1)])) if n <= 3000 else None,
    }
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True)
    p.add_argument("--mace", action="store_true",
                   help="--model is a mace-torch model (run with the MACE venv's python)")
    p.add_argument("--structure", required=True)
    p.add_argument("--frame", type=int, default=0)
    p.add_argument("--dtype", choices=["float32", "float64"], default="float64")
    p.add_argument("--device", default="cpu")
    p.add_argument("--temperature", type=float, default=300.0)
    p.add_argument("--timestep", type=float, default=0.5, help="fs")
    p.add_argument("--ps", type=float, default=10.0, help="run length [ps] (unless --steps)")
    p.add_argument("--steps", type=int, default=0)
    p.add_argument("--log-every", type=int, default=20)
    p.add_argument("--rss-every", type=int, default=0, help="sample VmRSS every N steps")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-minutes", type=float, default=0.0,
                   help="stop (and report) after this much wall time")
    p.add_argument("--no-malloc-tuning", action="store_true")
    p.add_argument("--out", help="JSON output")
    args = p.parse_args()
    if args.rss_every and args.rss_every % args.log_every:
        p.error("--rss-every must be a multiple of --log-every")
    out = run(args)
    print(f"{out['atoms']} atoms, {out['dtype']}, {out['steps']} steps of {args.timestep} fs "
          f"({out['ps']:.2f} ps) in {out['seconds']:.0f} s ({out['steps_per_second']:.1f} steps/s)")
    print(f"total energy: max excursion {out['max_excursion_meV_per_atom']:.4f} meV/atom, "
          f"linear-fit drift {out['fit_drift_meV_per_atom']:+.4f} meV/atom over the run; "
          f"T {out['temperature_K']['min']:.0f}-{out['temperature_K']['max']:.0f} K "
          f"(mean {out['temperature_K']['mean']:.0f}); potential energy moved "
          f"{out['epot_change_meV_per_atom']:+.2f} meV/atom (last tenth vs start); closest pair "
          f"at the end {out['min_distance_end_A'] or float('nan'):.3f} Å")
    if out["failure"]:
        print(f"STOPPED at step {out['failure']['step']} ({out['failure']['ps']:.3f} ps): "
              f"{out['failure']['error']}; figures above cover the steps before it")
    if out["rss_mb"]:
        print("RSS [MB] by step: " + ", ".join(f"{s}: {m:.1f}" for s, m in out["rss_mb"]))
        print(f"RSS growth first -> last sample: {out['rss_growth_mb']:+.1f} MB")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(out, indent=2))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
