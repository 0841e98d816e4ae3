"""Flat-memory statistics: normal-equation sums equal the in-memory computation, and
partial sums (shards, workers) merge into exactly the one-pass result."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mlip.data.readers import iter_structures
from mlip.data.stats import StatisticsAccumulator, compute_statistics, e0s_from_file
from mlip.graph.stats import closest_pairs, count_edges


@pytest.fixture(scope="module")
def mixed(bundled_acac: Path, tiny: Path) -> list:
    """The bundled acac training set plus periodic Cu frames: three elements in one fixed
    composition (rank-deficient on their own) and one more."""
    return list(iter_structures(bundled_acac / "train_300K.xyz")) + list(
        iter_structures(tiny / "cu_emt_10.xyz")
    )


def _in_memory(structures: list, e0s: dict[int, float] | None) -> dict:
    """The statistics from the full composition matrix, the way one would write them."""
    zs = sorted({int(z) for s in structures for z in s.numbers})
    a = np.array([[np.sum(s.numbers == z) for z in zs] for s in structures], dtype=float)
    y = np.array([s.energy for s in structures])
    n = a.sum(axis=1)
    e0 = np.linalg.lstsq(a, y, rcond=None)[0] if e0s is None else np.array([e0s[z] for z in zs])
    per_atom = (y - a @ e0) / n
    mean = per_atom.mean()
    rest = np.linalg.lstsq(a, y - a @ e0 - mean * n, rcond=None)[0]
    return {"e0s": e0, "mean": mean, "rms": np.sqrt(np.mean(per_atom**2)),
            "by_element": mean + rest, "zs": zs}


@pytest.mark.parametrize("e0_source", ["least_squares", "file"])
def test_streaming_statistics_equal_in_memory(mixed: list, bundled_acac: Path, e0_source: str) -> None:
    e0s = None
    if e0_source == "file":
        e0s = e0s_from_file(bundled_acac / "isolated_atoms.xyz") | {29: -0.02}
    ref = _in_memory(mixed, e0s)
    stats = compute_statistics(iter(mixed), e0s=e0s)
    assert list(stats.e0s) == ref["zs"]
    np.testing.assert_allclose(list(stats.e0s.values()), ref["e0s"], rtol=1e-10, atol=1e-8)
    assert stats.energy_per_atom_mean == pytest.approx(ref["mean"], rel=1e-9, abs=1e-9)
    assert stats.energy_per_atom_rms == pytest.approx(ref["rms"], rel=1e-7)
    np.testing.assert_allclose(
        [stats.energy_per_atom_by_element[z] for z in ref["zs"]], ref["by_element"],
        rtol=1e-7, atol=1e-7,
    )


def test_acac_alone_is_the_minimum_norm_fit(mixed: list) -> None:
    acac = [s for s in mixed if 29 not in s.numbers]
    ref = _in_memory(acac, None)
    stats = compute_statistics(acac)
    np.testing.assert_allclose(list(stats.e0s.values()), ref["e0s"], rtol=1e-10)
    np.testing.assert_allclose(list(stats.energy_per_atom_by_element.values()),
                               ref["by_element"], rtol=1e-7, atol=1e-7)
    assert stats.energy_per_atom_rms == pytest.approx(ref["rms"], rel=1e-7)


def test_partial_sums_merge_into_the_one_pass_result(mixed: list) -> None:
    def accumulator() -> StatisticsAccumulator:
        return StatisticsAccumulator(cutoff=4.0, neighbor_counter=count_edges,
                                     pair_distances=closest_pairs)

    whole = accumulator()
    for s in mixed:
        whole.add(s)
    # uneven chunks in a shuffled order, each through a JSON round trip of its state
    order = np.random.default_rng(3).permutation(len(mixed))
    merged = None
    for chunk in np.split(order, [7, 260, 300]):
        part = accumulator()
        for i in chunk:
            part.add(mixed[i])
        part = StatisticsAccumulator.from_state(json.loads(json.dumps(part.state())))
        merged = part if merged is None else merged.merge(part)
    a, b = whole.finalize(), merged.finalize()
    assert b.num_structures == a.num_structures == len(mixed)
    assert b.avg_num_neighbors == a.avg_num_neighbors and b.closest_pairs == a.closest_pairs
    assert b.force_rms == pytest.approx(a.force_rms, rel=1e-12)
    for key in ("energy_per_atom_mean", "energy_per_atom_rms"):
        assert getattr(b, key) == pytest.approx(getattr(a, key), rel=1e-7, abs=1e-12)
    np.testing.assert_allclose(list(b.e0s.values()), list(a.e0s.values()), rtol=1e-11)
    np.testing.assert_allclose(list(b.energy_per_atom_by_element.values()),
                               list(a.energy_per_atom_by_element.values()), rtol=1e-9, atol=1e-9)


def test_state_does_not_grow_with_the_data(mixed: list) -> None:
    acc = StatisticsAccumulator()
    sizes = []
    for i, s in enumerate(mixed):
        acc.add(s)
        if i in (20, len(mixed) - 1):
            sizes.append(len(json.dumps(acc.state())))
    assert sizes[1] < 1.2 * sizes[0] + 400  # one more element, not one more row per frame


def test_merging_different_settings_is_refused() -> None:
    with pytest.raises(ValueError, match="different cutoffs"):
        StatisticsAccumulator(cutoff=4.0).merge(StatisticsAccumulator(cutoff=5.0))
