"""Helpers shared by the data-layer tests (as fixtures, so no test imports another)."""

from __future__ import annotations

import struct
from collections.abc import Callable

import numpy as np
import pytest

from mlip.data.structure import Structure


def _random_structure(seed: int = 0, n: int = 7, labels: bool = True) -> Structure:
    rng = np.random.default_rng(seed)
    return Structure(
        numbers=rng.integers(1, 90, n),
        positions=rng.normal(size=(n, 3)) * 3,
        cell=rng.normal(size=(3, 3)),
        pbc=np.array([True, False, True]),
        energy=float(rng.normal()) * 1e3 if labels else None,
        forces=rng.normal(size=(n, 3)) if labels else None,
        stress=rng.normal(size=(3, 3)) if labels else None,
        charge=-1.0,
        spin_multiplicity=3.0,
        config_type="dimer_ü",
        source="some/dir/file.xyz",
        frame=12 + seed,
    )


def _assert_identical(a: Structure, b: Structure) -> None:
    """Every field equal; arrays bit for bit (same dtype, shape and bytes)."""
    for name in ("numbers", "positions", "cell", "pbc", "forces", "stress"):
        x, y = getattr(a, name), getattr(b, name)
        if x is None or y is None:
            assert x is None and y is None, name
            continue
        assert x.dtype == y.dtype and x.shape == y.shape, name
        assert x.tobytes() == y.tobytes(), name
    for name in ("energy", "charge", "spin_multiplicity", "config_type", "source", "frame"):
        x, y = getattr(a, name), getattr(b, name)
        assert type(x) is type(y), name
        if isinstance(x, float):
            assert struct.pack("<d", x) == struct.pack("<d", y), name
        else:
            assert x == y, name


@pytest.fixture
def random_structure() -> Callable[..., Structure]:
    """``random_structure(seed=0, n=7, labels=True)``: a structure using every field."""
    return _random_structure


@pytest.fixture
def assert_identical() -> Callable[[Structure, Structure], None]:
    """``assert_identical(a, b)``: fields equal, arrays and floats bit for bit."""
    return _assert_identical
