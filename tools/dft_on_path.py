"""DFT single points along a reaction path: is a model's barrier the training level's?

Reads a band of images (e.g. ``neb_<model>.xyz`` written by tools/bench_extrapolation.py)
and computes Kohn-Sham DFT energies with PySCF (``pip install pyscf pyscf-dispersion``; a
tool dependency, never imported by mlip/). The highest image along any path bounds that
level's barrier from above, so a model whose own band is flat where the DFT energies along
the same band are also flat has the barrier of its training data, not a vanished one.

    python tools/dft_on_path.py bench/neb_gaunt.xyz bench/neb_GFN2-xTB.xyz \\
        --xc PBE --basis def2-svp --disp d3bj

Prints per band the DFT energy of each image relative to the first (meV) and the highest
one; ``--out FILE`` also writes them as JSON. Closed-shell molecules use restricted KS;
an odd electron count (or ``--spin``) unrestricted KS.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import ase.io
import numpy as np
from ase.units import Hartree


def dft_energy(atoms: ase.Atoms, xc: str, basis: str, disp: str | None, spin: int | None,
               charge: int = 0) -> float:
    """Total energy (eV) of ``atoms`` in PySCF at ``xc``/``basis`` (+ dispersion)."""
    from pyscf import dft, gto

    mol = gto.M(atom=[(s, tuple(p)) for s, p in zip(atoms.get_chemical_symbols(),
                                                      atoms.positions, strict=True)],
                basis=basis, charge=charge, unit="Angstrom", verbose=0,
                spin=(int(atoms.numbers.sum() - charge) % 2) if spin is None else spin)
    mf = (dft.RKS(mol) if mol.spin == 0 else dft.UKS(mol)).density_fit()
    mf.xc = xc
    mf.conv_tol = 1e-10
    if disp:
        mf.disp = disp
    energy = mf.kernel()
    if not mf.converged:
        raise RuntimeError("SCF did not converge")
    return float(energy) * Hartree


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bands", nargs="+", help="extxyz files, one band of images each")
    parser.add_argument("--xc", default="PBE")
    parser.add_argument("--basis", default="def2-svp")
    parser.add_argument("--disp", default=None, help="dispersion (PySCF's mf.disp), e.g. d3bj")
    parser.add_argument("--spin", type=int, default=None, help="2S (default: 0 or 1 by electrons)")
    parser.add_argument("--out", default=None, help="JSON file for the energies")
    args = parser.parse_args(argv)
    results = {}
    for band in args.bands:
        images = ase.io.read(band, ":")
        t = time.time()
        e = np.array([dft_energy(im, args.xc, args.basis, args.disp, args.spin) for im in images])
        rel = 1000 * (e - e[0])
        results[Path(band).name] = {"relative_meV": rel.tolist(), "highest_meV": float(rel.max()),
                                    "seconds": time.time() - t}
        print(f"{Path(band).name}: {args.xc}/{args.basis}{'+' + args.disp if args.disp else ''} "
              f"along {len(images)} images, highest {rel.max():.1f} meV above the first "
              f"({time.time() - t:.0f} s)\n  " + " ".join(f"{x:.1f}" for x in rel))
    if args.out:
        Path(args.out).write_text(json.dumps({"settings": vars(args), "bands": results}, indent=1))


if __name__ == "__main__":
    main()
