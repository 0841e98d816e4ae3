"""Crystal properties of an fcc model against ASE's EMT (the Cu data's own reference).

For each model and for EMT itself: the E(V) curve of the 4-atom cubic cell (Birch-
Murnaghan fit: lattice constant, bulk modulus), elastic constants C11/C12/C44 from ±0.5 %
strains of the relaxed cell (stress), the vacancy formation energy in a 3x3x3 supercell
(positions relaxed, cell fixed) and a (111) slab (5 layers, 2x2, 12 Å vacuum, at each
method's own lattice constant): surface energy and the per-atom energy error of the slab
at EMT's lattice constant (the frame a bulk-only training set never shows).

    python tools/bench_properties.py --model cu=checkpoints/cu_emt_gaunt/model.pt [--model ...]

Prints a markdown table; --json writes the numbers.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
from ase.build import bulk, fcc111
from ase.calculators.emt import EMT
from ase.eos import EquationOfState
from ase.optimize import BFGS
from ase.units import GPa

A_GUESS = 3.59


def eos(calc, symbol: str):
    volumes, energies = [], []
    for a in np.linspace(0.94, 1.06, 13) * A_GUESS:
        atoms = bulk(symbol, "fcc", a=a, cubic=True)
        atoms.calc = calc
        volumes.append(atoms.get_volume())
        energies.append(atoms.get_potential_energy())
    v0, e0, b = EquationOfState(volumes, energies, eos="birchmurnaghan").fit()
    return v0 ** (1 / 3), e0 / 4, b / GPa  # the cubic cell: a = V^(1/3)


def elastic(calc, symbol: str, a: float, eps: float = 0.005):
    def stress(strain):
        atoms = bulk(symbol, "fcc", a=a, cubic=True)
        cell = atoms.cell.array @ (np.eye(3) + strain)
        atoms.set_cell(cell, scale_atoms=True)
        atoms.calc = calc
        return atoms.get_stress(voigt=False)

    e = np.zeros((3, 3))
    e[0, 0] = eps
    ds = (stress(e) - stress(-e)) / (2 * eps)
    c11, c12 = ds[0, 0], ds[1, 1]
    g = np.zeros((3, 3))
    g[1, 2] = g[2, 1] = eps / 2  # engineering shear strain eps
    c44 = (stress(g) - stress(-g))[1, 2] / (2 * eps)
    return c11 / GPa, c12 / GPa, c44 / GPa


def vacancy(calc, symbol: str, a: float) -> float:
    perfect = bulk(symbol, "fcc", a=a, cubic=True).repeat(3)
    perfect.calc = calc
    e_bulk = perfect.get_potential_energy()
    n = len(perfect)
    defect = perfect.copy()
    del defect[0]
    defect.calc = calc
    BFGS(defect, logfile=None).run(fmax=0.01, steps=200)
    return defect.get_potential_energy() - (n - 1) / n * e_bulk


def slab(symbol: str, a: float):
    s = fcc111(symbol, size=(2, 2, 5), a=a, vacuum=6.0)
    s.pbc = True
    return s


def surface(calc, symbol: str, a: float, e_atom: float) -> float:
    """Unrelaxed (111) surface energy [meV/Å^2] at lattice constant a."""
    s = slab(symbol, a)
    s.calc = calc
    area = np.linalg.norm(np.cross(s.cell[0], s.cell[1]))
    return 1000 * (s.get_potential_energy() - len(s) * e_atom) / (2 * area)


def properties(calc, symbol: str, a_ref: float | None = None) -> dict:
    a, e_atom, b = eos(calc, symbol)
    c11, c12, c44 = elastic(calc, symbol, a)
    out = {"a": a, "E_atom": e_atom, "B": b, "C11": c11, "C12": c12, "C44": c44,
           "E_vac": vacancy(calc, symbol, a), "gamma111": surface(calc, symbol, a, e_atom)}
    s = slab(symbol, a_ref if a_ref is not None else a)
    s.calc = calc
    out["slab_E_atom_at_ref_a"] = s.get_potential_energy() / len(s)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", default=[], help="NAME=mlip model file")
    parser.add_argument("--symbol", default="Cu")
    parser.add_argument("--dtype", default="float64")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    from mlip.calculator import MLIPCalculator

    ref = properties(EMT(), args.symbol)
    rows = {"EMT": ref}
    for spec in args.model:
        name, path = spec.split("=", 1)
        rows[name] = properties(MLIPCalculator(path, device="cpu", dtype=args.dtype), args.symbol, ref["a"])
    print("| method | a (Å) | B (GPa) | C11 | C12 | C44 (GPa) | E_vac (eV) | γ(111) (meV/Å²) | "
          "slab E/atom error (meV/atom) |\n|---|---|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        err = 1000 * (r["slab_E_atom_at_ref_a"] - ref["slab_E_atom_at_ref_a"])
        da = 100 * (r["a"] / ref["a"] - 1)
        db = 100 * (r["B"] / ref["B"] - 1)
        print(f"| {name} | {r['a']:.4f} ({da:+.2f} %) | {r['B']:.1f} ({db:+.1f} %) | {r['C11']:.1f} | "
              f"{r['C12']:.1f} | {r['C44']:.1f} | {r['E_vac']:.3f} | {r['gamma111']:.1f} | {err:+.1f} |")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)


if __name__ == "__main__":
    main()
