"""GPU check: CUDA vs CPU forces, MD speed at ~1k/10k/100k atoms and with
batched replicas, training throughput, peak GPU memory; eager and AOT-compiled, each also
replayed from CUDA graphs (+graphs; rows say how many captures and whether one failed, and
every non-eager row the largest force difference to a plain eager call).

    python tools/gpu_check.py --device cuda --out gpu_check.json      # (tools/gpu_check.sh)
    python tools/gpu_check.py --device cpu --sizes 1 --steps 2 --replicas 4 --train-steps 2  # smoke test

The model has the Gaunt benchmark architecture (configs/acac_bench_gaunt.yaml) trained for
--train-steps Adam steps on bundled acac data (speed does not depend on the weights; a few
steps keep MD physical). Systems are the 960-atom acac box of BASELINES.md repeated
n x n x n (--sizes), built here from 64 bundled molecules when ../shared is absent.
Every figure is printed as it is measured, so a run cut short still reports what it got;
the order is by importance (forces, training, MD at the first size, replicas, larger
sizes), and an error in one figure (out of memory, a failed build) is recorded in its row.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import ase
import ase.io
import numpy as np
import torch
from ase import units
from ase.md.velocitydistribution import thermalize_momenta
from ase.md.verlet import VelocityVerlet

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

from bench_md import quickstart_model  # noqa: E402

from mlip.calculator import MLIPCalculator  # noqa: E402
from mlip.graph.build import atoms_to_batch  # noqa: E402
from mlip.md.ase_driver import MDSettings  # noqa: E402
from mlip.md.replicas import run_replicas  # noqa: E402
from mlip.training.metrics import weighted_loss  # noqa: E402


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def acac_box(frames: list[ase.Atoms]) -> ase.Atoms:
    """The BASELINES box when ../shared is there, else 64 molecules on a 4x4x4 lattice at
    about 1 g/cm^3 (same atom count)."""
    shared = ROOT.parent / "shared" / "data" / "bench" / "acac_box64.xyz"
    if shared.is_file():
        return ase.io.read(shared)
    box = ase.Atoms(cell=np.eye(3) * 20.0, pbc=True)
    for k in range(64):
        mol = frames[k % len(frames)].copy()
        mol.positions += 5.0 * np.array([k % 4, (k // 4) % 4, k // 16]) + 1.0 - mol.positions.mean(0)
        box += mol
    return box


def calculator(model, device, mode: str) -> MLIPCalculator:
    """mode: eager | aot | inductor, with "+graphs" for CUDA graphs (fixed-shape lists)."""
    compile, _, graphs = mode.partition("+")
    return MLIPCalculator(model, device=str(device), compile={"eager": "none"}.get(compile, compile),
                          cuda_graphs=graphs == "graphs")


def md_rate(atoms: ase.Atoms, model, device, mode: str, steps: int) -> dict:
    calc = calculator(model, device, mode)
    a = atoms.copy()
    a.calc = calc
    thermalize_momenta(a, 300, rng=np.random.default_rng(0))
    dyn = VelocityVerlet(a, 0.5 * units.fs)
    t = time.perf_counter()
    dyn.run(2)  # warm-up (and compilation)
    warm = time.perf_counter() - t
    calc.timings.update(neighbors=0.0, model=0.0, calls=0)  # per-call split of the timed steps
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    sync(device)
    t = time.perf_counter()
    dyn.run(steps)
    sync(device)
    dt = time.perf_counter() - t
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    row = {"atoms": len(a), "mode": mode, "steps_per_s": steps / dt,
           "atom_steps_per_s": steps * len(a) / dt, "warmup_s": warm, "peak_gib": peak,
           "ms_neighbors": 1e3 * calc.timings["neighbors"] / max(calc.timings["calls"], 1),
           "ms_model": 1e3 * calc.timings["model"] / max(calc.timings["calls"], 1)}
    if calc.graphs is not None:
        row.update(captures=calc.graphs.captures, graph_failed=calc.graphs.failed)
    if mode != "eager":  # the same forces as a plain eager call at the final positions
        ref = MLIPCalculator(model, device=str(device), dtype=torch.float32).get_forces(a)
        row["max_force_diff_vs_eager"] = float(np.abs(calc.get_forces(a) - ref).max())
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--sizes", default="1,2,5", help="box repeats n (n^3 x 960 atoms)")
    parser.add_argument("--modes", default="eager,aot,aot+graphs,eager+graphs",
                        help="eager | aot | inductor, each optionally +graphs (CUDA graphs)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--replicas", type=int, default=64)
    parser.add_argument("--train-steps", type=int, default=30)
    parser.add_argument("--out", default=None, help="JSON with every figure")
    args = parser.parse_args()
    device = torch.device(args.device)
    report: dict = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                    "torch": torch.__version__, "md": [], "replicas": [], "training": {}}

    def emit(kind: str, row: dict) -> None:
        print(json.dumps({kind: row}), flush=True)
        if args.out:
            Path(args.out).write_text(json.dumps(report, indent=2))

    acac = ROOT / "data" / "acac"
    frames = ase.io.read(acac / "train_300K.xyz", ":50")
    iso = ase.io.read(acac / "isolated_atoms.xyz", ":")
    t = time.perf_counter()
    model = quickstart_model(frames, iso, args.train_steps, ROOT / "configs" / "acac_bench_gaunt.yaml")
    print(f"model ready in {time.perf_counter() - t:.0f} s", flush=True)

    # 1. The same model on both devices (float64): forces agree.
    box = acac_box(frames)
    cpu64 = MLIPCalculator(model, device="cpu", dtype="float64")
    dev64 = MLIPCalculator(model, device=str(device), dtype="float64")
    for name, atoms in (("molecule", frames[0]), ("box", box)):
        f = [c.get_forces(atoms.copy()) for c in (cpu64, dev64)]
        report[f"max_force_diff_{name}_float64"] = float(np.abs(f[0] - f[1]).max())
        emit("forces", {name: report[f"max_force_diff_{name}_float64"]})

    modes = [m for m in args.modes.split(",") if "graphs" not in m or device.type == "cuda"]

    def guarded(kind: str, base: dict, measure) -> None:
        """One figure; an error (out of memory, a failed build) becomes the row's "error"
        and the check goes on with the next one."""
        try:
            row = measure()
        except Exception as err:  # noqa: BLE001 - report it, keep measuring the rest
            row = {**base, "error": f"{type(err).__name__}: {str(err).strip()[:200]}"}
            if device.type == "cuda":
                torch.cuda.empty_cache()
        report[kind].append(row)
        emit(kind, row)

    def md_rows(n: int) -> None:
        atoms = box.repeat((n, n, n))
        for mode in modes:
            guarded("md", {"atoms": len(atoms), "mode": mode},
                    lambda mode=mode: md_rate(atoms, model, device, mode, args.steps))

    def replica_row(mode: str) -> dict:
        calc = calculator(model, device, mode)
        settings = MDSettings(ensemble="nve", temperature_K=300, timestep_fs=0.5, steps=2, progress=False)
        run_replicas(calc.engine, frames[0], settings, args.replicas)
        settings.steps = args.steps
        out = run_replicas(calc.engine, frames[0], settings, args.replicas)
        row = {"replicas": args.replicas, "mode": mode, "steps_per_s": out["steps_per_second"],
               "atom_steps_per_s": out["steps_per_second"] * args.replicas * len(frames[0])}
        if calc.graphs is not None:
            row.update(captures=calc.graphs.captures, graph_failed=calc.graphs.failed)
        return row

    # In order of importance, so a run cut short keeps the essential figures: training,
    # MD at the first size, replicas, then the larger sizes.
    # 2. Training throughput (float32, batch 5 as the benchmark config).
    train = copy.deepcopy(model).to(device=device, dtype=torch.float32).train()
    for p in train.parameters():
        p.requires_grad_(True)
    batches = [{k: v.to(device) for k, v in atoms_to_batch(frames[k:k + 5], train.cutoff).items()}
               for k in range(0, 50, 5)]
    opt = torch.optim.Adam(train.parameters(), lr=1e-3)
    for step in range(3 + 2 * len(batches)):
        if step == 3:
            sync(device)
            t = time.perf_counter()
        data = batches[step % len(batches)]
        opt.zero_grad()
        weighted_loss(train(data, training=True), data, 1.0, 100.0, 0.0)["loss"].backward()
        opt.step()
    sync(device)
    report["training"] = {"structures_per_s": 2 * len(batches) * 5 / (time.perf_counter() - t)}
    emit("training", report["training"])
    del train, opt, batches

    sizes = [int(x) for x in args.sizes.split(",")]
    # 3. MD speed, float32, every mode, the first size.
    md_rows(sizes[0])
    # 4. Batched replicas of one molecule.
    for mode in modes:
        guarded("replicas", {"replicas": args.replicas, "mode": mode}, lambda mode=mode: replica_row(mode))
    # 5. MD at the larger sizes.
    for n in sizes[1:]:
        md_rows(n)
    print("done", flush=True)


if __name__ == "__main__":
    main()
