"""Uncertainty: the last-layer estimate (LLPR) against a direct computation, its calibration,
zero only for a lone atom and growth away from the data; committees equal the mean and spread
of their members; calibration metrics against direct computations."""

from __future__ import annotations

import copy
import math

import ase
import numpy as np
import pytest
import torch

from mlip.data import keys
from mlip.graph.build import atoms_to_batch
from mlip.inference.engine import ForceField
from mlip.model.build import build_potential
from mlip.model.io import load_model, save_committee, save_model
from mlip.model.uncertainty import combine_committee, fit_last_layer
from mlip.training.calibration import (
    calibrate_committee,
    calibration_curve,
    collect,
    miscalibration_area,
    spearman,
)

CUTOFF = 5.0


def batches(frames, size=5):
    return [atoms_to_batch(frames[k:k + size], CUTOFF, dtype=torch.float64)
            for k in range(0, len(frames), size)]


@pytest.fixture(scope="module")
def fitted(trained_acac_model):
    """(model with a fitted LLPR, report, train frames, val frames)."""
    model, frames = trained_acac_model
    model = copy.deepcopy(model)
    report = fit_last_layer(model, batches(frames[:15]), batches(frames[15:]))
    return model, report, frames[:15], frames[15:]


@pytest.mark.parametrize("backbone", [
    {"class_path": "mlip.backbones.equivariant.EquivariantBackbone",
     "init_args": {"channels": 8, "lmax_hidden": 1, "lmax_sh": 1, "correlation": 2, "num_layers": 3,
                   "radial_hidden": 16}},
    {"class_path": "mlip.backbones.transip.TransIPBackbone",
     "init_args": {"width": 16, "depth": 1, "heads": 2, "embedding_channels": 4, "readout_hidden": 8}},
])
def test_readout_features_give_the_node_energies_exactly(backbone, trained_acac_model):
    _, frames = trained_acac_model
    torch.manual_seed(3)
    model = build_potential({"backbone": backbone}, [1, 6, 8], [0.0, 0.0, 0.0], 1.0, 0.0, CUTOFF, 12.0).double()
    data = atoms_to_batch(frames[:2], CUTOFF, dtype=torch.float64)
    species = model.species_of(data[keys.ATOMIC_NUMBERS])
    from mlip.graph.edges import edge_vectors

    vectors = edge_vectors(data[keys.POSITIONS], data[keys.EDGE_INDEX], data[keys.CELL_SHIFTS],
                           data[keys.CELL], data[keys.BATCH])
    out, _ = model.atomic_energies(data, species, vectors)
    bb = model.backbone
    readouts = bb.readouts if hasattr(bb, "readouts") else [bb.readout]
    weights = torch.cat([r.weights[-1] for r in readouts], dim=0).squeeze(-1)
    assert out[keys.READOUT_FEATURES].shape[1] == bb.outputs.readout_features
    torch.testing.assert_close(out[keys.READOUT_FEATURES] @ weights, out[keys.NODE_ENERGIES],
                               rtol=1e-12, atol=1e-12)


def test_llpr_matches_a_direct_computation(fitted):
    model, report, train, val = fitted
    unc = model.uncertainty
    from mlip.ops.buffers import exact

    # A from the features directly, then the regularised inverse the fit chose
    lone = exact(unc, "lone")
    rows = []
    for data in batches(train):
        with torch.no_grad():
            out = model(data, compute_forces=False)
        species = model.species_of(data[keys.ATOMIC_NUMBERS])
        rows.append(model.scale.double() * (out[keys.READOUT_FEATURES].double() - lone[species]))
    g = torch.cat(rows)
    reg = float(exact(unc, "regularization"))
    inverse = torch.linalg.inv(g.T @ g + reg * torch.eye(g.shape[1], dtype=torch.float64))
    torch.testing.assert_close(exact(unc, "inverse"), inverse, rtol=1e-6, atol=1e-9 * float(inverse.abs().max()))
    data = atoms_to_batch(val[:3], CUTOFF, dtype=torch.float64)
    out = model(data)
    species = model.species_of(data[keys.ATOMIC_NUMBERS])
    gv = model.scale.double() * (out[keys.READOUT_FEATURES].double() - lone[species])
    alpha_e, alpha_f = exact(unc, "alpha").tolist()
    for k in range(3):
        rows = gv[data[keys.BATCH] == k]
        total = rows.sum(0)
        expected_e = alpha_e * math.sqrt(float(total @ inverse @ total))
        assert float(out[keys.ENERGY_UNCERTAINTY][k]) == pytest.approx(expected_e, rel=1e-6)
        expected_f = alpha_f * torch.sqrt(((rows @ inverse) * rows).sum(-1))
        torch.testing.assert_close(out[keys.FORCES_UNCERTAINTY][data[keys.BATCH] == k], expected_f,
                                   rtol=1e-6, atol=0.0)


