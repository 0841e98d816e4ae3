"""The energy expression: by default nothing depends on the number of neighbours (no shift:
an isolated atom has E0, separated fragments the sum of their energies, and a model whose
backbone outputs nothing binds nothing); a constant shift always on, or the older forms
switched by neighbours, only on request (and for old files)."""

from __future__ import annotations

import ase
import numpy as np
import pytest
import torch

from mlip.data.stats import compute_statistics
from mlip.data.structure import Structure
from mlip.model.build import build_potential
from mlip.testing import physics

BACKBONE = {"class_path": "mlip.backbones.equivariant.EquivariantBackbone",
            "init_args": {"channels": 8, "lmax_hidden": 1, "lmax_sh": 1, "correlation": 2,
                          "num_layers": 2, "radial_hidden": 16}}
E0S = [-13.6, -1029.0, -2041.0]
SHIFTS = [-3.0, -6.0, -5.0]


MOL = ase.Atoms("CH4", positions=[[0, 0, 0], [0.63, 0.63, 0.63], [-0.63, -0.63, 0.63],
                                  [-0.63, 0.63, -0.63], [0.63, -0.63, -0.63]])


def model(baseline="per_element", shift=SHIFTS):
    torch.manual_seed(0)
    return build_potential({"backbone": BACKBONE, "baseline": baseline}, [1, 6, 8], E0S, 1.0,
                           shift, 5.0, 12.0).double()


def test_switch_is_exactly_one_for_bonded_atoms_and_zero_alone():
    m = model()
    n = torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 12.0], dtype=torch.float64)
    g = m.baseline_energies(n, torch.ones_like(n, dtype=torch.long)) / SHIFTS[1]
    assert g[0] == 0.0 and g[2] == pytest.approx(0.5) and torch.all(g[4:] == 1.0)
    assert torch.all(torch.diff(g) >= 0)


def test_shift_does_not_depend_on_geometry():
    """For molecules whose atoms all have neighbours, the shift adds exactly sum_i shift[z_i]
    and no force: compressed, stretched or rotated, the difference to a shift-free model is
    the same constant."""
    with_shift, without = model(), model(shift=0.0)
    mol = ase.Atoms("CH4", positions=[[0, 0, 0], [0.63, 0.63, 0.63], [-0.63, -0.63, 0.63],
                                      [-0.63, 0.63, -0.63], [0.63, -0.63, -0.63]])
    expected = SHIFTS[1] + 4 * SHIFTS[0]
    for f in (0.6, 1.0, 1.4, 2.0):
        a = mol.copy()
        a.positions *= f
        p, q = physics.predict(with_shift, [a]), physics.predict(without, [a])
        assert p["energy"][0] - q["energy"][0] == pytest.approx(expected, abs=1e-9)
        np.testing.assert_allclose(p["forces"], q["forces"], atol=1e-12)


@pytest.mark.parametrize("baseline", ["none", "per_element"])
def test_isolated_atom_and_dimer_limit_are_e0(baseline):
    m = model(baseline)
    assert physics.measure_isolated_atom_error(m) < 1e-10
    far = ase.Atoms("CO", positions=[[0, 0, 0], [0, 0, 5.0001]])
    assert physics.predict(m, [far])["energy"][0] == pytest.approx(E0S[1] + E0S[2], abs=1e-9)


