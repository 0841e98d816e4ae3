"""Extrapolation benchmark: energy surfaces away from the training data.

Scores the same geometries with every model given: mlip model files, MACE model files
(evaluated with ``mace_eval_configs`` from MACE's own venv) and GFN2-xTB through tblite as
a reference profile. Probes (mlip.testing.extrapolation), all from the lowest-energy frame
of the training file:

* bowl: the molecule scaled uniformly by 0.70 ... 1.30 about its centroid;
* torsion: each rotatable heavy-atom bond, one side turned rigidly 0 ... 180° in 10° steps;
* dimers: H-H, C-H, O-H, C-C, C-O, O-O from 0.2 to 6 Å (the limit is the sum of E0s);
* pull: each H atom pulled out along its bond to 11 Å (limit: rest of molecule + E0(H)).

    python tools/bench_extrapolation.py --train data/acac/train_300K.xyz \\
        --model gaunt=checkpoints/acac_bench_gaunt/model.pt --mace mace=/path/acac_mace.model \\
        --xtb --out bench_extrapolation

Writes <out>/geometries.xyz, <out>/energies.json and prints markdown tables.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

import ase
import ase.io
import numpy as np
from ase.data import covalent_radii

from mlip.testing import extrapolation as X

FACTORS = np.round(np.linspace(0.7, 1.3, 13), 3)
ANGLES = np.arange(0, 181, 10)
DIMER_R = np.round(np.arange(0.2, 6.001, 0.05), 3)
DIMERS = [(1, 1), (1, 6), (1, 8), (6, 6), (6, 8), (8, 8)]


def build_probes(train: str) -> tuple[list[ase.Atoms], list[dict], float]:
    frames = ase.io.read(train, ":")
    energies = np.array([a.get_potential_energy() for a in frames])
    start = frames[int(energies.argmin())]
    start = ase.Atoms(numbers=start.numbers, positions=start.positions)
    geoms, tags = [], []

    def add(frames_, **tag):
        for k, a in enumerate(frames_):
            geoms.append(a)
            tags.append({**tag, "k": k})

    add([start], probe="start")
    add(X.scaled_copies(start, FACTORS), probe="bowl")
    for i, j in X.rotatable_bonds(start):
        add(X.torsion_scan(start, i, j, ANGLES), probe="torsion", bond=f"{i}-{j}")
    for z1, z2 in DIMERS:
        add(X.dimer(z1, z2, DIMER_R), probe="dimer", pair=f"{z1}-{z2}")
    for i, j in X.bonds(start):
        for h, partner in ((i, j), (j, i)):
            if start.numbers[h] == 1:
                r0 = start.get_distance(h, partner)
                add(X.pair_curve(start, h, partner, np.round(np.arange(r0, 11.0, 0.05), 3)),
                    probe="pull", atom=int(h), r0=float(r0))
                rest = start.copy()
                del rest[h]
                add([rest], probe="rest", atom=int(h))
    return geoms, tags, float(energies.min())


def mlip_energies(path: str, geoms: list[ase.Atoms]) -> tuple[np.ndarray, dict[int, float]]:
    import torch

    from mlip.model.io import load_model

    model = load_model(path, dtype=torch.float64)
    e0 = {z: float(e) for z, e in zip(model.atomic_numbers, model.e0s.tolist(), strict=True)}
    return X.energies(model, geoms), e0


def mace_energies(path: str, geoms: list[ase.Atoms], venv: str,
                  dtype: str = "float32") -> tuple[np.ndarray, dict[int, float]]:
    """Energies from ``mace_eval_configs`` (in the model's dtype: mace-torch 0.3.16 refuses
    a float32 model under float64); E0 = MACE's energy of a lone atom."""
    lone = [ase.Atoms(numbers=[z]) for z in (1, 6, 8)]
    with tempfile.TemporaryDirectory() as tmp:
        src, out = Path(tmp) / "in.xyz", Path(tmp) / "out.xyz"
        padded = []
        for a in list(geoms) + lone:  # MACE wants a cell; a large empty one, no pbc
            b = a.copy()
            b.cell = np.eye(3) * 100.0
            b.pbc = False
            padded.append(b)
        ase.io.write(src, padded)
        subprocess.run([f"{venv}/bin/mace_eval_configs", "--configs", str(src), "--model", path,
                        "--output", str(out), "--default_dtype", dtype, "--batch_size", "16"],
                       check=True, capture_output=True)
        e = np.array([a.info["MACE_energy"] for a in ase.io.read(out, ":")])
    return e[: len(geoms)], dict(zip((1, 6, 8), e[len(geoms):].tolist(), strict=True))