def test_llpr_is_calibrated_on_its_validation_split(fitted):
    """alpha^2 = mean(err^2 / u^2): on the calibration frames mean(err^2 / u^2) is exactly 1."""
    model, report, _, val = fitted
    c = collect(ForceField(model, device="cpu"), batches(val))
    f2 = (c["f_err"] ** 2).sum(-1)
    assert np.mean(f2 / c["f_sigma"] ** 2) == pytest.approx(1.0, rel=1e-6)
    assert np.mean(c["e_err"] ** 2 / c["e_sigma"] ** 2) == pytest.approx(1.0, rel=1e-6)
    assert report["val_atoms"] == 5 * 15 and report["train_atoms"] == 15 * 15


def test_lone_atom_has_zero_uncertainty_and_everything_else_a_positive_one(fitted):
    model, _, _, val = fitted
    lone = model(atoms_to_batch([ase.Atoms("O")], CUTOFF, dtype=torch.float64))
    assert float(lone[keys.ENERGY_UNCERTAINTY][0]) == 0.0
    assert float(lone[keys.FORCES_UNCERTAINTY][0]) == 0.0
    out = model(atoms_to_batch(val, CUTOFF, dtype=torch.float64))
    assert bool((out[keys.ENERGY_UNCERTAINTY] > 0).all())
    assert bool((out[keys.FORCES_UNCERTAINTY] > 0).all())


def test_llpr_grows_away_from_the_data(fitted):
    """Rattled far beyond the training geometries, every structure's uncertainty exceeds the
    largest one on the training frames themselves."""
    model, _, train, _ = fitted
    rng = np.random.default_rng(0)
    near = model(atoms_to_batch(train, CUTOFF, dtype=torch.float64))
    far_frames = []
    for atoms in train:
        a = atoms.copy()
        a.positions = a.positions * 0.8 + rng.normal(0.0, 0.25, a.positions.shape)
        far_frames.append(a)
    far = model(atoms_to_batch(far_frames, CUTOFF, dtype=torch.float64))
    assert float(far[keys.ENERGY_UNCERTAINTY].min()) > float(near[keys.ENERGY_UNCERTAINTY].max())
    near_rms = near[keys.FORCES_UNCERTAINTY].pow(2).mean().sqrt()
    far_rms = far[keys.FORCES_UNCERTAINTY].pow(2).mean().sqrt()
    assert float(far_rms) > 2 * float(near_rms)


def test_uncertainty_survives_the_model_file_and_reaches_every_adapter(fitted, tmp_path):
    from mlip.inference.compiled import _example_inputs, _ForceFunction, frozen_copy
    from mlip.integrations.ase import MLIPCalculator

    model, _, _, val = fitted
    path = save_model(tmp_path / "m.pt", model, _config(model), 12.0)
    loaded = load_model(path)
    data = atoms_to_batch(val[:2], CUTOFF, dtype=torch.float64)
    a, b = model(data), loaded(data)
    for key in (keys.ENERGY_UNCERTAINTY, keys.FORCES_UNCERTAINTY):
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
    atoms = val[0].copy()
    atoms.calc = MLIPCalculator(str(path), device="cpu")
    atoms.get_potential_energy()
    assert atoms.calc.results["energy_uncertainty"] == pytest.approx(float(a[keys.ENERGY_UNCERTAINTY][0]))
    np.testing.assert_allclose(atoms.calc.results["forces_uncertainty"],
                               a[keys.FORCES_UNCERTAINTY][:15].numpy(), rtol=1e-10)
    # the traced function of the compiled path returns them too (same values)
    traced = _ForceFunction(frozen_copy(loaded, radial_table=False), stress=False)
    outs = traced(*_example_inputs(data))
    torch.testing.assert_close(outs[-2], a[keys.ENERGY_UNCERTAINTY], rtol=1e-10, atol=0)
    torch.testing.assert_close(outs[-1], a[keys.FORCES_UNCERTAINTY], rtol=1e-10, atol=0)


