"""Extrapolation probes on small models trained with the package defaults.

A model is trained through ``mlip.train`` on 60 bundled acac frames with the default
energy expression (no shift, ZBL wall); it must pass every probe of
:mod:`mlip.testing.extrapolation` (the holes these probes look for were measured on the
benchmark models, docs/history.md, "The energy expression"). A second model also trains on
GFN2-xTB dissociation frames (``data.extra``, :mod:`mlip.data.dissociation`) and must then
dissociate like its reference: no pair bound far deeper than GFN2-xTB binds it, and pulled
atoms following the reference's profile.
"""

from __future__ import annotations

import ase.io
import numpy as np
import pytest
import torch
import yaml
from ase.data import covalent_radii

from mlip import load_model, train
from mlip.testing import extrapolation as X

CONFIGS = __import__("pathlib").Path(__file__).resolve().parents[2] / "configs"
SMALL = {"channels": 8, "lmax_hidden": 1, "lmax_sh": 1, "correlation": 2, "num_layers": 2,
         "radial_hidden": 16}


def _train(tmp, bundled_acac, name, model_extra, data_extra=None):
    frames = ase.io.read(bundled_acac / "train_300K.xyz", ":60")
    ase.io.write(tmp / "frames.xyz", frames)
    config = {
        "run_name": name, "output_dir": str(tmp / "runs"), "seed": 0,
        "data": {"train": str(tmp / "frames.xyz"), "val_size": 10, "test": [],
                 "e0s": str(bundled_acac / "isolated_atoms.xyz"), "batch_size": 5,
                 **(data_extra or {})},
        "model": {"dtype": "float32",
                  "backbone": {"preset": str(CONFIGS / "backbone" / "cg.yaml"), "init_args": SMALL},
                  **model_extra},
        "training": {"schedule": {"max_epochs": 30}, "optim": {"lr": 0.02},
                     "trainer": {"threads": 2, "enable_progress_bar": False},
                     "stage_two": {"start": None}},
    }
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    train(path)
    return load_model(tmp / "runs" / name / "model.pt", dtype=torch.float64), frames


@pytest.fixture(scope="module")
def default_model(tmp_path_factory, bundled_acac):
    return _train(tmp_path_factory.mktemp("extrap"), bundled_acac, "default", {})


def _lowest(frames):
    energies = np.array([a.get_potential_energy() for a in frames])
    return frames[int(energies.argmin())], float(energies.min())


def test_default_model_uses_the_default_expression(default_model):
    model, frames = default_model
    assert model.baseline == "none" and model.repulsion.reference == "data"
    # the core sits at the shortest training distance of each pair (C-H here; the 50
    # training frames are a subset of the 60)
    sp = model.species_of(torch.tensor([1, 6]))
    closest = min(a.get_distance(i, j) for a in frames for i in range(len(a))
                  for j in range(len(a)) if {a.numbers[i], a.numbers[j]} == {1, 6})
    assert closest - 1e-6 <= float(model.repulsion.d_ref[sp[0], sp[1]]) < closest + 0.1  # float32


def test_uniform_compression_and_expansion_rise(default_model):
    model, frames = default_model
    start, _ = _lowest(frames)
    factors = np.linspace(0.7, 1.3, 13)
    s = X.bowl_summary(factors, X.energies(model, X.scaled_copies(start, factors)))
    assert 0.9 <= s["argmin_factor"] <= 1.1, s
    assert s["rise_compressed"] > 1.0 and s["rise_expanded"] > 1.0, s


def test_dimers_repel_and_dissociate_to_the_e0_sum(default_model):
    model, _ = default_model
    r = np.arange(0.1, 6.0, 0.05)
    for z1, z2 in [(1, 1), (1, 6), (1, 8), (6, 6), (6, 8), (8, 8)]:
        e = X.energies(model, X.dimer(z1, z2, r))
        limit = float(model.e0s[model.species_of(torch.tensor([z1, z2]))].sum())
        sp = model.species_of(torch.tensor([z1, z2]))
        r_on = model.repulsion.inner * float(model.repulsion.d_ref[sp[0], sp[1]])
        assert np.all(e[r >= model.cutoff] == limit), (z1, z2)
        core = r <= r_on
        assert core.sum() >= 3 and np.all(np.diff(e[core]) < 0), (z1, z2)  # only climbs inwards
        assert e[0] > e[r > r_on].max() + 1.0, (z1, z2)
        assert e[r > r_on].min() > limit - 15.0, (z1, z2)  # no hole (bond energies are < 10 eV)
        rcov = covalent_radii[z1] + covalent_radii[z2]
        assert np.abs(np.diff(e[r >= 1.5 * rcov])).max() < 1.0, (z1, z2)  # no jumps


def test_pushed_pairs_repel_and_pulled_atoms_reach_the_fragment_limit(default_model):
    model, frames = default_model
    start, _ = _lowest(frames)
    for i, j in X.bonds(start):
        r_eq = start.get_distance(i, j)
        inward = np.linspace(0.15 * r_eq, r_eq, 18)
        e = X.energies(model, X.pair_curve(start, i, j, inward))
        assert e[0] > e[-1] + 5.0, (i, j)
        for h, partner in ((i, j), (j, i)):
            if start.numbers[h] != 1:
                continue
            r = np.arange(r_eq, 12.0, 0.01)
            e = X.energies(model, X.pair_curve(start, h, partner, r))
            rest = start.copy()
            del rest[h]
            limit = X.energies(model, [rest])[0] + float(model.e0s[model.species_of(torch.tensor([1]))][0])
            assert abs(e[-1] - limit) < 1e-8, (h, partner)
            assert np.abs(np.diff(e)).max() < 0.2, (h, partner)  # continuous on a 0.01 Å grid


