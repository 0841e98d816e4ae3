"""MD speed: steps/s and atom-steps/s through the ASE calculator, with a per-step split.

    python tools/bench_md.py --threads 1,2 --modes eager,aot,inductor
    MLIP_NO_MALLOC_TUNING=1 python tools/bench_md.py --threads 1      # glibc default malloc

Systems: one acac molecule (15 atoms), the 960-atom periodic acac box
(shared/data/bench/acac_box64.xyz, the system of the MACE figures in shared/BASELINES.md),
a 1,000-atom fcc Cu cell (5x5x10 cubic cells at the EMT lattice constant, rattled), and
K acac replicas in one batched call per step (``mlip md --replicas``). Models have the
architecture of configs/quickstart.yaml (or of --config); speed does not depend on the weights, but so that
the dynamics is physical (neighbour-list rebuilds happen at the real rate) each model is
first trained briefly (--train-steps Adam steps) on acac/train_300K.xyz or cu_emt/train.xyz,
or given with --acac-model / --cu-model. ASE VelocityVerlet, 0.5 fs, 300 K start, after
warm-up (which includes compilation). The split per step: neighbour list (Verlet-skin
rebuilds, position upload, cutoff mask), model (energy + forces (+ stress for periodic
cells), download), and everything else (ASE integrator, Atoms copies, Python).

Every backbone: ``--config`` takes several run configs (each gives briefly trained acac and
Cu models of its architecture), ``--acac-model`` several trained files. MACE in the same run:
``--mace-model`` (and ``--mace-cu-model`` for the Cu cell) with ``--mace-venv`` times
mace-torch's MACECalculator through the same ASE loop, same system, steps, threads, dtype and
malloc settings, in a subprocess of its own venv (mace-torch pins e3nn 0.4.4), one after the
other with nothing else running, in each of ``--mace-modes`` (eager, and compiled:
``MACECalculator(compile_mode="default")``, torch.compile with inductor; a mode that fails
gets a row saying why). Every mlip row then gets its ratio to the fastest MACE mode measured
on that system in atom-steps/s (for the batched replicas, against MACE on one molecule).
Each row is the mean ± sample standard deviation over ``--repeats`` timed segments:

    python tools/bench_md.py --threads 1 --modes eager,aot --systems acac,box \
        --acac-model runs/seeds_gaunt_l3/mlip_seed0/model.pt \
        --mace-model runs/seeds_gaunt_l3/mace_seed0/mace_stagetwo.model \
        --mace-venv <mace venv> --json md.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import tempfile
import time
from pathlib import Path

import ase
import ase.io
import numpy as np
import torch
from ase import units
from ase.build import bulk
from ase.md.velocitydistribution import thermalize_momenta
from ase.md.verlet import VelocityVerlet

from mlip.calculator import MLIPCalculator
from mlip.cli.allocator import tune_glibc_malloc
from mlip.data.structure import Structure
from mlip.graph.build import atoms_to_batch
from mlip.graph.stats import shortest_pair_distances
from mlip.md.ase_driver import MDSettings
from mlip.md.replicas import run_replicas
from mlip.model.build import ModelStatistics, build_model
from mlip.model.io import load_model
from mlip.training.config import load_config
from mlip.training.metrics import weighted_loss

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


def quickstart_model(frames: list[ase.Atoms], isolated: list[ase.Atoms], steps: int,
                     config_file: Path | None = None) -> torch.nn.Module:
    """The quickstart architecture (or that of ``config_file``), trained ``steps`` Adam steps
    on ``frames`` (float32).

    E0s are the isolated-atom energies plus the frames' mean interaction energy per atom
    and the shift is 0: a briefly trained model is then MD-stable (see tests/md/conftest.py).
    """
    config = load_config(config_file or ROOT / "configs" / "quickstart.yaml")
    e_iso = {int(a.numbers[0]): a.get_potential_energy() for a in isolated}
    elements = sorted({int(z) for a in frames for z in a.numbers})
    inter = np.mean([(a.get_potential_energy() - sum(e_iso[int(z)] for z in a.numbers)) / len(a)
                     for a in frames])
    torch.manual_seed(0)
    structures = [Structure(numbers=a.numbers, positions=a.positions, cell=a.cell.array, pbc=a.pbc)
                  for a in frames]
    cutoff = config["data"]["cutoff"]
    pairs = {f"{a}-{b}": d for (a, b), d in shortest_pair_distances(structures, cutoff).items()}
    statistics = ModelStatistics(tuple(elements), tuple(e_iso[z] + inter for z in elements), 1.0, 0.0,
                                 cutoff, 12.0, pairs)
    model = build_model({**config["model"], "dtype": "float32"}, statistics)
    batches = [atoms_to_batch(frames[k:k + 2], model.cutoff, dtype=torch.float32)
               for k in range(0, len(frames), 2)]
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for step in range(steps):
        data = batches[step % len(batches)]
        opt.zero_grad()
        weighted_loss(model(data, training=True), data, 10.0, 100.0, 0.0)["loss"].backward()
        opt.step()
    return model.eval()


def copper_cell() -> ase.Atoms:
    atoms = bulk("Cu", "fcc", a=3.5898, cubic=True).repeat((5, 5, 10))  # 1,000 atoms
    atoms.rattle(0.05, seed=0)
    return atoms


def compile_figures(calc: MLIPCalculator, model, atoms: ase.Atoms) -> dict:
    """Compile time of the calculator's AOT packages, and the time a new calculator of the
    same model takes to load them from the cache (``load_seconds`` of its packages)."""
    packages = [p for p in calc.compiled.packages.values() if p is not None] if calc.compiled else []
    if not packages:
        return {"compile_s": float("nan"), "load_s": float("nan")}
    fresh = MLIPCalculator(model, device="cpu", compile="aot")
    a = atoms.copy()
    a.calc = fresh
    a.get_forces()
    loaded = [p for p in fresh.compiled.packages.values() if p is not None]
    return {"compile_s": sum(p.compile_seconds for p in packages),
            "load_s": sum(p.load_seconds for p in loaded) if loaded and all(p.from_cache for p in loaded)
            else float("nan")}


def bench_calculator(model, mode: str) -> MLIPCalculator:
    """A CPU calculator for a mode: eager | aot | inductor, "+fixed" for the fixed-shape
    neighbour list (the inputs of CUDA graphs: unfiltered cutoff + skin edges, padded)."""
    compile_, _, fixed = mode.partition("+")
    return MLIPCalculator(model, device="cpu", compile=compile_, fixed_shapes=fixed == "fixed")


def spread(rates: list[float], n_atoms: int) -> dict:
    """Mean, sample standard deviation, min and max of repeated rates (steps/s)."""
    arr = np.asarray(rates, dtype=float)
    std = float(arr.std(ddof=1)) if len(arr) > 1 else 0.0
    return {"steps_per_s": float(arr.mean()), "steps_per_s_std": std,
            "atom_steps_per_s": float(arr.mean()) * n_atoms,
            "atom_steps_per_s_std": std * n_atoms, "repeats": len(arr),
            "steps_per_s_all": [float(x) for x in arr]}


def time_md(atoms: ase.Atoms, model, steps: int, warmup: int, compile_: str,
            repeats: int = 1) -> dict:
    """ASE VelocityVerlet through the calculator: rates over ``repeats`` consecutive timed
    segments of ``steps`` steps after the warm-up, and the per-step split over all of them."""
    calc = bench_calculator(model, compile_)
    atoms = atoms.copy()
    atoms.calc = calc
    thermalize_momenta(atoms, 300, rng=np.random.default_rng(0))
    dyn = VelocityVerlet(atoms, 0.5 * units.fs)
    t = time.perf_counter()
    dyn.run(warmup)
    warmup_s = time.perf_counter() - t
    calc.timings.update(neighbors=0.0, model=0.0, calls=0)
    builds = calc.num_builds
    rates, total = [], 0.0
    for _ in range(repeats):
        t = time.perf_counter()
        dyn.run(steps)
        dt = time.perf_counter() - t
        rates.append(steps / dt)
        total += dt
    n = steps * repeats
    nl, mo = calc.timings["neighbors"], calc.timings["model"]
    return {**spread(rates, len(atoms)),
            "ms_nl": 1e3 * nl / n, "ms_model": 1e3 * mo / n, "ms_other": 1e3 * (total - nl - mo) / n,
            "builds_per_100": 100 * (calc.num_builds - builds) / n, "warmup_s": warmup_s,
            **compile_figures(calc, model, atoms)}


def time_replicas(atoms: ase.Atoms, model, k: int, steps: int, compile_: str,
                  repeats: int = 1) -> dict:
    calc = bench_calculator(model, compile_)
    settings = MDSettings(ensemble="nve", temperature_K=300, timestep_fs=0.5, steps=5, progress=False)
    t = time.perf_counter()
    run_replicas(calc.engine, atoms, settings, k)  # warm-up (and compilation)
    warmup_s = time.perf_counter() - t
    settings.steps = steps
    rates = [run_replicas(calc.engine, atoms, settings, k)["steps_per_second"] for _ in range(repeats)]
    return {**spread(rates, k * len(atoms)), "ms_nl": float("nan"),
            "ms_model": float("nan"), "ms_other": float("nan"),
            "builds_per_100": float("nan"), "warmup_s": warmup_s,
            "compile_s": sum(p.compile_seconds for p in calc.compiled.packages.values() if p is not None)
            if calc.compiled else float("nan"), "load_s": float("nan")}


MACE_TIMER = r"""
import ctypes, json, os, sys, time
import ase.io, numpy as np, torch
from ase import units
from ase.md.velocitydistribution import thermalize_momenta
from ase.md.verlet import VelocityVerlet
from mace.calculators import MACECalculator
if not os.environ.get("MLIP_NO_MALLOC_TUNING"):
    libc = ctypes.CDLL("libc.so.6")
    libc.mallopt(-4, 0)
    libc.mallopt(-1, 2**31 - 1)