def _config(model) -> dict:
    """The model config of the conftest models (their backbone settings, float64)."""
    bb = model.backbone
    args = {"channels": bb.channels, "lmax_hidden": 1, "lmax_sh": bb.lmax_sh, "correlation": 2,
            "num_layers": len(bb.layers), "radial_hidden": 16}
    return {"backbone": {"class_path": "mlip.backbones.equivariant.EquivariantBackbone",
                         "init_args": args}, "dtype": "float64"}


def test_committee_is_the_mean_and_spread_of_its_members(trained_acac_model, tmp_path):
    model, frames = trained_acac_model
    members = []
    for k in range(3):
        m = copy.deepcopy(model)
        with torch.no_grad():
            for p in m.backbone.parameters():
                p.add_(0.02 * torch.randn(p.shape, generator=torch.Generator().manual_seed(k), dtype=p.dtype))
        members.append(m)
    data = atoms_to_batch(frames[:3], CUTOFF, dtype=torch.float64)
    outs = [m(data) for m in members]
    engine = ForceField(members, device="cpu")
    got = engine.evaluate(data)
    energies = torch.stack([o[keys.ENERGY] for o in outs])
    forces = torch.stack([o[keys.FORCES] for o in outs])
    torch.testing.assert_close(got[keys.ENERGY], energies.mean(0))
    torch.testing.assert_close(got[keys.FORCES], forces.mean(0))
    torch.testing.assert_close(got[keys.ENERGY_UNCERTAINTY], energies.std(0, correction=1))
    torch.testing.assert_close(got[keys.FORCES_UNCERTAINTY],
                               ((forces - forces.mean(0)) ** 2).sum(0).sum(-1).div(2).sqrt())
    # calibration: on its calibration frames mean(err^2 / sigma^2) = 1; stored in one file
    alpha = calibrate_committee(engine, batches(frames[10:]))
    paths = []
    for k, m in enumerate(members):
        paths.append(save_model(tmp_path / f"m{k}.pt", m, _config(m), 12.0))
    committee = save_committee(tmp_path / "committee.pt", paths, alpha)
    from_file = ForceField(str(committee), device="cpu")
    c = collect(from_file, batches(frames[10:]))
    assert np.mean((c["f_err"] ** 2).sum(-1) / c["f_sigma"] ** 2) == pytest.approx(1.0, rel=1e-6)
    again = from_file.evaluate(data)
    torch.testing.assert_close(again[keys.ENERGY], got[keys.ENERGY])
    torch.testing.assert_close(again[keys.ENERGY_UNCERTAINTY], alpha[0] * got[keys.ENERGY_UNCERTAINTY])
    with pytest.raises(ValueError, match="committee of 3 models"):
        load_model(committee)
    with pytest.raises(ValueError, match="at least two"):
        combine_committee([outs[0]])


def test_spearman_and_calibration_metrics_against_direct_computations():
    from scipy.stats import spearmanr

    rng = np.random.default_rng(1)
    x = rng.normal(size=200)
    y = x + rng.normal(size=200)
    y[::7] = y[0]  # ties
    assert spearman(x, y) == pytest.approx(spearmanr(x, y).statistic, abs=1e-12)
    sigmas = rng.uniform(0.5, 2.0, size=50)
    errors = rng.normal(size=50) * sigmas
    expected, observed = calibration_curve(errors, sigmas)
    from scipy.stats import norm

    direct = [np.mean(np.abs(errors / sigmas) <= norm.ppf(0.5 + p / 2)) for p in expected]
    np.testing.assert_allclose(observed, direct)
    assert miscalibration_area(errors, sigmas) == pytest.approx(np.mean(np.abs(np.array(direct) - expected)))


def test_miscalibration_area_separates_calibrated_from_overconfident():
    """n = 20000 Gaussian errors with their true sigmas: the empirical curve is within 0.02 of
    the diagonal everywhere except with probability 2 exp(-2 n 0.02^2) ~ 2e-7 (DKW), for
    any seed; sigmas 3x too small give an area above 0.2."""
    rng = np.random.default_rng()
    sigmas = rng.uniform(0.1, 3.0, size=20000)
    errors = rng.normal(size=sigmas.size) * sigmas
    assert miscalibration_area(errors, sigmas) < 0.02
    assert miscalibration_area(errors, sigmas / 3) > 0.2
