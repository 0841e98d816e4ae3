"""Fuzzed structure files: broken extxyz text and broken ASE inputs.

Every case goes through `mlip data convert` (the CLI, in process) and through the
training-time conversion (:func:`mlip.data.open.ensure_lmdb`). Either the input is
still valid and the output is a readable dataset of valid structures, or the result is one
line naming the file (and the frame, where one frame is at fault), never a traceback, and
nothing that looks like a dataset is left behind. Cases a mutation makes invalid by
construction must fail. Run with ``--hypothesis-show-statistics`` to see the classes drawn.
"""

from __future__ import annotations

import contextlib
import io
import re
import tempfile
from collections.abc import Callable
from pathlib import Path

import ase.io
import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, molecule
from ase.calculators.singlepoint import SinglePointCalculator

from mlip.cli.main import main
from mlip.data.lmdb import LmdbDataset
from mlip.data.open import CACHE_DIR_NAME, cache_path_for, ensure_lmdb
from mlip.data.structure import InvalidStructureError

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, event, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

FUZZ = settings(
    max_examples=150, deadline=None, derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
NUMBER = re.compile(r"-?\d+\.\d+(?:e[+-]?\d+)?")


def _labelled(atoms: Atoms, rng: np.random.Generator, stress: bool) -> Atoms:
    atoms = atoms.copy()
    atoms.positions += rng.normal(scale=0.05, size=atoms.positions.shape)
    results = {"energy": float(rng.normal()) - 10.0, "forces": rng.normal(size=(len(atoms), 3))}
    if stress:
        results["stress"] = rng.normal(scale=1e-3, size=6)
    atoms.calc = SinglePointCalculator(atoms, **results)
    return atoms


def _frames(periodic: bool, seed: int = 0) -> list[Atoms]:
    rng = np.random.default_rng(seed)
    if periodic:
        base = bulk("Cu", "fcc", a=3.6, cubic=True)
        return [_labelled(base, rng, stress=True) for _ in range(3)]
    return [_labelled(molecule(name), rng, stress=False) for name in ("H2O", "CH4", "NH3")]


def _text(frames: list[Atoms]) -> str:
    buf = io.StringIO()
    ase.io.write(buf, frames, format="extxyz")
    return buf.getvalue()


BASE = {periodic: _text(_frames(periodic)) for periodic in (False, True)}


def _frame_starts(lines: list[str]) -> list[int]:
    """Line index of every frame's atom-count line."""
    starts, i = [], 0
    while i < len(lines) and lines[i].strip():
        starts.append(i)
        i += int(lines[i]) + 2
    return starts


def _convert(path: Path) -> tuple[int, str, list[str]]:
    """Run `mlip data convert` in process: exit code, stderr, files left in the folder."""
    out = path.parent / "out.lmdb"
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = main(["data", "convert", str(path), "-o", str(out), "--no-progress"])
    left = sorted(p.name for p in path.parent.iterdir() if p != path)
    return rc, err.getvalue(), left


def _event(name: str) -> None:
    """Count a class for --hypothesis-show-statistics (no-op outside @given tests)."""
    with contextlib.suppress(hypothesis.errors.InvalidArgument):
        event(name)


def _check(path: Path, must_fail: bool, frame: int | None, n_frames: int) -> None:
    rc, err, left = _convert(path)
    if rc == 0:
        assert not must_fail, f"accepted an invalid input:\n{path.read_text()[:2000]}"
        dataset = LmdbDataset(path.parent / "out.lmdb")
        assert 1 <= len(dataset) <= n_frames
        for structure in dataset:
            structure.validate()
        dataset.close()
        _event("still valid")
    else:
        assert rc == 1
        assert err.count("\n") == 1, err
        assert err.startswith(f"mlip data: error: {path}"), err
        if frame is not None:
            assert f"frame {frame}" in err, err
        assert left == [], left  # neither the output nor a partial file
        problem = err.strip().replace(str(path), "FILE").split(": ", 2)[-1]
        _event("error: " + re.sub(r"'[^']*'|(?<![A-Za-z])[-+]?\d[\d.e+-]*", "#", problem)[:70])
    # Training-time conversion: same verdict, a clean message, no cache file left.
    for p in path.parent.iterdir():
        if p != path:
            p.unlink()
    try:
        cached = ensure_lmdb(path, {})
    except (InvalidStructureError, ValueError) as exc:
        assert rc == 1 and "\n" not in str(exc) and str(path) in str(exc)
        cache = cache_path_for(path, {})
        assert not cache.exists() and not list(cache.parent.glob(cache.name + "*"))
        assert not (path.parent / CACHE_DIR_NAME).exists()
    else:
        assert rc == 0 and len(LmdbDataset(cached)) >= 1


def _run(text: str, must_fail: bool, frame: int | None = None, n_frames: int = 3) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "in.xyz"
        path.write_text(text)
        _check(path, must_fail, frame, n_frames)


periodic_flag = st.booleans()


@FUZZ
@given(periodic=periodic_flag, cut=st.floats(0.0, 1.0, exclude_max=True))
def test_truncated_file(periodic: bool, cut: float) -> None:
    text = BASE[periodic]
    _run(text[: int(cut * len(text))], must_fail=False)


@FUZZ
@given(periodic=periodic_flag, data=st.data())
def test_wrong_atom_count(periodic: bool, data: st.DataObject) -> None:
    lines = BASE[periodic].splitlines(keepends=True)
    starts = _frame_starts(lines)
    k = data.draw(st.integers(0, len(starts) - 1), label="frame")
    n = int(lines[starts[k]])
    new = data.draw(
        st.one_of(st.integers(-3, n + 5).filter(lambda m: m != n), st.sampled_from(["x", "", "2.5"]))
    )
    lines[starts[k]] = f"{new}\n"
    _run("".join(lines), must_fail=True)


def _atom_line(data: st.DataObject, lines: list[str]) -> tuple[int, int]:
    """(frame, line index) of a random atom line."""
    starts = _frame_starts(lines)
    k = data.draw(st.integers(0, len(starts) - 1), label="frame")
    a = data.draw(st.integers(0, int(lines[starts[k]]) - 1), label="atom")
    return k, starts[k] + 2 + a


def _replace_field(line: str, index: int, value: str) -> str:
    fields = line.split()
    fields[index] = value
    return " ".join(fields) + "\n"


@FUZZ
@given(
    periodic=periodic_flag,
    data=st.data(),
    value=st.sampled_from(["abc", "1.2.3", "--1", "nan", "NaN", "inf", "-inf", "1e999", "0x1p3"]),
)
def test_bad_number_in_an_atom_line(periodic: bool, data: st.DataObject, value: str) -> None:
    """Positions (fields 1-3) or forces (the last three fields) that are not finite numbers."""
    lines = BASE[periodic].splitlines(keepends=True)
    k, i = _atom_line(data, lines)
    field = data.draw(st.sampled_from([1, 2, 3, -3, -2, -1]), label="field")
    lines[i] = _replace_field(lines[i], field, value)
    _run("".join(lines), must_fail=True, frame=k)


@FUZZ
@given(periodic=periodic_flag, data=st.data(), value=st.sampled_from(["nan", "inf", "-inf"]))
def test_non_finite_energy(periodic: bool, data: st.DataObject, value: str) -> None:
    lines = BASE[periodic].splitlines(keepends=True)
    starts = _frame_starts(lines)
    k = data.draw(st.integers(0, len(starts) - 1), label="frame")
    comment = starts[k] + 1
    lines[comment] = re.sub(r"energy=\S+", f"energy={value}", lines[comment])
    _run("".join(lines), must_fail=True, frame=k)


@FUZZ
@given(
    periodic=periodic_flag,
    data=st.data(),
    magnitude=st.floats(1.1e4, 1e300),
    sign=st.sampled_from([-1, 1]),
)
def test_absurd_coordinate(periodic: bool, data: st.DataObject, magnitude: float, sign: int) -> None:
    lines = BASE[periodic].splitlines(keepends=True)
    k, i = _atom_line(data, lines)
    field = data.draw(st.integers(1, 3), label="axis")
    lines[i] = _replace_field(lines[i], field, repr(sign * magnitude))
    _run("".join(lines), must_fail=True, frame=k)


@FUZZ
@given(periodic=periodic_flag, data=st.data(),
       symbol=st.sampled_from(["Xx", "Qq", "Zz", "Abc", "X", "h2", "1"]))
def test_unknown_element(periodic: bool, data: st.DataObject, symbol: str) -> None:
    lines = BASE[periodic].splitlines(keepends=True)
    k, i = _atom_line(data, lines)
    lines[i] = _replace_field(lines[i], 0, symbol)
    _run("".join(lines), must_fail=True, frame=k)


@pytest.mark.parametrize("text", ["", "\n", "   \n\n", "\x00\x01\x02", "0\n\n"])
def test_empty_or_binary_file(text: str) -> None:
    _run(text, must_fail=True)


@FUZZ
@given(data=st.data(), kind=st.sampled_from(["zero", "flat", "negative", "tiny"]))
def test_bad_cell_with_pbc(data: st.DataObject, kind: str) -> None:
    lines = BASE[True].splitlines(keepends=True)
    starts = _frame_starts(lines)
    k = data.draw(st.integers(0, len(starts) - 1), label="frame")
    cell = {"zero": np.zeros((3, 3)), "flat": np.array([[3.6, 0, 0], [0, 3.6, 0], [3.6, 3.6, 0]]),
            "negative": np.diag([3.6, 3.6, -3.6]), "tiny": np.eye(3) * 1e-4}[kind]
    lattice = " ".join(f"{x:.6f}" for x in cell.reshape(-1))
    comment = starts[k] + 1
    lines[comment] = re.sub(r'Lattice="[^"]*"', f'Lattice="{lattice}"', lines[comment])
    _run("".join(lines), must_fail=True, frame=k)


@FUZZ
@given(periodic=periodic_flag, data=st.data(), offset=st.floats(0.0, 0.09))
def test_duplicate_atoms(periodic: bool, data: st.DataObject, offset: float) -> None:
    """One atom moved onto another (within 0.1 Å), or onto a periodic image of it."""
    frames = _frames(periodic)
    k = data.draw(st.integers(0, len(frames) - 1), label="frame")
    atoms = frames[k]
    i, j = data.draw(st.lists(st.integers(0, len(atoms) - 1), min_size=2, max_size=2,
                              unique=True), label="pair")
    image = atoms.cell.array.sum(axis=0) if periodic and data.draw(st.booleans()) else 0.0
    pos = atoms.positions.copy()
    pos[i] = pos[j] + image + np.array([offset, 0.0, 0.0])
    atoms.positions = pos
    _run(_text(frames), must_fail=True, frame=k)


def _drop(atoms: Atoms, label: str) -> None:
    results = {k: v for k, v in atoms.calc.results.items() if k != label}
    atoms.calc = SinglePointCalculator(atoms, **results)


@FUZZ
@given(periodic=periodic_flag, data=st.data())
def test_inconsistent_labels(periodic: bool, data: st.DataObject) -> None:
    """A frame after the first lacks a label the first has (stress only for periodic data)."""
    frames = _frames(periodic)
    k = data.draw(st.integers(1, len(frames) - 1), label="frame")
    label = data.draw(st.sampled_from(["energy", "forces", "stress"] if periodic
                                      else ["energy", "forces"]), label="label")
    _drop(frames[k], label)
    _run(_text(frames), must_fail=True, frame=k)


ATOMS_BREAKERS: dict[str, Callable[[Atoms], None]] = {
    "nan position": lambda a: a.positions.__setitem__((0, 1), np.nan),
    "inf position": lambda a: a.positions.__setitem__((-1, 0), -np.inf),
    "absurd position": lambda a: a.positions.__setitem__((0, 2), 1e9),
    "atomic number 0": lambda a: a.numbers.__setitem__(0, 0),
    "atomic number 200": lambda a: a.numbers.__setitem__(0, 200),
    "zero cell with pbc": lambda a: (a.set_pbc(True), a.set_cell(np.zeros((3, 3)))),
    "duplicate atom": lambda a: a.positions.__setitem__(1, a.positions[0]),
    "nan forces": lambda a: a.calc.results["forces"].__setitem__((0, 0), np.nan),
    "forces of wrong shape": lambda a: a.calc.results.__setitem__("forces", np.zeros((1, 3))),
}


@pytest.mark.parametrize("suffix", [".traj", ".db"])
@pytest.mark.parametrize("breaker", sorted(ATOMS_BREAKERS))
def test_broken_ase_inputs(tmp_path: Path, suffix: str, breaker: str) -> None:
    """The same classes arriving as ase.Atoms in ASE's own formats."""
    frames = _frames(periodic=False)
    ATOMS_BREAKERS[breaker](frames[1])
    path = tmp_path / f"in{suffix}"
    try:
        ase.io.write(path, frames)
    except Exception as err:  # ASE refuses to store it: nothing to convert
        pytest.skip(f"ASE cannot write {breaker} to {suffix}: {err}")
    _check(path, must_fail=True, frame=1, n_frames=3)


def test_broken_training_file_is_one_line(tmp_path: Path, capsys) -> None:
    """`mlip train` on a broken file: one line naming file and frame, no run folder left."""
    lines = BASE[False].splitlines(keepends=True)
    starts = _frame_starts(lines)
    lines[starts[2] + 2] = _replace_field(lines[starts[2] + 2], 1, "nan")
    path = tmp_path / "broken.xyz"
    path.write_text("".join(lines))
    config = tmp_path / "c.yaml"
    config.write_text(f"data: {{train: {path}, val_size: 1}}\noutput_dir: {tmp_path / 'runs'}\n")
    assert main(["train", "--config", str(config)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{path}, frame 2: positions contain NaN" in err, err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("*.ckpt"))