def test_default_expression_has_no_built_in_binding():
    """The default (no shift): with the backbone's per-atom output made a constant (its last
    layer zeroed), every dimer from the ZBL core's outer radius to beyond the cutoff has
    exactly the E0 sum, where the per-element shift binds it by -(shift_a + shift_b) as soon as
    the pair is closer than ~the cutoff (the hole reactive MD fell into)."""
    default = build_potential({"backbone": BACKBONE}, [1, 6, 8], E0S, 1.0, SHIFTS, 5.0, 12.0).double()
    assert default.baseline == "none" and not default.learn_shift
    legacy = model("per_element")
    for m in (default, legacy):
        with torch.no_grad():
            for name, p in m.backbone.named_parameters():
                if "readout" in name:
                    p.zero_()
    r = np.linspace(1.0, 6.0, 51)
    frames = [ase.Atoms("CO", positions=[[0, 0, 0], [0, 0, d]]) for d in r]
    limit = E0S[1] + E0S[2]
    e = physics.predict(default, frames)["energy"]
    np.testing.assert_allclose(e, limit, rtol=0, atol=1e-9)
    e_legacy = physics.predict(legacy, frames)["energy"]
    binding = SHIFTS[1] + SHIFTS[2]  # -11 eV
    assert np.all(e_legacy[r <= 2.0] - limit < 0.9 * binding)
    assert np.all(np.diff(e_legacy[r >= 2.0]) >= 0) and e_legacy[-1] == pytest.approx(limit, abs=1e-9)


def test_constant_shift_is_always_on():
    """``baseline: constant``: shift[z] for every atom, bonded or alone (the isolated-atom
    energy says so), and no force."""
    const, none = model("constant"), model("none")
    for atoms, expected in ((MOL, SHIFTS[1] + 4 * SHIFTS[0]), (ase.Atoms("O"), SHIFTS[2]),
                            (ase.Atoms("CO", positions=[[0, 0, 0], [0, 0, 8.0]]), SHIFTS[1] + SHIFTS[2])):
        p, q = physics.predict(const, [atoms]), physics.predict(none, [atoms])
        assert p["energy"][0] - q["energy"][0] == pytest.approx(expected, abs=1e-9)
        np.testing.assert_allclose(p["forces"], q["forces"], atol=1e-12)


def test_learn_shift_needs_a_shift():
    with pytest.raises(ValueError, match="learn_shift needs a baseline with a shift"):
        build_potential({"backbone": BACKBONE, "baseline": "none", "learn_shift": True}, [1, 6, 8],
                        E0S, 1.0, SHIFTS, 5.0, 12.0)


def test_legacy_coordination_baseline_grows_with_neighbours():
    legacy = model("coordination", shift=-4.8)
    none = model("none")
    mol = ase.Atoms("CH4", positions=[[0, 0, 0], [0.63, 0.63, 0.63], [-0.63, -0.63, 0.63],
                                      [-0.63, 0.63, -0.63], [0.63, -0.63, -0.63]])
    diffs = []
    for f in (1.0, 0.7):
        a = mol.copy()
        a.positions *= f
        diffs.append(physics.predict(legacy, [a])["energy"][0] - physics.predict(none, [a])["energy"][0])
    assert diffs[1] < diffs[0] < 0  # closer neighbours: more built-in attraction


def _frame(symbols, energy):
    n = len(ase.Atoms(symbols))
    a = ase.Atoms(symbols, positions=np.arange(3 * n).reshape(-1, 3) * 1.5)
    return Structure(numbers=a.numbers, positions=a.positions, cell=np.zeros((3, 3)),
                     pbc=np.zeros(3, dtype=bool), energy=energy)


def test_per_element_shift_statistics():
    e0 = {1: -10.0, 6: -100.0, 8: -200.0}
    per_atom = {1: -2.0, 6: -7.0, 8: -5.0}
    mols = ["CH4", "C2H6", "H2O", "CO2", "CH3OH", "C2H4"]
    frames = [_frame(m, sum(e0[z] + per_atom[z] for z in ase.Atoms(m).numbers)) for m in mols]
    stats = compute_statistics(frames, e0s=e0)
    for z, value in per_atom.items():
        assert stats.energy_per_atom_by_element[z] == pytest.approx(value, abs=1e-9)
    # One composition determines only the mean: every element gets it.
    same = [_frame("CH4", -140.0 - 20.0 + k * 0.1) for k in range(5)]
    stats = compute_statistics(same, e0s=e0)
    mean = stats.energy_per_atom_mean
    assert all(v == pytest.approx(mean, abs=1e-12) for v in stats.energy_per_atom_by_element.values())
    assert stats.from_dict(stats.to_dict()) == stats


