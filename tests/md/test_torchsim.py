"""torch-sim adapter: batched mixed systems == the ASE calculator; NVT and FIRE through torch-sim."""

from __future__ import annotations

import copy
import subprocess
import sys

import numpy as np
import pytest
import torch
from ase.build import bulk, molecule

ts = pytest.importorskip("torch_sim", reason="optional extra mlip[torchsim] not installed")

from mlip.calculator import MLIPCalculator  # noqa: E402
from mlip.inference.errors import AtomsTooCloseError, NonFiniteOutputError  # noqa: E402
from mlip.integrations.torchsim import MLIPModel  # noqa: E402
from mlip.model.build import build_potential  # noqa: E402
from mlip.model.io import save_model  # noqa: E402
from mlip.model.potential import UnknownElementError  # noqa: E402

CPU = torch.device("cpu")
ELEMENTS = [1, 6, 8, 29]
CUTOFF = 4.0  # [Å]


@pytest.fixture(scope="module")
def potential(acac_backbone):
    """A random (untrained) float64 H/C/O/Cu model: the identities tested hold for any weights."""
    torch.manual_seed(3)
    model = build_potential({"backbone": acac_backbone}, ELEMENTS, [-13.6, -1029.0, -2041.0, -3.5],
                            0.5, -0.5, CUTOFF, 20.0)
    return model.double().eval()


def boxed_molecule(name: str = "CH3OH", box: float = 14.0):
    """A molecule in a periodic box wider than its extent + cutoff: it sees no image."""
    atoms = molecule(name)
    atoms.rattle(0.02, seed=1)
    atoms.set_cell([box, box, box])
    atoms.center()
    atoms.pbc = True
    return atoms


