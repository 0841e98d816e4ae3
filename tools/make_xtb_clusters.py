"""Condensed-phase GFN2-xTB frames of one molecule: monomers, dimers and liquid-like clusters.

    # 850 frames (300 monomers, 300 dimers, 250 clusters of 60-210 atoms): 7.3 min, mostly on
    # one core (the packing is serial, the labels use --workers)
    python tools/make_xtb_clusters.py --molecule data/acac/train_300K.xyz data/acac/train_600K.xyz \
        --out data/acac_xtb --monomers 300 --dimers 300 --clusters 250 --per-box 10 \
        --densities 0.9,1.0,1.05 --contact-range 1.9,2.2 --shell 3.0 --workers 2

Why: a model trained on gas-phase frames of single molecules knows nothing about the space
between molecules, so MD of a liquid box falls into holes there. This tool
makes the missing frames at the level of tools/make_xtb_dataset.py (same tblite settings,
same isolated-atom energies), and relabels the monomers with the same method, so one model
can be trained on one consistent energy surface.

Recipe (every number is an option):

1. Intramolecular geometries are drawn at random from the --molecule files (for acac: the
   DFT training frames, which were sampled from xTB MD at 300 and 600 K). All frames must
   have the same atoms in the same order.
2. ``monomer``: one drawn geometry.
3. ``dimer``: two drawn geometries, each uniformly randomly rotated; the second approaches
   the first along a random direction until the closest intermolecular pair is at a distance
   drawn uniformly from --dimer-range (default 1.6-5.0 Å: the repulsive wall to near
   dissociation).
4. ``cluster``: a periodic liquid of --box-count rigid copies at a density drawn from
   --densities is packed with tools/make_box.py's packer (no intermolecular pair below a
   distance drawn from --contact-range), every copy is replaced by a drawn geometry in the
   copy's orientation, and one molecule with every molecule that has an atom within
   --shell Å of it (minimum image) is cut out as a non-periodic cluster: the first shell of
   a liquid. Periodic xTB is about 7x slower than a cluster of the same size (120 atoms:
   6.6 s vs 1.0 s on one core), so the liquid is sampled through clusters.
5. Labels: GFN2-xTB through tblite, as make_xtb_dataset.py. Frames whose SCF fails are
   dropped and counted. Split at random by frame: --val-fraction / --test-fraction.

Writes train.xyz, val.xyz, test.xyz, isolated_atoms.xyz and manifest.json through a temporary
folder, moved into place at the end (an interrupted run leaves nothing). Each frame carries
``config_type`` (monomer / dimer / cluster), ``n_molecules`` and ``atoms_per_molecule``.
Deterministic for a given seed and ``--workers`` >= 2 (workers run tblite on one thread).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import ase
import ase.io
import numpy as np
from scipy.spatial.transform import Rotation

TOOLS = Path(__file__).resolve().parent


def _tool(name: str):
    spec = importlib.util.spec_from_file_location(name, TOOLS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _min_distance(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)).min())


def _rotated(geometry: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    centred = geometry - geometry.mean(0)
    return Rotation.random(random_state=rng).apply(centred)


def make_dimer(geometries: np.ndarray, lo: float, hi: float, rng: np.random.Generator) -> np.ndarray:
    """Two rotated molecules whose closest pair is at a distance drawn from [lo, hi]."""
    first = _rotated(geometries[rng.integers(len(geometries))], rng)
    second = _rotated(geometries[rng.integers(len(geometries))], rng)
    target = rng.uniform(lo, hi)
    direction = rng.normal(size=3)
    direction /= np.linalg.norm(direction)
    far = np.abs(first).max() * 2 + np.abs(second).max() * 2 + hi + 1.0
    # walk in from far until the contact is closer than the target, then bisect
    step, t = 0.1, far
    while t > 0 and _min_distance(first, second + t * direction) > target:
        t -= step
    lo_t, hi_t = t, t + step
    for _ in range(40):
        mid = 0.5 * (lo_t + hi_t)
        if _min_distance(first, second + mid * direction) > target:
            hi_t = mid
        else:
            lo_t = mid
    return np.concatenate([first, second + hi_t * direction])


def make_clusters(geometries: np.ndarray, numbers: np.ndarray, count: int, density: float,
                  contact: float, shell: float, per_box: int, seed: int) -> list[np.ndarray]:
    """First-shell clusters cut from one packed periodic liquid (positions, molecules whole)."""
    make_box = _tool("make_box")
    rng = np.random.default_rng(seed)
    template = ase.Atoms(numbers=numbers, positions=geometries[0])
    edge = make_box.edge_from_density(template, count, density)
    packer = make_box.Packer(geometries[0], count, contact, seed)
    packer.insert(edge * 1.5)
    scale = 1.5
    while packer.edge > edge * (1 + 1e-9):
        scale *= 0.97
        packer.shrink(max(edge, edge * scale))
        if packer.repair(200000) < 0:
            raise RuntimeError(f"no contact-free packing at {density} g/cm^3, contact {contact} Å")
    molecules = []
    for i in range(count):  # a drawn geometry, aligned onto the template, in copy i's pose
        drawn = geometries[rng.integers(len(geometries))]
        drawn = drawn - drawn.mean(0)
        onto_template = Rotation.align_vectors(packer.ref, drawn)[0]
        molecules.append((packer.rot[i] * onto_template).apply(drawn) + packer.centre[i])
    clusters = []
    for centre in rng.choice(count, size=min(per_box, count), replace=False):
        core = molecules[centre]
        members = [core]
        for j, other in enumerate(molecules):
            if j == centre:
                continue
            shift = edge * np.round((other.mean(0) - core.mean(0)) / edge)
            image = other - shift
            if _min_distance(core, image) < shell:
                members.append(image)
        clusters.append(np.concatenate(members) - core.mean(0))
    return clusters


def label_task(task: tuple) -> dict:
    """Label a list of (kind, positions) frames with xTB (runs in a worker)."""
    numbers, n_mol_atoms, frames = task
    xtb = _tool("make_xtb_dataset")
    calc = xtb._calculator()
    out, failed = [], 0
    for kind, positions in frames:
        n_mol = len(positions) // n_mol_atoms
        atoms = ase.Atoms(numbers=np.tile(numbers, n_mol), positions=positions)
        labelled = xtb._label(atoms, calc)
        if labelled is None:
            failed += 1
            continue
        labelled.info.update(config_type=kind, n_molecules=n_mol, atoms_per_molecule=n_mol_atoms)
        out.append(labelled)
    return {"frames": out, "failed": failed}


def _init_worker() -> None:
    os.environ["OMP_NUM_THREADS"] = "1"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--molecule", nargs="+", required=True,
                        help="structure files whose frames give the intramolecular geometries")
    parser.add_argument("--out", required=True, help="output folder (must not exist)")
    parser.add_argument("--monomers", type=int, default=300)
    parser.add_argument("--dimers", type=int, default=300)
    parser.add_argument("--clusters", type=int, default=250)
    parser.add_argument("--dimer-range", default="1.6,5.0", help="closest-pair distance [Å], lo,hi")
    parser.add_argument("--densities", default="0.9,1.0,1.05", help="g/cm^3 of the packed liquids")
    parser.add_argument("--contact-range", default="1.9,2.2",
                        help="smallest intermolecular distance of the packing [Å], lo,hi")
    parser.add_argument("--box-count", type=int, default=27, help="molecules per packed liquid")
    parser.add_argument("--shell", type=float, default=3.0,
                        help="a molecule joins the cluster with an atom this close to the centre one [Å]")
    parser.add_argument("--per-box", type=int, default=10, help="clusters cut from each liquid")
    parser.add_argument("--val-fraction", type=float, default=0.05)
    parser.add_argument("--test-fraction", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args(argv)
    out = Path(args.out)
    if out.exists():
        raise SystemExit(f"make_xtb_clusters: {out} exists; choose a new folder")
    try:
        import tblite.ase  # noqa: F401
    except ImportError:
        raise SystemExit("make_xtb_clusters: needs tblite (pip install 'mlip[xtb]' or 'tblite>=0.4')") from None
    source = [a for path in args.molecule for a in ase.io.read(path, ":")]
    numbers = source[0].numbers
    for k, a in enumerate(source):
        if not np.array_equal(a.numbers, numbers):
            raise SystemExit(f"make_xtb_clusters: frame {k} of {' '.join(args.molecule)} has other "
                             "atoms than frame 0; all frames must be the same molecule")
    geometries = np.stack([a.positions for a in source])
    n_at = len(numbers)
    rng = np.random.default_rng(args.seed)
    dlo, dhi = (float(x) for x in args.dimer_range.split(","))
    clo, chi = (float(x) for x in args.contact_range.split(","))
    densities = [float(x) for x in args.densities.split(",")]
    from tqdm import tqdm

    start = time.perf_counter()
    frames: list[tuple[str, np.ndarray]] = []
    frames += [("monomer", geometries[i]) for i in rng.integers(len(geometries), size=args.monomers)]
    frames += [("dimer", make_dimer(geometries, dlo, dhi, rng)) for _ in range(args.dimers)]
    n_boxes = -(-args.clusters // args.per_box)
    clusters, loosened = [], 0
    for b in tqdm(range(n_boxes), desc="packing liquids", unit=" box"):
        density, contact = float(rng.choice(densities)), float(rng.uniform(clo, chi))
        for attempt in range(4):  # a dense liquid with a wide contact may not pack: loosen it
            try:
                clusters += make_clusters(geometries, numbers, args.box_count, density, contact,
                                          args.shell, args.per_box, args.seed * 100_003 + b)
                break
            except RuntimeError as err:
                if attempt == 3:
                    raise SystemExit(f"make_xtb_clusters: {out}: {err}; lower --densities or "
                                     "--contact-range") from None
                contact -= 0.1
                loosened += 1
    frames += [("cluster", c) for c in clusters[:args.clusters]]
    sizes = [len(p) for _, p in frames]
    order = np.argsort(sizes)[::-1]  # largest first, dealt round-robin: balanced workers
    chunks = [[frames[i] for i in order[k::max(1, args.workers * 8)]]
              for k in range(max(1, args.workers * 8))]
    tasks = [(numbers, n_at, c) for c in chunks if c]
    if args.workers > 1:
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(args.workers, initializer=_init_worker) as pool:
            results = list(tqdm(pool.imap(label_task, tasks), total=len(tasks), desc="xTB labels",
                                unit=" chunk"))
    else:
        results = [label_task(t) for t in tqdm(tasks, desc="xTB labels", unit=" chunk")]
    labelled = [f for r in results for f in r["frames"]]
    failed = sum(r["failed"] for r in results)
    idx = np.random.default_rng(args.seed + 1).permutation(len(labelled))
    n_val, n_test = int(round(args.val_fraction * len(idx))), int(round(args.test_fraction * len(idx)))
    files = {"val": [labelled[i] for i in idx[:n_val]],
             "test": [labelled[i] for i in idx[n_val:n_val + n_test]],
             "train": [labelled[i] for i in idx[n_val + n_test:]]}
    xtb = _tool("make_xtb_dataset")
    files["isolated_atoms"] = xtb.isolated_atoms(sorted({int(z) for z in numbers}))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        for key, group in files.items():
            ase.io.write(tmp / f"{key}.xyz", group, format="extxyz")
        kinds = {k: sum(f.info["config_type"] == k for f in labelled) for k in ("monomer", "dimer", "cluster")}
        cluster_atoms = [len(f) for f in labelled if f.info["config_type"] == "cluster"]
        manifest = {"recipe": {**vars(args), "xtb": xtb.XTB_SETTINGS}, "kinds": kinds,
                    "cluster_atoms": {"min": min(cluster_atoms, default=0), "max": max(cluster_atoms, default=0),
                                      "mean": round(float(np.mean(cluster_atoms)), 1) if cluster_atoms else 0},
                    "counts": {k: len(v) for k, v in files.items()}, "failed_frames": failed,
                    "packings_loosened_by_0.1A": loosened, "seconds": round(time.perf_counter() - start, 1)}
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    print(f"make_xtb_clusters: {kinds['monomer']} monomers, {kinds['dimer']} dimers, {kinds['cluster']} "
          f"clusters ({manifest['cluster_atoms']['min']}-{manifest['cluster_atoms']['max']} atoms, mean "
          f"{manifest['cluster_atoms']['mean']}); train/val/test {len(files['train'])}/{len(files['val'])}/"
          f"{len(files['test'])}; {failed} dropped (SCF failure); {manifest['seconds']:.0f} s; wrote {out}")


if __name__ == "__main__":
    sys.exit(main())