def xtb_energies(geoms: list[ase.Atoms], tags: list[dict]) -> np.ndarray:
    """GFN2-xTB (tblite; neutral singlet, accuracy 1, 300 K) for the start, bowl and torsion
    geometries (NaN elsewhere: open-shell dimers and fragments are not a closed-shell
    reference)."""
    from tblite.ase import TBLite

    calc = TBLite(method="GFN2-xTB", accuracy=1.0, electronic_temperature=300.0, charge=0,
                  multiplicity=1, verbosity=0)
    out = np.full(len(geoms), np.nan)
    for n, (a, t) in enumerate(zip(geoms, tags, strict=True)):
        if t["probe"] in ("start", "bowl", "torsion"):
            b = a.copy()
            b.calc = calc
            out[n] = b.get_potential_energy()
    return out


def summarize(e: np.ndarray, tags: list[dict], e0: dict[int, float], e_min_train: float | None,
              ref: np.ndarray | None) -> dict:
    tags_arr = np.array([t["probe"] for t in tags])
    start = e[tags_arr == "start"][0]
    base = e_min_train if e_min_train is not None else start
    s: dict = {}
    bowl = e[tags_arr == "bowl"]
    s["bowl"] = X.bowl_summary(FACTORS, bowl)
    s["bowl"]["profile"] = (bowl - start).tolist()
    torsions = {}
    for bond in sorted({t["bond"] for t in tags if t["probe"] == "torsion"}):
        idx = [n for n, t in enumerate(tags) if t["probe"] == "torsion" and t["bond"] == bond]
        prof = e[idx]
        row = {"min_below_train_min": float(prof.min() - base), "barrier": float(prof.max() - prof[0]),
               "profile": (prof - prof[0]).tolist()}
        if ref is not None:
            row["offset_free_mae_vs_xtb"] = X.offset_free_mae(prof, ref[idx])
        torsions[bond] = row
    s["torsion"] = torsions
    dimers = {}
    for pair in [f"{a}-{b}" for a, b in DIMERS]:
        idx = [n for n, t in enumerate(tags) if t["probe"] == "dimer" and t["pair"] == pair]
        z1, z2 = (int(x) for x in pair.split("-"))
        limit = e0[z1] + e0[z2]
        prof = e[idx]
        # 1.5 x the bonding distance (sum of covalent radii): beyond it a pair should not be
        # bound by more than ~1 eV unless the reference is
        stretched = DIMER_R >= 1.5 * (covalent_radii[z1] + covalent_radii[z2])
        dimers[pair] = {"E(0.2 A) - limit": float(prof[0] - limit),
                        "well below limit": float(prof.min() - limit),
                        "deepest beyond 1.5 x bond - limit": float(prof[stretched].min() - limit),
                        "E(6 A) - limit": float(prof[-1] - limit),
                        "max |dE/dr| beyond 2 A": float(np.abs(np.diff(prof[DIMER_R >= 2.0])).max() / 0.05)}
    s["dimer"] = dimers
    pulls = {}
    for t in [t for t in tags if t["probe"] == "pull" and t["k"] == 0]:
        atom = t["atom"]
        idx = [n for n, u in enumerate(tags) if u["probe"] == "pull" and u["atom"] == atom]
        rest = [n for n, u in enumerate(tags) if u["probe"] == "rest" and u["atom"] == atom][0]
        prof = e[idx]
        limit = e[rest] + e0[1]
        pulls[str(atom)] = {"dissociation": float(limit - prof[0]), "limit_error": float(prof[-1] - limit),
                            "max |dE/dr|": float(np.abs(np.diff(prof)).max() / 0.05),
                            "min below start": float(prof.min() - prof[0])}
    s["pull"] = pulls
    return s


