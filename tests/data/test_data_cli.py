"""`mlip data convert` / `mlip data info` end to end, including the bad-input files."""

from __future__ import annotations

import json
from pathlib import Path

import ase.io
import numpy as np
import pytest
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator

from mlip.cli.main import main
from mlip.data.lmdb import LmdbDataset
from mlip.data.stats import statistics_key


def _files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


@pytest.mark.parametrize(
    ("name", "frame", "problem"),
    [
        ("malformed.xyz", 1, "Frame has 9 atoms, expected 15"),
        ("nan_forces.xyz", 1, "forces contain NaN"),
    ],
)
def test_bad_frame_aborts_with_one_line(
    tmp_path: Path, tiny: Path, capsys, name: str, frame: int, problem: str
) -> None:
    source = tiny / name
    out = tmp_path / "out.lmdb"
    assert main(["data", "convert", str(source), "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith(f"mlip data: error: {source}, frame {frame}: ")
    assert problem in err
    assert _files(tmp_path) == []  # neither OUT nor OUT.partial-*


@pytest.mark.parametrize(
    ("name", "kept", "skipped"),
    [("malformed.xyz", 1, 1), ("nan_forces.xyz", 2, 1), ("no_forces.xyz", 3, 0)],
)
def test_skip_invalid(
    tmp_path: Path, tiny: Path, capsys, name: str, kept: int, skipped: int
) -> None:
    source = tiny / name
    out = tmp_path / "out.lmdb"
    assert main(["data", "convert", str(source), "-o", str(out), "--skip-invalid"]) == 0
    captured = capsys.readouterr()
    err_lines = captured.err.splitlines()
    if skipped:
        assert err_lines[0].startswith(f"mlip data: skipped {source}, frame 1: ")
        assert err_lines[1] == f"mlip data: skipped {skipped} invalid frame(s)"
    else:
        assert err_lines == []
    assert f"wrote {kept} frames" in captured.out and f"skipped {skipped}" in captured.out
    dataset = LmdbDataset(out)
    assert len(dataset) == kept
    expected_frames = {"malformed.xyz": [0], "nan_forces.xyz": [0, 2], "no_forces.xyz": [0, 1, 2]}
    assert [s.frame for s in dataset] == expected_frames[name]
    assert dataset.header["labels"]["forces"] == (0 if name == "no_forces.xyz" else kept)
    assert _files(tmp_path) == ["out.lmdb"]


def test_several_inputs_overwrite_and_info(tmp_path: Path, tiny: Path, capsys) -> None:
    tiny = tiny
    out = tmp_path / "all.lmdb"
    args = [
        "data",
        "convert",
        str(tiny / "acac_20.xyz"),
        str(tiny / "cu_emt_10.xyz"),
        "-o",
        str(out),
    ]
    assert main(args) == 0
    assert "wrote 30 frames" in capsys.readouterr().out
    assert main(args) == 1
    assert "exists" in capsys.readouterr().err
    assert main([*args, "--overwrite"]) == 0
    capsys.readouterr()

    assert main(["data", "info", str(out)]) == 0
    text = capsys.readouterr().out
    assert "30 structures" in text
    assert "H 160, C 100, O 40, Cu 1078 atoms" in text
    assert "min 15, mean 45.93, max 108" in text
    assert "energy 30/30, forces 30/30, stress 10/30" in text
    for needle in ("energy [eV]", "energy per atom [eV/atom]", "forces [eV/Å]", "stress [eV/Å^3]"):
        assert needle in text

    assert main(["data", "info", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["header"]["count"] == 30 and info["metadata"] == {}


def test_info_on_a_non_dataset(tmp_path: Path, capsys) -> None:
    bogus = tmp_path / "bogus.lmdb"
    bogus.write_text("hello")
    assert main(["data", "info", str(bogus)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "bogus.lmdb" in err


def test_missing_input(tmp_path: Path, capsys) -> None:
    assert (
        main(["data", "convert", str(tmp_path / "nope.xyz"), "-o", str(tmp_path / "o.lmdb")]) == 1
    )
    assert "nope.xyz: no such file" in capsys.readouterr().err
    assert _files(tmp_path) == []


def _water_frames() -> list[Atoms]:
    rng = np.random.default_rng(0)
    frames = []
    for i in range(4):
        atoms = Atoms("H2O", positions=rng.normal(size=(3, 3)) * 0.7)
        atoms.calc = SinglePointCalculator(atoms, energy=-10.0 - i, forces=rng.normal(size=(3, 3)))
        atoms.info["REF_energy"] = -20.0 - i
        frames.append(atoms)
    return frames


@pytest.mark.parametrize("suffix", [".traj", ".db", ".xyz"])
def test_ase_formats_and_energy_key(tmp_path: Path, capsys, suffix: str) -> None:
    frames = _water_frames()
    source = tmp_path / f"water{suffix}"
    ase.io.write(source, frames)
    out = tmp_path / "water.lmdb"
    assert main(["data", "convert", str(source), "-o", str(out)]) == 0
    assert [s.energy for s in LmdbDataset(out)] == [-10.0, -11.0, -12.0, -13.0]
    if suffix == ".db":
        return  # ASE's db writer keeps calculator results, not arbitrary info keys
    mapped = tmp_path / "mapped.lmdb"
    assert (
        main(["data", "convert", str(source), "-o", str(mapped), "--energy-key", "REF_energy"]) == 0
    )
    dataset = LmdbDataset(mapped)
    assert [s.energy for s in dataset] == [-20.0, -21.0, -22.0, -23.0]
    assert dataset.header["key_mapping"]["energy"] == "REF_energy"
    assert all(s.forces is not None for s in dataset)


@pytest.mark.parametrize("label", ["energy", "forces", "stress"])
def test_explicit_key_that_matches_nothing_is_an_error(
    tmp_path: Path, tiny: Path, capsys, label: str
) -> None:
    """A named key that matches no frame names the key, the file and the
    keys that exist; nothing is written."""
    source = tiny / ("cu_emt_10.xyz" if label == "stress" else "no_forces.xyz")
    out = tmp_path / "o.lmdb"
    assert main(["data", "convert", str(source), "-o", str(out), f"--{label}-key", "typo"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith(f"mlip data: error: {source}, frame 0: --{label}-key")
    assert "'typo'" in err and "info keys" in err and "arrays keys" in err
    assert _files(tmp_path) == []


def test_key_missing_in_every_frame_with_mixed_labels_allowed(
    tmp_path: Path, tiny: Path, capsys
) -> None:
    source = tiny / "no_forces.xyz"
    out = tmp_path / "o.lmdb"
    argv = ["data", "convert", str(source), "-o", str(out), "--forces-key", "typo"]
    assert main([*argv, "--allow-missing-labels"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{source}: --forces-key" in err and "matches no frame" in err
    assert _files(tmp_path) == []


def test_energy_only_file_without_keys_is_accepted(tmp_path: Path, tiny: Path, capsys) -> None:
    """Held-out scans have no forces: without an explicit key that is fine."""
    out = tmp_path / "o.lmdb"
    assert main(["data", "convert", str(tiny / "no_forces.xyz"), "-o", str(out)]) == 0
    assert LmdbDataset(out).header["labels"]["forces"] == 0


def _mixed_labels(path: Path) -> None:
    frames = _water_frames()
    frames[2].calc = SinglePointCalculator(frames[2], energy=frames[2].get_potential_energy())
    ase.io.write(path, frames, format="extxyz")


def test_mixed_labels_are_an_error_unless_allowed(tmp_path: Path, capsys) -> None:
    source = tmp_path / "mixed.xyz"
    _mixed_labels(source)
    out = tmp_path / "o.lmdb"
    assert main(["data", "convert", str(source), "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert f"{source}, frame 2: has no forces, frame 0 of the file has them" in err
    assert not out.exists()
    assert main(["data", "convert", str(source), "-o", str(out), "--allow-missing-labels"]) == 0
    assert [s.forces is not None for s in LmdbDataset(out)] == [True, True, False, True]


def test_statistics_in_the_same_pass(
    tmp_path: Path, tiny: Path, bundled_acac: Path, capsys, monkeypatch
) -> None:
    from mlip.graph import stats as graph_stats

    def count_all_pairs(structure, cutoff: float) -> int:
        n = structure.num_atoms
        return n * (n - 1)

    monkeypatch.setattr(graph_stats, "count_edges", count_all_pairs)
    out = tmp_path / "s.lmdb"
    source = tiny / "acac_20.xyz"
    e0s = bundled_acac / "isolated_atoms.xyz"
    argv = ["data", "convert", str(source), "-o", str(out), "--cutoff", "5", "--e0s", str(e0s)]
    assert main(argv) == 0
    capsys.readouterr()
    blob = LmdbDataset(out).metadata(statistics_key("all", 5.0))
    assert blob["e0_method"] == "file" and blob["cutoff"] == 5.0
    assert blob["avg_num_neighbors"] == 14.0 and blob["num_structures"] == 20
    assert main(["data", "info", str(out)]) == 0
    assert "metadata 'statistics/split=all/cutoff=5'" in capsys.readouterr().out


def test_e0_file_missing_an_element(tmp_path: Path, tiny: Path, capsys) -> None:
    out = tmp_path / "o.lmdb"
    source = tiny / "acac_20.xyz"
    e0s = tiny / "cu_isolated_atom.xyz"
    assert main(["data", "convert", str(source), "-o", str(out), "--e0s", str(e0s)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "no E0 for H (Z=1), C (Z=6), O (Z=8)" in err and "cu_isolated_atom.xyz" in err
    assert _files(tmp_path) == []


def test_interrupted_conversion_leaves_nothing(tmp_path: Path, tiny: Path) -> None:
    from mlip.data.convert import convert

    def interrupt_at_fifth(structure, cutoff: float) -> int:
        if structure.frame == 4:
            assert [p.name.startswith("o.lmdb.partial-") for p in tmp_path.iterdir()] == [True]
            raise KeyboardInterrupt
        return 0

    out = tmp_path / "o.lmdb"
    with pytest.raises(KeyboardInterrupt):
        convert(
            [tiny / "acac_20.xyz"],
            out,
            cutoff=5.0,
            neighbor_counter=interrupt_at_fifth,
            map_size=2**16,
        )
    assert _files(tmp_path) == []
