"""Extrapolation benchmark: energy surfaces away from the training data.

Scores the same geometries with every model given: mlip model files, MACE model files
(evaluated with ``mace_eval_configs`` from MACE's own venv) and GFN2-xTB through tblite as
the reference (``--xtb``; the settings of :data:`mlip.data.dissociation.XTB_SETTINGS`: Fermi
smearing at 3000 K, each geometry in the lowest spin multiplicity of its electron count,
singlet or doublet). Probes (mlip.testing.extrapolation), all from the lowest-energy frame
of the training file:

* bowl: the molecule scaled uniformly by 0.70 ... 1.30 about its centroid;
* torsion: each rotatable heavy-atom bond, one side turned rigidly 0 ... 180° in 10° steps;
* dimer: every element pair of the training data from 0.5 Å to 7 Å (limit: the pair's
  lone atoms);
* pull: each terminal atom and terminal group (H, carbonyl O, OH, CH3) moved rigidly out
  along its bond to 11 Å (limit: the rest of the molecule plus the group, each alone);
* pair: two copies of the molecule (the second turned) from 1.6 Å closest contact to 11 Å
  (limit: twice the molecule);
* transfer: where the molecule has one, an intramolecular proton transfer between its two
  equivalent forms, as an IDPP path of 13 images (every model scored on the same path) and,
  for mlip models and GFN2-xTB, a climbing-image NEB of 9 images with each one's own forces.

Per probe and model: the offset-free profile error against GFN2-xTB, the asymptote error
(the model's E(far) - E(limit) minus the reference's, and for pulls the dissociation energy
E(limit) - E(start) against the reference's), and the deepest point below the limit
(for dimers beyond 1.5 x the covalent bond length, and at any distance).

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

from mlip.data import dissociation as D
from mlip.testing import extrapolation as X

FACTORS = np.round(np.linspace(0.7, 1.3, 13), 3)
ANGLES = np.arange(0, 181, 10)
DIMER_R = np.round(np.arange(0.5, 7.001, 0.05), 3)
PULL_END = 11.0
PAIR_R = np.round(np.arange(1.6, 11.001, 0.1), 3)


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
    elements = sorted(set(start.numbers.tolist()))
    for n, z1 in enumerate(elements):
        add([ase.Atoms(numbers=[z1])], probe="atom", z=z1)
        for z2 in elements[n:]:
            add(X.dimer(z1, z2, DIMER_R), probe="dimer", pair=f"{z1}-{z2}")
    for i, j, mask in D.terminal_groups(start):
        name = f"{start.get_chemical_symbols()[j]}{j}" + (f"+{int(mask.sum()) - 1}H" if mask.sum() > 1 else "")
        r0 = start.get_distance(i, j)
        add(D.pull_group(start, i, j, mask, np.round(np.arange(r0, PULL_END, 0.05), 3)),
            probe="pull", group=name, r0=float(r0))
        add([start[~mask]], probe="rest", group=name)
        add([start[mask]], probe="group", group=name)
    second = start.copy()
    second.positions = (start.positions - start.positions.mean(0)) @ D.random_rotation(
        np.random.default_rng(0)).T
    add(D.molecule_pair(start, second, np.array([1.0, 0.3, 0.2]), PAIR_R), probe="pair")
    ends = X.proton_transfer_endpoints(start)
    if ends is not None:
        from ase.mep import NEB

        images = [ends[0]] + [ends[0].copy() for _ in range(11)] + [ends[1]]
        NEB(images).interpolate("idpp")
        add([ase.Atoms(numbers=a.numbers, positions=a.positions) for a in images], probe="transfer")
    return geoms, tags, float(energies.min())


def mlip_energies(path: str, geoms: list[ase.Atoms]) -> np.ndarray:
    import torch

    from mlip.model.io import load_model

    return X.energies(load_model(path, dtype=torch.float64), geoms)


def mace_energies(path: str, geoms: list[ase.Atoms], venv: str, dtype: str = "float32") -> np.ndarray:
    """Energies from ``mace_eval_configs`` (in the model's dtype: mace-torch 0.3.16 refuses
    a float32 model under float64)."""
    with tempfile.TemporaryDirectory() as tmp:
        src, out = Path(tmp) / "in.xyz", Path(tmp) / "out.xyz"
        padded = []
        for a in geoms:  # MACE wants a cell; a large empty one, no pbc
            b = a.copy()
            b.cell = np.eye(3) * 100.0
            b.pbc = False
            padded.append(b)
        ase.io.write(src, padded)
        subprocess.run([f"{venv}/bin/mace_eval_configs", "--configs", str(src), "--model", path,
                        "--output", str(out), "--default_dtype", dtype, "--batch_size", "16"],
                       check=True, capture_output=True)
        return np.array([a.info["MACE_energy"] for a in ase.io.read(out, ":")])


def xtb_energies(geoms: list[ase.Atoms]) -> np.ndarray:
    """GFN2-xTB (:func:`mlip.data.dissociation.xtb_calculator`) of every geometry; NaN where
    the SCF fails (counted in the output)."""
    out = np.full(len(geoms), np.nan)
    for n, a in enumerate(geoms):
        b = a.copy()
        b.calc = D.xtb_calculator(b.numbers)
        try:
            out[n] = b.get_potential_energy()
        except Exception:  # noqa: BLE001 - SCF failure: a gap in the reference, reported
            pass
    return out


def neb_barrier(start: ase.Atoms, calculator) -> dict | None:
    """Climbing-image NEB of the proton transfer with ``calculator`` (numbers -> ASE
    calculator): the start relaxed (BFGS, fmax 0.05 eV/Å), its mirror form as the other end
    (equal energy by symmetry), 9 images from IDPP, FIRE to fmax 0.05 eV/Å (at most 400 steps).

    Returns:
        {"barrier": E_max - E(end) [eV], "converged": bool, "path": relative energies,
        "images": the relaxed band (ase.Atoms)}, or None when the relaxed molecule has no
        equivalent transfer.
    """
    from ase.mep import NEB
    from ase.optimize import BFGS, FIRE

    a = start.copy()
    a.calc = calculator(a.numbers)
    BFGS(a, logfile=None).run(fmax=0.05, steps=300)
    ends = X.proton_transfer_endpoints(ase.Atoms(numbers=a.numbers, positions=a.positions))
    if ends is None:
        return None
    images = [ends[0]] + [ends[0].copy() for _ in range(7)] + [ends[1]]
    for im in images:
        im.calc = calculator(im.numbers)
    neb = NEB(images, climb=True)
    neb.interpolate("idpp")
    converged = bool(FIRE(neb, logfile=None).run(fmax=0.05, steps=400))
    e = np.array([im.get_potential_energy() for im in images])
    return {"barrier": float(e.max() - 0.5 * (e[0] + e[-1])), "converged": converged,
            "end_asymmetry": float(e[-1] - e[0]), "path": (e - e[0]).tolist(),
            "images": [ase.Atoms(numbers=im.numbers, positions=im.positions) for im in images]}


def _idx(tags: list[dict], **match) -> list[int]:
    return [n for n, t in enumerate(tags) if all(t.get(k) == v for k, v in match.items())]


def _profile(e: np.ndarray, ref: np.ndarray | None, idx: list[int], limit: float,
             ref_limit: float | None, beyond: np.ndarray | None = None) -> dict:
    """One path's numbers: the deepest point below the limit (and beyond a distance), the
    far end's gap to the limit, and against the reference the offset-free profile error
    and the asymptote error."""
    prof = e[idx] - limit
    row = {"deepest below limit": float(prof.min()), "far end - limit": float(prof[-1])}
    if beyond is not None:
        row["deepest beyond 1.5 x bond"] = float(prof[beyond].min())
    if ref is not None and ref_limit is not None and np.isfinite(ref_limit):
        rp = ref[idx] - ref_limit
        ok = np.isfinite(rp)
        if ok.sum() >= 2:
            row["profile error"] = X.offset_free_mae(prof[ok], rp[ok])
            row["ref deepest below limit"] = float(rp[ok].min())
            if beyond is not None and (ok & beyond).any():
                row["ref deepest beyond 1.5 x bond"] = float(rp[ok & beyond].min())
            if ok[-1]:
                row["asymptote error"] = float(prof[-1] - rp[-1])
    return row


def summarize(e: np.ndarray, tags: list[dict], e_min_train: float | None, ref: np.ndarray | None) -> dict:
    start = e[_idx(tags, probe="start")][0]
    base = e_min_train if e_min_train is not None else start
    s: dict = {}
    bowl = e[_idx(tags, probe="bowl")]
    s["bowl"] = {**X.bowl_summary(FACTORS, bowl), "profile": (bowl - start).tolist()}
    torsions = {}
    for bond in sorted({t["bond"] for t in tags if t["probe"] == "torsion"}):
        idx = _idx(tags, probe="torsion", bond=bond)
        prof = e[idx]
        row = {"min_below_train_min": float(prof.min() - base), "barrier": float(prof.max() - prof[0])}
        if ref is not None and np.isfinite(ref[idx]).all():
            row["offset_free_mae_vs_xtb"] = X.offset_free_mae(prof, ref[idx])
        torsions[bond] = row
    s["torsion"] = torsions
    atom = {t["z"]: n for n, t in enumerate(tags) if t["probe"] == "atom"}
    s["dimer"] = {}
    for pair in dict.fromkeys(t["pair"] for t in tags if t["probe"] == "dimer"):
        z1, z2 = (int(x) for x in pair.split("-"))
        ref_limit = None if ref is None else ref[atom[z1]] + ref[atom[z2]]
        beyond = DIMER_R >= 1.5 * (covalent_radii[z1] + covalent_radii[z2])
        s["dimer"][pair] = _profile(e, ref, _idx(tags, probe="dimer", pair=pair),
                                    e[atom[z1]] + e[atom[z2]], ref_limit, beyond)
    s["pull"] = {}
    for group in dict.fromkeys(t["group"] for t in tags if t["probe"] == "pull"):
        rest, piece = _idx(tags, probe="rest", group=group)[0], _idx(tags, probe="group", group=group)[0]
        idx = _idx(tags, probe="pull", group=group)
        ref_limit = None if ref is None else ref[rest] + ref[piece]
        row = _profile(e, ref, idx, e[rest] + e[piece], ref_limit)
        row["dissociation"] = float(e[rest] + e[piece] - e[idx[0]])
        if ref is not None and np.isfinite(ref_limit) and np.isfinite(ref[idx[0]]):
            row["dissociation error"] = row["dissociation"] - float(ref_limit - ref[idx[0]])
        s["pull"][group] = row
    idx = _idx(tags, probe="pair")
    s["pair"] = _profile(e, ref, idx, 2 * start, None if ref is None else 2 * ref[_idx(tags, probe="start")[0]])
    idx = _idx(tags, probe="transfer")
    if idx:
        prof = e[idx]
        row = {"barrier on the IDPP path": float(prof.max() - 0.5 * (prof[0] + prof[-1])),
               "end asymmetry": float(prof[-1] - prof[0])}
        if ref is not None and np.isfinite(ref[idx]).all():
            row["profile error"] = X.offset_free_mae(prof, ref[idx])
        s["transfer"] = row
    return s


def _fmt(x: float | None, spec: str = ".2f") -> str:
    return "-" if x is None or not np.isfinite(x) else format(x, spec)


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
    print("| model | " + " | ".join(f"bond {b}" for b in bonds) + " |\n|---|" + "---|" * len(bonds))
    for n in names:
        if n == "GFN2-xTB":  # another energy zero: its barriers are printed below
            continue
        cells = []
        for b in bonds:
            row = results[n]["torsion"][b]
            mae = row.get("offset_free_mae_vs_xtb")
            cells.append(f"{row['min_below_train_min']:+.2f}" + (f" / {1000 * mae:.0f}" if mae is not None else ""))
        print(f"| {n} | " + " | ".join(cells) + " |")
    pairs = list(results[names[0]]["dimer"])

    def dimer_table(title: str, cell) -> None:
        print(title)
        print("| model | " + " | ".join(pairs) + " |\n|---|" + "---|" * len(pairs))
        for n in names:
            print(f"| {n} | " + " | ".join(cell(results[n]["dimer"][p]) for p in pairs) + " |")

    dimer_table("\n### Dimers 0.5-7 Å: deepest point beyond 1.5 x the covalent bond length - limit "
                "(reference's) / offset-free profile error vs GFN2-xTB (eV)\n",
                lambda d: f"{d['deepest beyond 1.5 x bond']:.2f} ({_fmt(d.get('ref deepest beyond 1.5 x bond'))}) / "
                          f"{_fmt(d.get('profile error'))}")
    dimer_table("\nDimers, deepest point at any distance (0.5 Å on, the wall included) - limit "
                "(reference's), eV: a hole inside the bond shows here\n",
                lambda d: f"{d['deepest below limit']:.2f} ({_fmt(d.get('ref deepest below limit'))})")
    groups = list(results[names[0]]["pull"])
    print("\n### Terminal atoms and groups pulled out to 11 Å: offset-free profile error vs "
          "GFN2-xTB / dissociation-energy error (eV); mean and worst over the groups\n")
    print("| model | profile error, H (mean / max) | profile error, groups | dissociation error "
          "(mean abs / max abs) | far end - limit (max abs) |\n|---|---|---|---|---|")
    for n in names:
        p = results[n]["pull"]
        h = [p[g].get("profile error", np.nan) for g in groups if g.startswith("H")]
        other = [p[g].get("profile error", np.nan) for g in groups if not g.startswith("H")]
        de = np.array([p[g].get("dissociation error", np.nan) for g in groups])
        far = max(abs(p[g]["far end - limit"]) for g in groups)
        print(f"| {n} | {_fmt(np.mean(h))} / {_fmt(np.max(h))} | {_fmt(np.mean(other))} / "
              f"{_fmt(np.max(other))} | {_fmt(np.mean(np.abs(de)))} / {_fmt(np.max(np.abs(de)))} | {far:.2g} |")
    print("\n### Two molecules from 1.6 Å contact to 11 Å: deepest point below 2 x E(molecule) "
          "(reference's) / offset-free profile error (eV); proton transfer: barrier on the "
          "IDPP path / own NEB barrier (eV), profile error on the path (meV)\n")
    print("| model | pair | transfer barrier, path / NEB | transfer profile error |\n|---|---|---|---|")
    for n in names:
        pr, tr = results[n]["pair"], results[n].get("transfer", {})
        neb = results[n].get("neb") or {}
        print(f"| {n} | {pr['deepest below limit']:.3f} ({_fmt(pr.get('ref deepest below limit'), '.3f')}) / "
              f"{_fmt(pr.get('profile error'), '.3f')} | {_fmt(tr.get('barrier on the IDPP path'), '.3f')} / "
              f"{_fmt(neb.get('barrier'), '.3f')} | {_fmt(1000 * tr.get('profile error', np.nan), '.0f')} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", required=True, help="training extxyz (start geometry, E_min)")
    parser.add_argument("--model", action="append", default=[], help="NAME=mlip model file")
    parser.add_argument("--mace", action="append", default=[], help="NAME=MACE model file")
    parser.add_argument("--mace-venv", default=os.environ.get("MACE_VENV"),
                        help="venv with mace-torch (default $MACE_VENV); needed with --mace")
    parser.add_argument("--mace-dtype", default="float32", help="the MACE model's dtype")
    parser.add_argument("--xtb", action="store_true", help="GFN2-xTB reference (tblite)")
    parser.add_argument("--no-neb", action="store_true", help="skip the NEB relaxations")
    parser.add_argument("--out", default="bench_extrapolation")
    args = parser.parse_args()
    if args.mace and not args.mace_venv:
        parser.error("--mace needs --mace-venv (or $MACE_VENV): MACE runs in its own venv")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    geoms, tags, e_min = build_probes(args.train)
    ase.io.write(out / "geometries.xyz", geoms)
    energies, timing, nebs = {}, {}, {}
    start = geoms[_idx(tags, probe="start")[0]]
    for spec in args.model:
        name, path = spec.split("=", 1)
        t = time.time()
        energies[name] = mlip_energies(path, geoms)
        if _idx(tags, probe="transfer") and not args.no_neb:
            from mlip.integrations.ase import MLIPCalculator

            nebs[name] = neb_barrier(start, lambda _numbers, path=path: MLIPCalculator(path, dtype="float64"))
        timing[name] = time.time() - t
    for spec in args.mace:
        name, path = spec.split("=", 1)
        t = time.time()
        energies[name] = mace_energies(path, geoms, args.mace_venv, args.mace_dtype)
        timing[name] = time.time() - t
    ref = None
    if args.xtb:
        t = time.time()
        ref = xtb_energies(geoms)
        if _idx(tags, probe="transfer") and not args.no_neb:
            nebs["GFN2-xTB"] = neb_barrier(start, D.xtb_calculator)
        timing["xtb"] = time.time() - t
    results = {n: summarize(e, tags, e_min, ref) for n, e in energies.items()}
    if ref is not None:
        results["GFN2-xTB"] = summarize(ref, tags, e_min, None)
    for n, neb in nebs.items():
        if neb is not None:  # each model's band, for a reference along it (tools/dft_on_path.py)
            ase.io.write(out / f"neb_{n}.xyz", neb.pop("images"))
        results[n]["neb"] = neb
    names = list(results)
    (out / "energies.json").write_text(json.dumps(
        {"tags": tags, "energies": {n: e.tolist() for n, e in energies.items()},
         "xtb": None if ref is None else ref.tolist(), "results": results, "seconds": timing},
        indent=1))
    failed = 0 if ref is None else int((~np.isfinite(ref)).sum())
    print(f"{len(geoms)} geometries; training-set minimum {e_min:.4f} eV; seconds "
          + ", ".join(f"{k} {v:.0f}" for k, v in timing.items())
          + (f"; GFN2-xTB SCF failed on {failed} geometries (left out of its profiles)" if ref is not None else ""))
    print_tables(results, names)
    if ref is not None:
        print("\nGFN2-xTB torsion barriers (eV): " + ", ".join(
            f"{b}: {r['barrier']:.2f}" for b, r in results["GFN2-xTB"]["torsion"].items()))


if __name__ == "__main__":
    main()