def test_learned_shift_moves_energy_only():
    """The trainable shift correction: a constant for every bonded atom (no force, no stress
    on a periodic cell), zero for an isolated atom, trained by the energy loss alone, and
    carried through a model file."""
    from mlip.graph.build import atoms_to_batch

    fixed = model()
    learned = build_potential({"backbone": BACKBONE, "baseline": "per_element", "learn_shift": True},
                              [1, 6, 8], E0S, 2.0,
                              SHIFTS, 5.0, 12.0).double()
    learned.backbone.load_state_dict(fixed.backbone.state_dict())
    learned.scale.fill_(1.0)
    with torch.no_grad():
        learned.shift_correction.copy_(torch.tensor([0.1, -0.2, 0.3], dtype=torch.float64))
    mol = ase.Atoms("CH4", positions=[[0, 0, 0], [0.63, 0.63, 0.63], [-0.63, -0.63, 0.63],
                                      [-0.63, 0.63, -0.63], [0.63, -0.63, -0.63]])
    p, q = physics.predict(learned, [mol]), physics.predict(fixed, [mol])
    assert p["energy"][0] - q["energy"][0] == pytest.approx(-0.2 + 4 * 0.1, abs=1e-9)
    np.testing.assert_allclose(p["forces"], q["forces"], atol=1e-12)
    cell = ase.Atoms("C2", scaled_positions=[[0, 0, 0], [0.25, 0.25, 0.25]],
                     cell=np.eye(3) * 3.6, pbc=True)
    cell.rattle(0.05, seed=1)
    p, q = (physics.predict(m, [cell], stress=True) for m in (learned, fixed))
    assert p["energy"][0] - q["energy"][0] == pytest.approx(2 * -0.2, abs=1e-9)
    np.testing.assert_allclose(p["stress"], q["stress"], atol=1e-12)
    assert physics.measure_isolated_atom_error(learned) < 1e-10
    # the energy loss reaches it; forces and stress do not
    data = atoms_to_batch([mol], learned.cutoff, dtype=torch.float64)
    out = learned(data, compute_forces=True, training=True)
    (grad_e,) = torch.autograd.grad(out["energy"].sum(), learned.shift_correction, retain_graph=True)
    assert grad_e.tolist() == pytest.approx([4.0, 1.0, 0.0])
    (grad_f,) = torch.autograd.grad(out["forces"].square().sum(), learned.shift_correction,
                                    allow_unused=True)
    assert grad_f is None or torch.all(grad_f == 0)
    assert learned.effective_shift().tolist() == pytest.approx([-2.9, -6.2, -4.7])


def test_learned_shift_round_trips(tmp_path):
    from mlip.model.io import load_model, save_model

    config = {"backbone": BACKBONE, "baseline": "per_element", "learn_shift": True}
    learned = build_potential(config, [1, 6, 8], E0S, 1.0, SHIFTS, 5.0, 12.0).double()
    with torch.no_grad():
        learned.shift_correction.copy_(torch.tensor([0.1, -0.2, 0.3], dtype=torch.float64))
    path = save_model(tmp_path / "m.pt", learned, config, 12.0)
    again = load_model(path)
    assert again.learn_shift and again.shift_correction.tolist() == pytest.approx([0.1, -0.2, 0.3])
    assert again.baseline == "per_element"
    # the file records the expression, whatever the config it was saved with says
    fixed = load_model(save_model(tmp_path / "f.pt", model(), {"backbone": BACKBONE}, 12.0))
    assert fixed.learn_shift is False and fixed.baseline == "per_element"
    default = build_potential({"backbone": BACKBONE}, [1, 6, 8], E0S, 1.0, SHIFTS, 5.0, 12.0)
    assert load_model(save_model(tmp_path / "d.pt", default, {"backbone": BACKBONE}, 12.0)).baseline == "none"
