"""Dissociation frames (mlip.data.dissociation, `mlip data dissociation`): the geometries
along each path, the labels as anchored differences, failures skipped and reported."""

from __future__ import annotations

from pathlib import Path

import ase
import ase.io
import numpy as np
import pytest
from ase.calculators.morse import MorsePotential

from mlip.cli.main import main
from mlip.data import dissociation as D


@pytest.fixture(scope="module")
def acac(bundled_acac):
    return ase.io.read(bundled_acac / "train_300K.xyz", ":12")


@pytest.fixture(scope="module")
def e0s(bundled_acac):
    return {int(a.numbers[0]): a.get_potential_energy()
            for a in ase.io.read(bundled_acac / "isolated_atoms.xyz", ":")}


def test_terminal_groups_of_acetylacetone(acac):
    """Enol acac, C5H8O2: eight H atoms, two CH3, the OH and the carbonyl O."""
    start = acac[0]
    groups = D.terminal_groups(start)
    symbols = sorted("".join(sorted(start[mask].get_chemical_symbols())) for _, _, mask in groups)
    assert symbols == sorted(["H"] * 8 + ["CHHH"] * 2 + ["HO", "O"])
    for i, j, mask in groups:
        assert mask[j] and not mask[i]


def test_pulled_group_moves_rigidly_to_each_distance(acac):
    start = acac[0]
    r = np.array([1.3, 2.0, 4.0, 6.0])
    for i, j, mask in D.terminal_groups(start):
        for d, a in zip(r, D.pull_group(start, i, j, mask, r), strict=True):
            assert a.get_distance(i, j) == pytest.approx(d, abs=1e-12)
            np.testing.assert_allclose(a.positions[~mask], start.positions[~mask], atol=0)
            inner = a[mask].get_all_distances()
            np.testing.assert_allclose(inner, start[mask].get_all_distances(), atol=1e-12)


def test_two_molecules_meet_at_each_closest_distance(acac):
    first = acac[0]
    second = first.copy()
    second.positions = second.positions @ D.random_rotation(np.random.default_rng(1)).T
    for d, a in zip([1.6, 2.5, 7.0], D.molecule_pair(first, second, [0.2, 1.0, -0.4], [1.6, 2.5, 7.0]),
                    strict=True):
        n = len(first)
        gap = np.linalg.norm(a.positions[:n, None] - a.positions[None, n:], axis=-1).min()
        assert gap == pytest.approx(d, abs=1e-9)
        np.testing.assert_allclose(a[n:].get_all_distances(), second.get_all_distances(), atol=1e-9)


def test_paths_start_near_the_data_and_end_beyond_the_cutoff(acac, e0s):
    paths = D.make_paths(acac, e0s, cutoff=4.0, frames=2, points=6, pairs=1)
    kinds = [p.kind for p in paths]
    assert kinds.count("dimer") == 6 and kinds.count("pull") == 24 and kinds.count("pair") == 1
    closest = D.closest_pair_distances(acac[:200])
    lowest = int(np.argmin([a.get_potential_energy() for a in acac]))
    for p in paths:
        assert len(p.frames) == 6 and p.distances[-1] == pytest.approx(5.0)
        if p.kind == "dimer":
            z1, z2 = p.frames[0].numbers
            assert p.distances[0] == pytest.approx(max(0.5, 0.9 * closest[(z1, z2)]))
            assert p.anchor_energy == pytest.approx(e0s[z1] + e0s[z2])
        else:  # the probes' start frame (lowest energy) is never used
            assert f"frame {lowest} " not in p.name


def _morse(_numbers):
    return MorsePotential(epsilon=2.0, r0=1.2, rho0=4.0, rcut1=2.0, rcut2=3.0)  # cut in units of r0


def test_labels_are_the_reference_differences_on_the_data_scale(acac, e0s):
    paths = D.make_paths(acac, e0s, cutoff=4.0, frames=1, points=5, pairs=1)
    frames, failures = D.label_paths(paths, _morse, "Morse")
    assert failures == [] and len(frames) == 5 * len(paths)
    by_path = {p.name: p for p in paths}
    for a in frames:
        p = by_path[a.info["path"]]
        k = int(np.argmin(np.abs(p.distances - a.info["distance"])))
        ref = p.frames[k].copy()
        ref.calc = _morse(None)
        anchor = p.anchor.copy()
        anchor.calc = _morse(None)
        expected = p.anchor_energy + ref.get_potential_energy() - anchor.get_potential_energy()
        assert a.get_potential_energy() == pytest.approx(expected, abs=1e-9)
        forces = ref.get_forces()
        if p.kind == "dimer":
            assert p.anchor_forces is None
        else:  # the data's forces where the reference's do not change along the path
            forces = p.anchor_forces + forces - anchor.get_forces()
        np.testing.assert_allclose(a.get_forces(), forces, atol=1e-12)
        assert a.info["reference"] == "Morse" and a.info["path_kind"] == p.kind
    # beyond the reference's range the dimers sit exactly at the data's E0 sum
    for a in frames:
        if a.info["path_kind"] == "dimer" and a.info["distance"] > 4.0:
            assert a.get_potential_energy() == pytest.approx(sum(e0s[int(z)] for z in a.numbers), abs=1e-9)


