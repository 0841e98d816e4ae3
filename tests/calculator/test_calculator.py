"""ASE calculator: equals the model, finite differences, stress, errors, Verlet skin."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import ase
import ase.io
import numpy as np
import pytest
import torch
from ase.build import bulk
from ase.calculators.calculator import PropertyNotImplementedError
from ase.md.velocitydistribution import thermalize_momenta
from ase.md.verlet import VelocityVerlet
from ase.units import fs

import mlip
from mlip.calculator import (
    AtomsTooCloseError,
    MLIPCalculator,
    NonFiniteOutputError,
    UnknownElementError,
)
from mlip.data import keys
from mlip.graph.build import atoms_to_batch
from mlip.model.io import load_model, save_model

# Model files written by old versions of mlip, with those versions' predictions (README.md there).
LEGACY_MODELS = Path(__file__).resolve().parent / "data"


def test_calculator_equals_model(trained_acac_model, copper_model, tiny):
    model, frames = trained_acac_model
    atoms = frames[3].copy()
    atoms.calc = MLIPCalculator(model, device="cpu")
    ref = model(atoms_to_batch([atoms], model.cutoff, dtype=torch.float64))
    assert atoms.get_potential_energy() == pytest.approx(float(ref[keys.ENERGY][0].detach()), abs=1e-9)
    np.testing.assert_allclose(atoms.get_forces(), ref[keys.FORCES].detach().numpy(), atol=1e-10)
    np.testing.assert_allclose(atoms.get_potential_energies().sum(), atoms.get_potential_energy())
    with pytest.raises(PropertyNotImplementedError):
        atoms.get_stress()
    cu = ase.io.read(tiny / "cu_emt_10.xyz", 6)
    cu.calc = MLIPCalculator(copper_model, device="cpu")
    ref = copper_model(atoms_to_batch([cu], copper_model.cutoff, dtype=torch.float64),
                       compute_stress=True)
    s = ref[keys.STRESS][0].detach().numpy()
    np.testing.assert_allclose(cu.get_stress(), [s[0, 0], s[1, 1], s[2, 2], s[1, 2], s[0, 2], s[0, 1]],
                               atol=1e-12)


def test_forces_match_finite_differences_through_calculator(trained_acac_model):
    model, frames = trained_acac_model
    atoms = frames[5].copy()
    atoms.calc = MLIPCalculator(model, device="cpu", skin=0.0)
    forces = atoms.get_forces()
    h = 1e-3
    for i, k in ((0, 0), (7, 2), (12, 1)):
        energies = []
        for step, coeff in ((-2, 1 / 12), (-1, -8 / 12), (1, 8 / 12), (2, -1 / 12)):
            moved = atoms.copy()
            moved.calc = atoms.calc
            moved.positions[i, k] += step * h
            energies.append(coeff * moved.get_potential_energy() / h)
        assert -sum(energies) == pytest.approx(forces[i, k], abs=1e-7)


def test_stress_matches_strained_cells(copper_model, tiny):
    cu = ase.io.read(tiny / "cu_emt_10.xyz", 6)  # sheared, non-orthogonal
    cu.calc = MLIPCalculator(copper_model, device="cpu")
    stress = cu.get_stress(voigt=False)
    volume, h = cu.get_volume(), 1e-4
    for a, b in ((0, 0), (1, 2), (0, 1)):
        d = 0.0
        for step, coeff in ((-2, 1 / 12), (-1, -8 / 12), (1, 8 / 12), (2, -1 / 12)):
            eps = np.zeros((3, 3))
            eps[a, b] += 0.5 * step * h
            eps[b, a] += 0.5 * step * h
            strained = cu.copy()
            strained.set_cell(cu.cell.array @ (np.eye(3) + eps), scale_atoms=True)
            strained.calc = cu.calc
            d += coeff * strained.get_potential_energy() / h
        assert d / volume == pytest.approx(stress[a, b], abs=1e-8)


def test_unknown_element_and_close_atoms(trained_acac_model):
    model, frames = trained_acac_model
    calc = MLIPCalculator(model, device="cpu")
    atoms = frames[0].copy()
    atoms.numbers[4] = 26  # Fe
    atoms.calc = calc
    with pytest.raises(UnknownElementError, match=r"\['Fe'\] at atom indices \[4\]"):
        atoms.get_potential_energy()
    atoms = frames[0].copy()
    atoms.positions[9] = atoms.positions[2] + [0.1, 0.0, 0.0]
    for fixed in (False, True):
        atoms.calc = MLIPCalculator(model, device="cpu", min_distance=0.5, fixed_shapes=fixed)
        with pytest.raises(AtomsTooCloseError, match=r"atoms (2|9) .* and (9|2)"):
            atoms.get_potential_energy()


def test_model_file_round_trip(trained_acac_model, acac_backbone, tmp_path):
    model, frames = trained_acac_model
    path = save_model(tmp_path / "m.pt", model, {"backbone": acac_backbone}, 12.0)
    a, b = frames[1].copy(), frames[1].copy()
    a.calc = MLIPCalculator(model, device="cpu")
    b.calc = MLIPCalculator(path, device="auto")
    assert a.get_potential_energy() == b.get_potential_energy()
    np.testing.assert_array_equal(a.get_forces(), b.get_forces())


def test_skin_reuse_equals_rebuilding(trained_acac_model):
    """200 NVE steps: a skin calculator (few rebuilds) == rebuilding every step, and so is
    the fixed-shape list (unfiltered, padded; the inputs of CUDA graphs)."""
    model, frames = trained_acac_model
    runs = []
    for skin, fixed in ((1.0, False), (0.0, False), (1.0, True)):
        atoms = frames[2].copy()
        thermalize_momenta(atoms, 300, rng=np.random.default_rng(3))
        calc = MLIPCalculator(model, device="cpu", skin=skin, min_distance=None, fixed_shapes=fixed)
        atoms.calc = calc
        dyn = VelocityVerlet(atoms, 0.5 * fs)
        dyn.run(200)
        runs.append((atoms.positions.copy(), atoms.get_forces(), calc.num_builds))
    (pos_a, f_a, builds_a), (pos_b, f_b, builds_b), (pos_c, f_c, builds_c) = runs
    assert builds_a < builds_b / 3, (builds_a, builds_b)  # the skin really saved rebuilds
    assert builds_c == builds_a
    for pos, f in ((pos_a, f_a), (pos_c, f_c)):
        np.testing.assert_allclose(pos, pos_b, atol=1e-10)
        np.testing.assert_allclose(f, f_b, atol=1e-9)


def test_nan_output_raises(trained_acac_model):
    model, frames = trained_acac_model
    broken = copy.deepcopy(model)
    with torch.no_grad():
        next(broken.backbone.parameters()).fill_(float("nan"))
    atoms = frames[0].copy()
    atoms.calc = MLIPCalculator(broken, device="cpu")
    with pytest.raises(NonFiniteOutputError, match="NaN/inf"):
        atoms.get_forces()


def test_partially_periodic_slab(copper_model):
    """pbc (True, True, False): calculator == model, forces == finite differences."""
    slab = bulk("Cu", "fcc", a=3.6, cubic=True).repeat((2, 2, 2))
    slab.center(vacuum=4.0, axis=2)
    slab.pbc = (True, True, False)
    slab.rattle(0.05, seed=2)
    slab.calc = MLIPCalculator(copper_model, device="cpu", skin=0.0)
    ref = copper_model(atoms_to_batch([slab], copper_model.cutoff, dtype=torch.float64), compute_stress=True)
    assert slab.get_potential_energy() == pytest.approx(float(ref[keys.ENERGY][0].detach()), abs=1e-9)
    np.testing.assert_allclose(slab.get_forces(), ref[keys.FORCES].detach().numpy(), atol=1e-10)
    h, (i, k) = 1e-4, (5, 2)
    energies = []
    for step in (1, -1):
        moved = slab.copy()
        moved.calc = slab.calc
        moved.positions[i, k] += step * h
        energies.append(moved.get_potential_energy())
    assert -(energies[0] - energies[1]) / (2 * h) == pytest.approx(slab.get_forces()[i, k], abs=1e-6)


def test_callers_model_untouched_and_cached(trained_acac_model):
    """A float32 calculator casts a copy; repeated queries at one geometry do not recompute."""
    model, frames = trained_acac_model
    atoms = frames[0].copy()
    calc = MLIPCalculator(model, device="cpu", dtype="float32")
    atoms.calc = calc
    atoms.get_forces()
    atoms.get_potential_energy()
    atoms.get_potential_energies()
    assert calc.timings["calls"] == 1
    assert next(model.parameters()).dtype == torch.float64
    assert calc.dtype == torch.float32
    atoms.positions[0] += 0.01
    atoms.get_forces()
    assert calc.timings["calls"] == 2 and calc.num_builds == 1  # moved < skin / 2: reused
    atoms.set_cell(atoms.cell.array + np.eye(3))  # a cell change forces a rebuild
    atoms.get_forces()
    assert calc.num_builds == 2


@pytest.mark.parametrize("version", [1, 2, 3])
def test_old_model_files_still_load(bundled_acac, version):
    """Genuine format-1, 2 and 3 files, written by the last commits that wrote those formats
    or that energy expression (see tests/calculator/data/README.md), load with today's code
    and give the old code's own predictions: acac frames 0 and 1 and a rattled periodic
    4-atom Cu cell, through ``load_model`` and through the calculator, in float64. Formats 1
    and 2 had one scalar shift in the coordination baseline and no "baseline" in the model
    config; format 1 also kept float64 E0s as a plain tensor and a 120-row Z table. The
    format-3 file uses the per-element shift switched on by an atom's first neighbour, with
    a learned correction, which the default no longer is. Measured with torch 2.13 on CPU:
    energies bitwise equal, forces within 7e-16 eV/Å (summation order); asserted to 1e-10."""
    refs = json.loads((LEGACY_MODELS / "legacy_models.json").read_text(encoding="utf-8"))
    record = refs["models"][str(version)]
    path = LEGACY_MODELS / record["file"]
    payload = torch.load(path, map_location="cpu", weights_only=True)  # no pickled classes
    assert payload["format_version"] == version
    expression = "coordination" if version <= 2 else "per_element"
    assert payload["model_config"].get("baseline") == (None if version <= 2 else expression)
    assert mlip.load_model is load_model
    model = load_model(path)
    assert model.baseline == expression and model.learn_shift == (version >= 3)
    assert next(model.parameters()).dtype == torch.float64
    calc = MLIPCalculator(path, device="cpu", dtype=torch.float64)
    assert calc.model.baseline == expression
    for structure in record["structures"]:
        atoms = ase.Atoms(structure["numbers"], structure["positions"], cell=structure["cell"],
                          pbc=structure["pbc"])
        if structure["frame"] is not None:  # a frame of the bundled file, as stored
            frame = ase.io.read(bundled_acac / "train_300K.xyz", structure["frame"])
            np.testing.assert_array_equal(atoms.numbers, frame.numbers)
            np.testing.assert_array_equal(atoms.positions, frame.positions)
        out = model(atoms_to_batch([atoms], model.cutoff, dtype=torch.float64))
        atoms.calc = calc
        for name, energy, forces in (
            ("load_model", float(out[keys.ENERGY][0].detach()), out[keys.FORCES].detach().numpy()),
            ("calculator", atoms.get_potential_energy(), atoms.get_forces()),
        ):
            where = f"{record['file']}, {structure['name']}, {name}"
            assert energy == pytest.approx(structure["energy"], rel=0, abs=1e-10), where
            np.testing.assert_allclose(forces, structure["forces"], rtol=0, atol=1e-10, err_msg=where)


def test_check_state_reports_what_ase_reports(trained_acac_model):
    """The calculator's exact state check lists the same changes as ASE's compare_atoms,
    and results are reused only for an unchanged system."""
    from ase.calculators.calculator import compare_atoms

    model, frames = trained_acac_model
    atoms = frames[0].copy()
    calc = MLIPCalculator(model, device="cpu")
    atoms.calc = calc
    assert sorted(calc.check_state(atoms)) == sorted(compare_atoms(None, atoms))
    atoms.get_forces()
    edits = {
        "none": lambda a: None,
        "positions": lambda a: a.positions.__setitem__((0, 0), a.positions[0, 0] + 1e-6),
        "numbers": lambda a: a.numbers.__setitem__(0, 8),
        "cell": lambda a: a.set_cell(np.eye(3) * 20.0),
        "pbc": lambda a: a.set_pbc(True),
        "charges": lambda a: a.set_initial_charges(np.ones(len(a))),
        "momenta": lambda a: a.set_momenta(np.ones((len(a), 3))),
    }
    for name, edit in edits.items():
        changed = atoms.copy()
        edit(changed)
        assert sorted(calc.check_state(changed)) == sorted(compare_atoms(calc.atoms, changed)), name
    calls = calc.timings["calls"]
    atoms.get_forces(), atoms.get_potential_energy()
    assert calc.timings["calls"] == calls  # unchanged: cached
    atoms.positions[3] += 0.01
    atoms.get_forces()
    assert calc.timings["calls"] == calls + 1
