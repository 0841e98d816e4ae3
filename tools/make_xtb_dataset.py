"""A multi-molecule GFN2-xTB data set, generated here instead of downloaded.

    python tools/make_xtb_dataset.py --out data/xtb_g2            # 2,088 frames, ~20 s on 1 core
    python tools/make_xtb_dataset.py --out /tmp/x --molecules CH4,H2O,C2H6 --frames 6 --workers 1

Recipe (every number is an option):

1. Molecules: ASE's g2 collection, neutral closed-shell entries (even electron count, no
   initial magnetic moment) with at least 3 atoms and only the ``--elements`` (default
   H, C, N, O: 58 molecules).
2. Each is relaxed with GFN2-xTB (BFGS, fmax 0.02 eV/Å, at most 200 steps).
3. Frames per molecule (``--frames``): half from a short Langevin MD (0.5 fs, friction
   0.01/fs, Maxwell-Boltzmann start; 20 steps to equilibrate, then one frame every 5 steps),
   half random Gaussian displacements of the relaxed geometry, sigma = 0.02 Å x
   sqrt(T / 300 K) per Cartesian component, mass-independent (classically <x^2> = kT/k).
   The temperature of each MD run and each displacement frame is drawn from
   ``--temperatures`` (default 300, 600, 900 K). With sigma = 0.02 Å the displacement
   frames' force spread is about 1.6x the MD frames' at the same temperature (std 1.02 vs
   0.65 eV/Å at 300 K, 1.82 vs 1.07 at 900 K): a little hotter, for coverage.
4. Labels: GFN2-xTB through tblite, neutral, singlet, accuracy 1.0, electronic temperature
   300 K, defaults otherwise; energy [eV] and forces [eV/Å]. Isolated atoms with the same
   settings in their ground-state spin multiplicity (H 2, C 3, N 4, O 3, ...), written to
   isolated_atoms.xyz (a closed-shell singlet does not exist for an odd-electron atom).
   Frames whose SCF fails or gives non-finite output are dropped and counted.
5. Split by molecule and by frame (seeded): ``--test-molecules`` of the molecules go to
   test_molecules.xyz whole (unseen molecules); the frames of the others are split
   ``--val-fraction`` / ``--test-fraction`` into val.xyz / test_frames.xyz (unseen frames of
   seen molecules), the rest train.xyz. manifest.json records the recipe, the molecule of
   each split, counts and the tblite version.

Every frame carries ``molecule``, ``sampling`` (md / displace), ``temperature_K`` and
``config_type`` in its info. The files are written to a temporary folder inside ``--out``'s
parent and moved into place at the end, so an interrupted run leaves nothing half-written.
Only the tool is committed: the data regenerate deterministically (same seed, same tblite;
workers run tblite on one thread each, so files are bit-identical for any ``--workers`` >= 2;
``--workers 1`` runs in this process, whose OpenMP threads can change the last digits).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import ase
import ase.io
import numpy as np
from ase.calculators.singlepoint import SinglePointCalculator
from ase.collections import g2
from ase.data import chemical_symbols

XTB_SETTINGS = {"method": "GFN2-xTB", "accuracy": 1.0, "electronic_temperature": 300.0,
                "charge": 0}
# Ground-state spin multiplicity of the free atoms (Hund's rules).
ATOM_MULTIPLICITY = {1: 2, 3: 2, 5: 2, 6: 3, 7: 4, 8: 3, 9: 2, 11: 2, 14: 3, 15: 4, 16: 3, 17: 2}
MD_TIMESTEP_FS, MD_FRICTION, MD_EQUILIBRATE, MD_STRIDE = 0.5, 0.01, 20, 5
SIGMA_300K = 0.02  # Å per Cartesian component at 300 K


def select_molecules(elements: set[str], names: list[str] | None) -> list[str]:
    """g2 names that are neutral closed-shell, >= 3 atoms, made of ``elements`` only."""
    chosen = []
    for name in names or g2.names:
        if name not in g2.names:
            raise SystemExit(f"make_xtb_dataset: {name!r} is not in ASE's g2 collection")
        atoms = g2[name]
        closed = int(atoms.numbers.sum()) % 2 == 0 and not np.any(atoms.get_initial_magnetic_moments())
        if closed and len(atoms) >= 3 and set(atoms.get_chemical_symbols()) <= elements:
            chosen.append(name)
    return chosen


def _calculator(multiplicity: int = 1):
    from tblite.ase import TBLite

    return TBLite(**XTB_SETTINGS, multiplicity=multiplicity, verbosity=0)


def _label(atoms: ase.Atoms, calc) -> ase.Atoms | None:
    """A copy of ``atoms`` with xTB energy/forces as a single-point result; None on failure."""
    frame = atoms.copy()
    frame.calc = calc
    try:
        energy = float(frame.get_potential_energy())
        forces = np.array(frame.get_forces(), dtype=float)
    except Exception:  # tblite raises its own error types for SCF failures
        return None
    if not (math.isfinite(energy) and np.isfinite(forces).all()):
        return None
    out = atoms.copy()
    out.calc = SinglePointCalculator(out, energy=energy, forces=forces)
    return out


def molecule_frames(task: tuple[str, int, int, list[float]]) -> dict:
    """Relax one g2 molecule with xTB and sample + label its frames (runs in a worker)."""
    name, n_frames, seed, temperatures = task
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import thermalize_momenta
    from ase.optimize import BFGS

    rng = np.random.default_rng(seed)
    calc = _calculator()
    atoms = g2[name].copy()
    atoms.set_initial_magnetic_moments(None)
    atoms.calc = calc
    try:
        BFGS(atoms, logfile=None).run(fmax=0.02, steps=200)
    except Exception as err:
        return {"name": name, "frames": [], "failed": 0, "error": f"relaxation failed: {err}"}
    relaxed = atoms.copy()
    frames: list[ase.Atoms] = []
    failed = 0

    def keep(geometry: ase.Atoms, sampling: str, temperature: float) -> None:
        nonlocal failed
        labelled = _label(geometry, calc)
        if labelled is None:
            failed += 1
            return
        labelled.info.update(molecule=name, sampling=sampling, temperature_K=temperature,
                             config_type=f"{sampling}_{temperature:.0f}K")
        frames.append(labelled)

    n_md = n_frames // 2
    n_runs = max(1, math.ceil(n_md / 5)) if n_md else 0
    per_run = [n_md // n_runs + (k < n_md % n_runs) for k in range(n_runs)]
    for count in per_run:
        temperature = float(rng.choice(temperatures))
        md = relaxed.copy()
        md.calc = calc
        thermalize_momenta(md, temperature, rng=rng)
        dyn = Langevin(md, MD_TIMESTEP_FS * ase.units.fs, temperature_K=temperature,
                       friction=MD_FRICTION / ase.units.fs, fixcm=False, rng=rng)
        sampled = 0
        try:
            dyn.run(MD_EQUILIBRATE)
            while sampled < count:
                dyn.run(MD_STRIDE)
                sampled += 1
                keep(ase.Atoms(numbers=md.numbers, positions=md.positions), "md", temperature)
        except Exception:  # an SCF failure inside the MD ends this run
            failed += count - sampled
    for _ in range(n_frames - n_md):
        temperature = float(rng.choice(temperatures))
        geometry = relaxed.copy()
        sigma = SIGMA_300K * math.sqrt(temperature / 300.0)
        geometry.positions = geometry.positions + rng.normal(0.0, sigma, geometry.positions.shape)
        keep(geometry, "displace", temperature)
    return {"name": name, "frames": frames, "failed": failed, "error": None}


def isolated_atoms(numbers: list[int]) -> list[ase.Atoms]:
    out = []
    for z in numbers:
        atom = ase.Atoms(numbers=[z], positions=[[0.0, 0.0, 0.0]])
        labelled = _label(atom, _calculator(ATOM_MULTIPLICITY.get(z, 1 + z % 2)))
        if labelled is None:
            raise SystemExit(f"make_xtb_dataset: xTB failed on the isolated {chemical_symbols[z]} atom")
        labelled.info.update(config_type="IsolatedAtom", multiplicity=ATOM_MULTIPLICITY.get(z, 1 + z % 2))
        out.append(labelled)
    return out


def split(results: list[dict], test_molecules: float, val_fraction: float, test_fraction: float,
          seed: int) -> tuple[dict[str, list[ase.Atoms]], dict[str, list[str]]]:
    """Hold out whole molecules, then split the frames of the others."""
    rng = np.random.default_rng(seed)
    names = sorted(r["name"] for r in results if r["frames"])
    order = list(rng.permutation(len(names)))
    n_test_mol = int(round(test_molecules * len(names))) if len(names) > 2 else 0
    held = {names[i] for i in order[:n_test_mol]}
    files: dict[str, list[ase.Atoms]] = {"train": [], "val": [], "test_frames": [], "test_molecules": []}
    for r in sorted(results, key=lambda r: r["name"]):
        if r["name"] in held:
            files["test_molecules"].extend(r["frames"])
            continue
        idx = rng.permutation(len(r["frames"]))
        n_val = int(round(val_fraction * len(idx)))
        n_test = int(round(test_fraction * len(idx)))
        files["val"].extend(r["frames"][i] for i in idx[:n_val])
        files["test_frames"].extend(r["frames"][i] for i in idx[n_val:n_val + n_test])
        files["train"].extend(r["frames"][i] for i in idx[n_val + n_test:])
    molecules = {"test_molecules": sorted(held), "train_val_test_frames": sorted(set(names) - held)}
    return files, molecules


def _init_worker() -> None:
    os.environ["OMP_NUM_THREADS"] = "1"  # this worker's own process, before tblite loads


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="output folder (must not exist)")
    parser.add_argument("--elements", default="H,C,N,O")
    parser.add_argument("--molecules", default=None, help="comma-separated g2 names (default: all eligible)")
    parser.add_argument("--frames", type=int, default=36, help="frames per molecule")
    parser.add_argument("--temperatures", default="300,600,900", help="K, comma-separated")
    parser.add_argument("--test-molecules", type=float, default=0.15)
    parser.add_argument("--val-fraction", type=float, default=0.1)
    parser.add_argument("--test-fraction", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args(argv)
    from importlib.metadata import PackageNotFoundError, version

    try:
        tblite_version = version("tblite")
    except PackageNotFoundError:
        raise SystemExit("make_xtb_dataset: needs tblite (pip install 'mlip[xtb]' or 'tblite>=0.4')") from None
    out = Path(args.out)
    if out.exists():
        raise SystemExit(f"make_xtb_dataset: {out} exists; choose a new folder")
    names = select_molecules(set(args.elements.split(",")),
                             args.molecules.split(",") if args.molecules else None)
    if not names:
        raise SystemExit("make_xtb_dataset: no g2 molecule matches --elements/--molecules")
    temperatures = [float(t) for t in args.temperatures.split(",")]
    tasks = [(name, args.frames, args.seed * 100_003 + k, temperatures) for k, name in enumerate(names)]
    from tqdm import tqdm

    start = time.perf_counter()
    if args.workers > 1:
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(args.workers, initializer=_init_worker) as pool:
            results = list(tqdm(pool.imap_unordered(molecule_frames, tasks), total=len(tasks),
                                desc="molecules", unit="mol"))
    else:
        results = [molecule_frames(t) for t in tqdm(tasks, desc="molecules", unit="mol")]
    errors = [f"{r['name']}: {r['error']}" for r in results if r["error"]]
    failed = sum(r["failed"] for r in results)
    numbers = sorted({int(z) for r in results for f in r["frames"] for z in f.numbers})
    files, molecules = split(results, args.test_molecules, args.val_fraction, args.test_fraction, args.seed)
    files["isolated_atoms"] = isolated_atoms(numbers)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        for key, frames in files.items():
            ase.io.write(tmp / f"{key}.xyz", frames, format="extxyz")
        manifest = {
            "recipe": {**vars(args), "xtb": {**XTB_SETTINGS, "multiplicity": 1},
                       "atom_multiplicity": {chemical_symbols[z]: ATOM_MULTIPLICITY.get(z, 1 + z % 2)
                                             for z in numbers},
                       "md": {"timestep_fs": MD_TIMESTEP_FS, "friction_per_fs": MD_FRICTION,
                              "equilibrate_steps": MD_EQUILIBRATE, "stride": MD_STRIDE},
                       "displacement_sigma_300K": SIGMA_300K},
            "tblite": tblite_version, "molecules": molecules,
            "counts": {k: len(v) for k, v in files.items()}, "failed_frames": failed,
            "skipped_molecules": errors, "seconds": round(time.perf_counter() - start, 1),
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    counts = ", ".join(f"{k} {v}" for k, v in manifest["counts"].items())
    print(f"make_xtb_dataset: {len(names) - len(errors)} molecules ({len(molecules['test_molecules'])} "
          f"held out), {counts} frames; {failed} frames dropped (SCF failure); "
          f"{manifest['seconds']:.0f} s; wrote {out}")
    for e in errors:
        print(f"  skipped {e}", file=sys.stderr)


if __name__ == "__main__":
    main()