def _deepest_torsion(model, frames):
    start, e_min = _lowest(frames)
    lowest = np.inf
    for i, j in X.rotatable_bonds(start):
        lowest = min(lowest, X.energies(model, X.torsion_scan(start, i, j, np.arange(0, 181, 15))).min())
    return lowest - e_min


def test_torsion_scans_stay_above_the_training_minimum(default_model):
    """Measured 2026-12-02: a 30-epoch model of this kind fell 4.1 eV below the training
    minimum with a fixed per-element shift switched on by the first neighbour. With the
    default expression and the final E0 refit (which removes this model's constant offset of
    1.4 eV, its energies' margin before) the deepest point is 0.66 eV below (2026-12-08): a
    30-epoch model's own error away from the data, against the shift's 4.1 eV hole."""
    model, frames = default_model
    deepest = _deepest_torsion(model, frames)
    print(f"deepest torsion point vs training minimum: {deepest:+.3f} eV")
    assert deepest > -1.0


@pytest.fixture(scope="module")
def dissociation_model(tmp_path_factory, bundled_acac):
    """The default model's recipe plus GFN2-xTB dissociation frames in data.extra: every
    element pair as a dimer, 8 frames each (the pulls and molecule pairs cost too much
    training time for the suite; tests/data/test_dissociation.py covers their frames)."""
    pytest.importorskip("tblite", reason="tblite is part of mlip[dev]")
    from mlip.data import dissociation as D
    from mlip.data.stats import e0s_from_file

    tmp = tmp_path_factory.mktemp("dissociation")
    frames = ase.io.read(bundled_acac / "train_300K.xyz", ":60")
    paths = D.make_paths(frames, e0s_from_file(bundled_acac / "isolated_atoms.xyz"), 5.0,
                         frames=0, points=8, pairs=0)
    labelled, _ = D.label_paths(paths, D.xtb_calculator, "GFN2-xTB")
    D.write_frames(labelled, tmp / "dissociation.xyz")
    model, frames = _train(tmp, bundled_acac, "dissociation", {},
                           {"extra": [{"file": str(tmp / "dissociation.xyz"), "weight": 1.0}]})
    return model, frames, labelled


def _reference_dimer(labelled, z1, z2):
    rows = sorted((a.info["distance"], a.get_potential_energy()) for a in labelled
                  if a.info["path_kind"] == "dimer" and sorted(a.numbers.tolist()) == [z1, z2])
    return np.array(rows).T


def test_dissociation_frames_remove_the_spurious_binding(dissociation_model):
    """On the reference's own dimer distances: no pair more than 1 eV deeper than GFN2-xTB
    beyond 1.5 x its covalent bond length (the models without such frames bind every pair by
    several eV there: docs/benchmarks.md, "Bonds that break")."""
    model, _, labelled = dissociation_model
    for z1, z2 in [(1, 1), (1, 6), (1, 8), (6, 6), (6, 8), (8, 8)]:
        r, ref = _reference_dimer(labelled, z1, z2)
        limit = float(model.e0s[model.species_of(torch.tensor([z1, z2]))].sum())
        e = X.energies(model, X.dimer(z1, z2, r)) - limit
        beyond = r >= 1.5 * (covalent_radii[z1] + covalent_radii[z2])
        print(f"{z1}-{z2}: model {e[beyond].min():+.2f}, GFN2-xTB {ref[beyond].min() - limit:+.2f} eV")
        assert e[beyond].min() > (ref[beyond] - limit).min() - 1.0, (z1, z2)


def test_two_molecules_separate_to_twice_the_molecule(default_model):
    """Two copies of the molecule from contact to beyond the cutoff: exactly twice the
    molecule's energy once apart, continuous on the way (no step where the last pair leaves)."""
    from mlip.data import dissociation as D

    model, frames = default_model
    start, _ = _lowest(frames)
    start = ase.Atoms(numbers=start.numbers, positions=start.positions)
    second = start.copy()
    second.positions = (start.positions - start.positions.mean(0)) @ D.random_rotation(
        np.random.default_rng(0)).T
    r = np.arange(1.6, 8.0, 0.02)
    e = X.energies(model, D.molecule_pair(start, second, [1.0, 0.3, 0.2], r))
    limit = 2 * X.energies(model, [start])[0]
    assert np.all(np.abs(e[r > model.cutoff] - limit) < 1e-8)
    assert np.abs(np.diff(e)).max() < 0.2


def test_proton_transfer_ends_are_equivalent(default_model):
    """The enol H's transfer between the two O atoms of acac: the two ends are mirror images,
    so an O(3)-invariant model gives them the same energy (float64), and the moving H is the
    only atom that crosses the molecule."""
    model, frames = default_model
    start, _ = _lowest(frames)
    ends = X.proton_transfer_endpoints(ase.Atoms(numbers=start.numbers, positions=start.positions))
    assert ends is not None
    initial, final, h = ends
    assert initial.numbers[h] == 1
    moved = np.linalg.norm(final.positions - initial.positions, axis=1)
    heavy = initial.numbers > 1
    assert moved[h] > 0.4 and moved[heavy].max() < 0.5
    e = X.energies(model, [initial, final])
    assert e[1] == pytest.approx(e[0], abs=1e-9)