model, xyz, steps, warmup, threads, dtype, mode, repeats = sys.argv[1:9]
steps, warmup, repeats = int(steps), int(warmup), int(repeats)
torch.set_num_threads(int(threads))
atoms = ase.io.read(xyz)
extra = {} if mode == "eager" else {"compile_mode": mode}
atoms.calc = MACECalculator(model_paths=model, device="cpu", default_dtype=dtype, **extra)
thermalize_momenta(atoms, 300, rng=np.random.default_rng(0))
dyn = VelocityVerlet(atoms, 0.5 * units.fs)
t = time.perf_counter()
dyn.run(warmup)
warmup_s = time.perf_counter() - t
rates = []
for _ in range(repeats):
    t = time.perf_counter()
    dyn.run(steps)
    rates.append(steps / (time.perf_counter() - t))
print("MACE_RESULT " + json.dumps({"rates": rates, "warmup_s": warmup_s, "atoms": len(atoms)}))
"""

# MACE's modes: its ASE calculator in eager mode, and torch.compile (MACECalculator's
# compile_mode, inductor on the CPU).
MACE_MODES = {"eager": "eager", "compiled": "default"}


def time_mace(venv: str, model: str, atoms: ase.Atoms, steps: int, warmup: int, threads: int,
              dtype: str, mode: str = "eager", repeats: int = 1) -> dict:
    """MACECalculator through the same ASE VelocityVerlet loop, in MACE's own venv; ``mode``
    eager or compiled. A failure is returned as ``{"error": last line of its output}``."""
    with tempfile.TemporaryDirectory() as tmp:
        xyz = Path(tmp) / "start.xyz"
        start = atoms.copy()
        start.calc = None
        ase.io.write(xyz, start, format="extxyz")
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        proc = subprocess.run([f"{venv}/bin/python", "-c", MACE_TIMER, model, str(xyz), str(steps),
                               str(warmup), str(threads), dtype, MACE_MODES[mode], str(repeats)],
                              capture_output=True, text=True, env=env, check=False)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("MACE_RESULT ")]
    if proc.returncode != 0 or not lines:
        if proc.returncode < 0:  # e.g. SIGKILL from the kernel's out-of-memory killer
            return {"error": f"killed by signal {-proc.returncode}"}
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": tail[:200]}
    out = json.loads(lines[-1].removeprefix("MACE_RESULT "))
    return {**spread(out["rates"], out["atoms"]), "warmup_s": out["warmup_s"]}


def allocator_setting() -> str:
    if os.environ.get("MALLOC_MMAP_MAX_") == "0":
        return "glibc tuned by environment (MALLOC_MMAP_MAX_=0)"
    if os.environ.get("MLIP_NO_MALLOC_TUNING"):
        return "glibc default (MLIP_NO_MALLOC_TUNING=1)"
    return "glibc tuned in-process by this tool (no mmap, no trim)"


def fmt(x: float, spec: str) -> str:
    return "-" if x != x else format(x, spec)  # NaN: not measured for this row


def main() -> None:
    tune_glibc_malloc()  # this tool's own process (a no-op with MLIP_NO_MALLOC_TUNING=1)
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", default="1,2", help="comma-separated torch thread counts")
    parser.add_argument("--modes", default="eager,aot",
                        help="comma-separated: eager, aot (AOTInductor package, cached), inductor "
                             "(torch.compile of the backbone); +fixed: the fixed-shape neighbour "
                             "list of CUDA graphs (e.g. aot+fixed)")
    parser.add_argument("--systems", default="acac,box,cu,replicas")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    parser.add_argument("--steps", type=int, default=200, help="timed steps for the molecule")
    parser.add_argument("--large-steps", type=int, default=10, help="timed steps for box and Cu")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--replicas", type=int, default=16)
    parser.add_argument("--train-steps", type=int, default=60)
    parser.add_argument("--acac-model", nargs="*", default=[],
                        help="trained acac model files (default: configs trained briefly)")
    parser.add_argument("--cu-model", default=None,
                        help="trained Cu model for the --acac-model rows (default: Cu skipped for them)")
    parser.add_argument("--config", nargs="*", default=[],
                        help="run configs whose architectures are trained briefly and timed "
                             "(default quickstart.yaml when no --acac-model is given)")
    parser.add_argument("--mace-model", default=None, help="MACE model for the acac systems")
    parser.add_argument("--mace-cu-model", default=None, help="MACE model for the Cu cell")
    parser.add_argument("--mace-venv", default=os.environ.get("MACE_VENV"),
                        help="venv with mace-torch (default $MACE_VENV)")
    parser.add_argument("--mace-modes", default="eager,compiled",
                        help="comma-separated MACE modes: eager, compiled (torch.compile through "
                             "MACECalculator(compile_mode='default'))")
    parser.add_argument("--repeats", type=int, default=3,
                        help="timed segments per row after the warm-up (mean ± std)")
    parser.add_argument("--json", default=None, help="also write every row as JSON here")
    args = parser.parse_args()
    if (args.mace_model or args.mace_cu_model) and not args.mace_venv:
        parser.error("--mace-model needs --mace-venv (or $MACE_VENV): MACE runs in its own venv")
    dtype = getattr(torch, args.dtype)
    wanted = args.systems.split(",")
    acac_path = ROOT / "data" / "acac"
    torch.set_num_threads(2)
    t = time.perf_counter()
    entries = []  # (label, acac model, Cu model or None)
    for path in args.acac_model:
        cu = load_model(args.cu_model, dtype=dtype) if args.cu_model and "cu" in wanted else None
        label = Path(path).parent.name or Path(path).stem
        if cu is not None:
            label += f" / Cu: {Path(args.cu_model).parent.name or Path(args.cu_model).stem}"
        entries.append((label, load_model(path, dtype=dtype), cu))
    configs = args.config or ([] if args.acac_model else [str(ROOT / "configs" / "quickstart.yaml")])
    for config in configs:
        acac = quickstart_model(ase.io.read(acac_path / "train_300K.xyz", ":50"),
                                ase.io.read(acac_path / "isolated_atoms.xyz", ":"),
                                args.train_steps, Path(config)).to(dtype)
        cu = (quickstart_model(ase.io.read(SHARED / "cu_emt" / "train.xyz", ":20"),
                               ase.io.read(SHARED / "cu_emt" / "isolated_atoms.xyz", ":"),
                               args.train_steps, Path(config)).to(dtype) if "cu" in wanted else None)
        entries.append((Path(config).stem, acac, cu))
    for label, acac, _ in entries:
        print(f"model {label}: {sum(p.numel() for p in acac.parameters()):,} parameters")
    print(f"models ready in {time.perf_counter() - t:.0f} s")
    molecule = ase.io.read(acac_path / "train_300K.xyz", 0)
    box_file = SHARED / "bench" / "acac_box64.xyz"
    systems = {
        "acac": ("one acac molecule", lambda: molecule, "acac", args.steps),
        "box": ("64 acac, periodic box", lambda: ase.io.read(box_file), "acac", args.large_steps),
        "cu": ("fcc Cu, periodic", copper_cell, "cu", args.large_steps),
        "replicas": (f"{args.replicas} acac replicas, batched", lambda: molecule, "acac", args.steps),
    }
    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {args.dtype}, "
          f"allocator: {allocator_setting()}")
    header = ("| system | atoms | threads | model | mode | steps/s | atom-steps/s | vs fastest MACE | "
              "NL ms | model ms | other ms | NL builds /100 steps | warm-up s | compile s | "
              "cached load s |")
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    rows = []

    def emit(row: dict) -> None:
        rows.append(row)
        if "error" in row:
            print(f"| {row['system']} | {row['atoms']} | {row['threads']} | {row['model']} | "
                  f"{row['mode']} | failed: {row['error']} |", flush=True)
            return
        rate = f"{row['steps_per_s']:.2f} ± {row['steps_per_s_std']:.2f}"
        atom_rate = f"{row['atom_steps_per_s']:,.0f} ± {row['atom_steps_per_s_std']:,.0f}"
        ratio = row.get("vs_mace")
        vs = f"{ratio:.1f}x ({row['vs_mace_mode']})" if ratio is not None else "-"
        print(f"| {row['system']} | {row['atoms']} | {row['threads']} | {row['model']} | "
              f"{row['mode']} | {rate} | {atom_rate} | {vs} | {fmt(row.get('ms_nl', nan), '.2f')} | "
              f"{fmt(row.get('ms_model', nan), '.2f')} | {fmt(row.get('ms_other', nan), '.2f')} | "
              f"{fmt(row.get('builds_per_100', nan), '.1f')} | {row['warmup_s']:.1f} | "
              f"{fmt(row.get('compile_s', nan), '.1f')} | {fmt(row.get('load_s', nan), '.2f')} |",
              flush=True)

    nan = float("nan")
    for threads in [int(x) for x in args.threads.split(",")]:
        torch.set_num_threads(threads)
        fastest: dict[str, tuple[float, str]] = {}  # system -> (MACE atom-steps/s, its mode)
        for key in wanted:
            name, make, which, steps = systems[key]
            if key == "box" and not box_file.is_file():
                print(f"| {name} | structure {box_file} not found, skipped |")
                continue
            atoms = make()
            mace_file = args.mace_cu_model if which == "cu" else args.mace_model
            if mace_file and key != "replicas":
                for mode in args.mace_modes.split(","):
                    m = time_mace(args.mace_venv, mace_file, atoms, steps, args.warmup, threads,
                                  args.dtype, mode, args.repeats)
                    emit({"system": name, "atoms": str(len(atoms)), "threads": threads,
                          "model": "MACE", "mode": mode, **m})
                    if "error" not in m and m["atom_steps_per_s"] > fastest.get(key, (0.0, ""))[0]:
                        fastest[key] = (m["atom_steps_per_s"], mode)
            reference = fastest.get("acac" if key == "replicas" else key)
            for label, acac, cu in entries:
                model = acac if which == "acac" else cu
                if model is None:
                    continue
                for mode in args.modes.split(","):
                    mode = {"compiled": "aot"}.get(mode, mode)
                    if key == "replicas":
                        r = time_replicas(atoms, model, args.replicas, steps, mode, args.repeats)
                        n_atoms = f"{args.replicas} x {len(atoms)}"
                    else:
                        r = time_md(atoms, model, steps, args.warmup, mode, args.repeats)
                        n_atoms = str(len(atoms))
                    if reference is not None:
                        r.update(vs_mace=r["atom_steps_per_s"] / reference[0],
                                 vs_mace_mode=f"MACE {reference[1]}")
                    emit({"system": name, "atoms": n_atoms, "threads": threads, "model": label,
                          "mode": mode, **r})
    print(f"done: mean ± sample std over {args.repeats} timed segments of the same run; steps/s are "
          "ASE MD steps (batched steps for replicas); NL = neighbour list; vs fastest MACE = "
          "atom-steps/s over the fastest MACE mode measured on the same system in this run "
          "(replicas: on one molecule).")
    if args.json:
        meta = {"date": time.strftime("%Y-%m-%d %H:%M"), "host": platform.node(),
                "processor": platform.processor() or platform.machine(), "torch": torch.__version__,
                "dtype": args.dtype, "allocator": allocator_setting(), "steps": args.steps,
                "large_steps": args.large_steps, "warmup": args.warmup, "repeats": args.repeats}
        Path(args.json).write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