def print_tables(results: dict, names: list[str]) -> None:
    print("\n### Uniform scaling 0.70-1.30 (E - E(1.00), eV)\n")
    print("| model | argmin | E(0.70) | E(1.30) | monotone |\n|---|---|---|---|---|")
    for n in names:
        b = results[n]["bowl"]
        print(f"| {n} | {b['argmin_factor']:.2f} | {b['profile'][0]:.2f} | {b['profile'][-1]:.2f} | "
              f"{'yes' if b['monotone'] else 'no'} |")
    bonds = sorted(results[names[0]]["torsion"])
    print("\n### Rigid torsions 0-180°: lowest point vs the training minimum (eV) / offset-free "
          "MAE vs GFN2-xTB (meV)\n")
    print("| model | " + " | ".join(f"bond {b}" for b in bonds) + " |\n|---|"
          + "---|" * len(bonds))
    for n in names:
        cells = []
        for b in bonds:
            row = results[n]["torsion"][b]
            mae = row.get("offset_free_mae_vs_xtb")
            cells.append(f"{row['min_below_train_min']:+.2f}" + (f" / {1000 * mae:.0f}" if mae is not None
                                                                 and np.isfinite(mae) else ""))
        print(f"| {n} | " + " | ".join(cells) + " |")
    print("\n### Dimers: E(0.2 Å) - limit / deepest well below limit / deepest beyond 1.5 x the "
          "covalent bond length - limit / E(6 Å) - limit (eV)\n")
    pairs = list(results[names[0]]["dimer"])
    print("| model | " + " | ".join(pairs) + " |\n|---|" + "---|" * len(pairs))
    for n in names:
        d = results[n]["dimer"]
        print(f"| {n} | " + " | ".join(f"{d[p]['E(0.2 A) - limit']:.0f} / {d[p]['well below limit']:.1f} / "
                                     f"{d[p]['deepest beyond 1.5 x bond - limit']:.1f} / "
                                     f"{d[p]['E(6 A) - limit']:.2f}" for p in pairs) + " |")
    print("\n### H atoms pulled out to 11 Å: dissociation energy / limit error / max |dE/dr| "
          "(mean over H atoms; eV, eV, eV/Å)\n")
    print("| model | dissociation | limit error (max abs) | max dE/dr | dips below start |\n|---|---|---|---|---|")
    for n in names:
        p = list(results[n]["pull"].values())
        print(f"| {n} | {np.mean([q['dissociation'] for q in p]):.2f} | "
              f"{max(abs(q['limit_error']) for q in p):.2g} | {max(q['max |dE/dr|'] for q in p):.1f} | "
              f"{min(q['min below start'] for q in p):+.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", required=True, help="training extxyz (start geometry, E_min)")
    parser.add_argument("--model", action="append", default=[], help="NAME=mlip model file")
    parser.add_argument("--mace", action="append", default=[], help="NAME=MACE model file")
    parser.add_argument("--mace-venv", default=os.environ.get("MACE_VENV"),
                        help="venv with mace-torch (default $MACE_VENV); needed with --mace")
    parser.add_argument("--mace-dtype", default="float32", help="the MACE model's dtype")
    parser.add_argument("--xtb", action="store_true", help="GFN2-xTB reference (tblite)")
    parser.add_argument("--out", default="bench_extrapolation")
    args = parser.parse_args()
    if args.mace and not args.mace_venv:
        parser.error("--mace needs --mace-venv (or $MACE_VENV): MACE runs in its own venv")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    geoms, tags, e_min = build_probes(args.train)
    ase.io.write(out / "geometries.xyz", geoms)
    energies, e0s, timing = {}, {}, {}
    for spec in args.model:
        name, path = spec.split("=", 1)
        t = time.time()
        energies[name], e0s[name] = mlip_energies(path, geoms)
        timing[name] = time.time() - t
    for spec in args.mace:
        name, path = spec.split("=", 1)
        t = time.time()
        energies[name], e0s[name] = mace_energies(path, geoms, args.mace_venv, args.mace_dtype)
        timing[name] = time.time() - t
    ref = None
    if args.xtb:
        t = time.time()
        ref = xtb_energies(geoms, tags)
        timing["xtb"] = time.time() - t
    results = {n: summarize(e, tags, e0s[n], e_min, ref) for n, e in energies.items()}
    names = list(results)
    if ref is not None:
        mask = np.isfinite(ref)
        sub = [t for t, m in zip(tags, mask, strict=True) if m]
        xtb = summarize_reference(ref[mask], sub)
        results["GFN2-xTB"] = xtb
    (out / "energies.json").write_text(json.dumps(
        {"tags": tags, "energies": {n: e.tolist() for n, e in energies.items()},
         "xtb": None if ref is None else ref.tolist(), "results": results, "seconds": timing},
        indent=1))
    print(f"{len(geoms)} geometries; training-set minimum {e_min:.4f} eV; seconds {timing}")
    print_tables(results, names)
    if ref is not None:
        print("\nGFN2-xTB reference: bowl argmin "
              f"{results['GFN2-xTB']['bowl']['argmin_factor']:.2f}, torsion barriers (eV) "
              + ", ".join(f"{b}: {r['barrier']:.2f}" for b, r in results["GFN2-xTB"]["torsion"].items()))


def summarize_reference(e: np.ndarray, tags: list[dict]) -> dict:
    tags_arr = np.array([t["probe"] for t in tags])
    start = e[tags_arr == "start"][0]
    bowl = e[tags_arr == "bowl"]
    s = {"bowl": {**X.bowl_summary(FACTORS, bowl), "profile": (bowl - start).tolist()}, "torsion": {}}
    for bond in sorted({t["bond"] for t in tags if t["probe"] == "torsion"}):
        prof = e[[n for n, t in enumerate(tags) if t["probe"] == "torsion" and t["bond"] == bond]]
        s["torsion"][bond] = {"barrier": float(prof.max() - prof[0]), "profile": (prof - prof[0]).tolist()}
    return s


if __name__ == "__main__":
    main()