def test_anchor_forces_are_the_data_forces(acac, e0s):
    """A pull anchors on its training frame's forces; a molecule pair on each copy's forces,
    the second copy's turned with it."""
    paths = D.make_paths(acac, e0s, cutoff=4.0, frames=1, points=3, pairs=1)
    for p in paths:
        if p.kind == "dimer":
            continue
        f = int(p.name.split()[1])
        data_forces = acac[f].get_forces()
        if p.kind == "pull":
            np.testing.assert_array_equal(p.anchor_forces, data_forces)
        else:
            n = len(acac[f])
            np.testing.assert_array_equal(p.anchor_forces[:n], data_forces)
            # turned with the copy
            np.testing.assert_allclose(np.linalg.norm(p.anchor_forces[n:], axis=1),
                                       np.linalg.norm(data_forces, axis=1), rtol=1e-12)
            second = p.anchor.positions[n:] - p.anchor.positions[n:].mean(0)
            first = acac[f].positions - acac[f].positions.mean(0)
            rot, *_ = np.linalg.lstsq(first, second, rcond=None)
            np.testing.assert_allclose(data_forces @ rot, p.anchor_forces[n:], atol=1e-9)


def test_labeller_failures_are_skipped_and_reported(acac, e0s):
    class Failing(MorsePotential):
        def calculate(self, atoms=None, properties=None, system_changes=None):
            d = atoms.get_all_distances()
            if len(atoms) == 2 and d[0, 1] < 1.0:
                raise RuntimeError("SCF not converged in 250 cycles")
            if len(atoms) == 2 and d[0, 1] > 9.0 and atoms.numbers.tolist() == [8, 8]:
                raise RuntimeError("anchor failed")
            super().calculate(atoms, properties, system_changes)

    paths = [p for p in D.make_paths(acac, e0s, cutoff=4.0, frames=1, points=8, pairs=0)
             if p.kind == "dimer"]
    frames, failures = D.label_paths(paths, lambda _n: Failing(), "Morse")
    short = sum(int((p.distances < 1.0).sum()) for p in paths if p.name != "dimer 8-8")
    assert short > 0
    assert len(frames) == sum(len(p.frames) for p in paths if p.name != "dimer 8-8") - short
    assert all(a.info["distance"] >= 1.0 and a.info["path"] != "dimer 8-8" for a in frames)
    assert sum("frame skipped" in f for f in failures) == short
    assert [f for f in failures if "path skipped" in f] == [
        "dimer 8-8: anchor not labelled (anchor failed); path skipped"]


def test_cli_writes_frames_once_and_refuses_bad_input(tmp_path: Path, bundled_acac, capsys):
    train = tmp_path / "train.xyz"
    ase.io.write(train, ase.io.read(bundled_acac / "train_300K.xyz", ":6"))
    out = tmp_path / "diss.xyz"
    args = ["data", "dissociation", str(train), "--e0s", str(bundled_acac / "isolated_atoms.xyz"),
            "-o", str(out), "--cutoff", "4", "--points", "4", "--frames", "1",
            "--calculator", "ase.calculators.emt:EMT"]
    assert main(args) == 0
    frames = ase.io.read(out, ":")
    assert len(frames) == 4 * (6 + 12 + 1)
    assert {a.info["path_kind"] for a in frames} == {"dimer", "pull", "pair"}
    assert "wrote 76 frames" in capsys.readouterr().out
    assert main(args) == 1  # exists
    assert capsys.readouterr().err.strip().endswith("exists (pass --overwrite)")
    bare = tmp_path / "bare.xyz"
    ase.io.write(bare, [ase.Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.74]])])
    assert main(["data", "dissociation", str(bare), "--e0s", str(bundled_acac / "isolated_atoms.xyz"),
                 "-o", str(tmp_path / "x.xyz")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{bare}, frame 0: no energy label" in err
    assert not (tmp_path / "x.xyz").exists()


def test_xtb_labels_converge_for_radicals(acac, e0s):
    """GFN2-xTB with the module's settings labels a pulled H out to beyond the cutoff (at
    300 K without smearing the stretched C-H radical pair does not converge)."""
    pytest.importorskip("tblite", reason="tblite is part of mlip[dev]")
    paths = [p for p in D.make_paths(acac[:3], e0s, cutoff=5.0, frames=1, points=4, pairs=0)
             if p.kind == "dimer" and p.name == "dimer 1-6"]
    frames, failures = D.label_paths(paths, D.xtb_calculator, "GFN2-xTB")
    assert failures == [] and len(frames) == 4
    e = np.array([a.get_potential_energy() for a in frames])
    assert e[0] < e[-1] - 1.0  # bound at short range
    assert e[-1] == pytest.approx(e0s[1] + e0s[6], abs=0.05)  # 6 Å: at the E0 sum