def copper(seed: int = 2):
    """A rattled, slightly non-orthogonal periodic fcc Cu cell (8 atoms)."""
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat((2, 1, 1))
    atoms.set_cell(atoms.cell.array @ np.array([[1.0, 0.03, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]),
                   scale_atoms=True)
    atoms.rattle(0.05, seed=seed)
    return atoms


@pytest.mark.parametrize("fixed_shapes", [False, True])
def test_batch_equals_calculator_per_system(potential, fixed_shapes):
    """One torch-sim call on [methanol in a box, a Cu cell, water in a smaller box] gives each
    system's energy, forces and stress as the ASE calculator does, float64; also on the
    fixed-shape list of CUDA graphs."""
    systems = [boxed_molecule(), copper(), boxed_molecule("H2O", box=12.0)]
    model = MLIPModel(potential, device="cpu", dtype=torch.float64, fixed_shapes=fixed_shapes)
    state = ts.initialize_state(systems, CPU, torch.float64)
    out = model(state)
    assert out["energy"].shape == (3,) and out["energy"].dtype == torch.float64
    assert out["forces"].shape == (state.n_atoms, 3) and out["stress"].shape == (3, 3, 3)
    offsets = np.cumsum([0] + [len(a) for a in systems])
    for k, atoms in enumerate(systems):
        atoms = atoms.copy()
        atoms.calc = MLIPCalculator(potential, device="cpu")
        np.testing.assert_allclose(out["energy"][k].item(), atoms.get_potential_energy(),
                                   rtol=0, atol=1e-9)
        np.testing.assert_allclose(out["forces"][offsets[k]:offsets[k + 1]].numpy(),
                                   atoms.get_forces(), rtol=0, atol=1e-10)
        # torch-sim and ASE share the stress sign (tension > 0): passed through unchanged
        np.testing.assert_allclose(out["stress"][k].numpy(), atoms.get_stress(voigt=False),
                                   rtol=0, atol=1e-11)
    # The box is invisible to the molecule: energy and forces equal the free molecule's.
    free = systems[0].copy()
    free.pbc = False
    free.calc = MLIPCalculator(potential, device="cpu")
    np.testing.assert_allclose(out["energy"][0].item(), free.get_potential_energy(), rtol=0, atol=1e-9)
    np.testing.assert_allclose(out["forces"][:offsets[1]].numpy(), free.get_forces(), rtol=0, atol=1e-10)


def test_flags_dtype_files_and_errors(potential, acac_backbone, tmp_path):
    """compute_* flags, a float32 model from a model file, outputs in the state's dtype, a
    dict state, the torch-sim validator, and errors that name the system."""
    path = save_model(tmp_path / "model.pt", potential, {"backbone": acac_backbone}, 20.0)
    model = MLIPModel(path, device="cpu", dtype="float32", compute_stress=False)
    assert model.dtype == torch.float32 and model.device == CPU
    systems = [copper(), boxed_molecule()]
    out = model(ts.initialize_state(systems, CPU, torch.float32))
    assert set(out) == {"energy", "forces"} and out["forces"].dtype == torch.float32
    reference = MLIPModel(potential, device="cpu")(ts.initialize_state(systems, CPU, torch.float64))
    state64 = ts.initialize_state(systems, CPU, torch.float64)
    out64 = model(state64)  # computed in float32, returned in the state's float64
    assert out64["energy"].dtype == out64["forces"].dtype == torch.float64
    torch.testing.assert_close(out64["forces"], reference["forces"], rtol=0, atol=1e-4)
    fields = {k: getattr(state64, k) for k in ("positions", "cell", "pbc", "atomic_numbers",
                                               "system_idx")}
    torch.testing.assert_close(model(fields)["energy"], out64["energy"], rtol=0, atol=0)
    with pytest.raises(ValueError, match="state is on cpu but the model on meta"):
        MLIPModel(potential, device="meta")(state64)

    free_molecule = molecule("H2O")  # pbc False for the whole state: zero stress
    out = MLIPModel(potential, device="cpu", compute_forces=False)(
        ts.initialize_state([free_molecule], CPU, torch.float64))
    assert set(out) == {"energy", "stress"} and torch.all(out["stress"] == 0)

    from torch_sim.models.interface import validate_model_outputs

    si_fe = build_potential({"backbone": acac_backbone}, [14, 26], [-1.0, -2.0], 0.5, 0.0, CUTOFF, 20.0)
    validate_model_outputs(MLIPModel(si_fe.double(), device="cpu"), CPU, torch.float64)

    with pytest.raises(UnknownElementError, match="torch-sim system 1"):
        model(ts.initialize_state([copper(), bulk("Si", "diamond", a=5.43)], CPU, torch.float32))
    broken = copy.deepcopy(potential)
    with torch.no_grad():
        next(broken.backbone.parameters()).fill_(float("nan"))
    with pytest.raises(NonFiniteOutputError, match=r"torch-sim system\(s\) \[0, 1\]"):
        MLIPModel(broken, device="cpu")(state64)
    squeezed = copper()
    squeezed.positions[1] = squeezed.positions[0] + [0.3, 0.0, 0.0]
    too_close = r"torch-sim system 1: atoms [01] .* 0.300 Å apart.*min_distance=None disables"
    with pytest.raises(AtomsTooCloseError, match=too_close):
        model(ts.initialize_state([copper(), squeezed], CPU, torch.float32))


def test_nvt_langevin_batched(potential):
    """30 steps of torch-sim's NVT Langevin (BAOAB) on a molecule and a Cu cell: finite, and
    each system's temperature stays in a sane range around the target."""
    model = MLIPModel(potential, device="cpu", dtype=torch.float64)
    state = ts.initialize_state([boxed_molecule(), copper()], CPU, torch.float64)
    kT = torch.tensor(300.0 * ts.units.MetalUnits.temperature, dtype=torch.float64)
    dt = torch.tensor(0.5e-3 * ts.units.MetalUnits.time, dtype=torch.float64)  # 0.5 fs (unit: ps)
    init, update = ts.nvt_langevin(model, dt=dt, kT=kT, gamma=1.0 / (20 * dt), seed=0)
    state = init(state)
    temperatures = []
    for _ in range(30):
        state = update(state)
        kinetic_T = ts.calc_kT(masses=state.masses, momenta=state.momenta,
                               system_idx=state.system_idx) / ts.units.MetalUnits.temperature
        temperatures.append(kinetic_T)
    temperatures = torch.stack(temperatures)
    assert torch.isfinite(state.positions).all() and torch.isfinite(state.energy).all()
    assert torch.isfinite(temperatures).all()
    assert (temperatures > 10).all() and (temperatures < 3000).all(), temperatures[-1]
    assert model.neighbors.builds < 31  # the skin lists are reused (62 builds without)


def test_fire_relaxation_batched(potential):
    """torch-sim's batched FIRE lowers each system's energy and its largest force; its
    cell-relaxing FIRE (cell force -V (stress + P)) relaxes a strained cell, which it could
    not with the wrong stress sign."""
    model = MLIPModel(potential, device="cpu", dtype=torch.float64)
    state = ts.initialize_state([boxed_molecule(), copper()], CPU, torch.float64)
    init, step = ts.optimizers.fire(model)
    state = init(state)
    e0, fmax0 = state.energy.clone(), ts.quantities.systemwise_max_force(state)
    for _ in range(40):
        state = step(state)
    fmax = ts.quantities.systemwise_max_force(state)
    assert (state.energy < e0).all(), (e0, state.energy)
    assert (fmax < fmax0).all(), (fmax0, fmax)

    # A perfect fcc cell has no force on any atom: only the cell can lower the energy, and
    # with the wrong stress sign it would climb.
    init, step = ts.unit_cell_fire(MLIPModel(potential, device="cpu", dtype=torch.float64))
    state = init(ts.initialize_state([bulk("Cu", "fcc", a=3.75, cubic=True)], CPU, torch.float64))
    assert state.forces.abs().max() < 1e-10
    e0, v0, s0 = state.energy.clone(), state.volume.clone(), state.stress.clone()
    for _ in range(40):
        state = step(state)
    assert (state.energy < e0 - 1e-3).all(), (e0, state.energy)
    assert torch.sign(state.volume - v0) == -torch.sign(torch.trace(s0[0]))  # shrinks under tension
    assert state.stress.abs().max() < 0.1 * s0.abs().max(), (s0, state.stress)


def test_importing_mlip_does_not_import_torch_sim():
    code = ("import sys, mlip, mlip.calculator, mlip.md.replicas, mlip.md.ase_driver, mlip.cli.main; "
            "assert 'torch_sim' not in sys.modules, 'torch_sim imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_missing_torch_sim_says_what_to_install(monkeypatch):
    monkeypatch.delitem(sys.modules, "mlip.integrations.torchsim")
    monkeypatch.setitem(sys.modules, "torch_sim", None)  # as if not installed
    with pytest.raises(ImportError, match=r"pip install 'mlip\[torchsim\]'"):
        import mlip.integrations.torchsim  # noqa: F401
