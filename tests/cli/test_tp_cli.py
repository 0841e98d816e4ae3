"""`mlip tp fit-cp`: fits CP factors once, caches them under $XDG_CACHE_HOME, reuses the cache."""

from __future__ import annotations

import re

import numpy as np
import pytest

from mlip.cli.main import main
from mlip.ops.tp import cp


@pytest.fixture
def cache_home(tmp_path, monkeypatch):
    monkeypatch.delenv("MLIP_CACHE_DIR", raising=False)  # the default location under XDG
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    return tmp_path / "xdg" / "mlip" / "cp"


def _error(out: str) -> float:
    return float(re.search(r"relative reconstruction error (\S+),", out).group(1))


def test_fit_cp_writes_the_cache_and_reuses_it(cache_home, capsys, monkeypatch):
    assert main(["tp", "fit-cp", "--lmax", "1", "--rank", "6"]) == 0
    first = capsys.readouterr().out
    assert "fitted CP rank 6 for (L1, L2, Lout) = (1, 1, 1)" in first
    assert "(L1, L2, Lout) = (1, 1, 1), rank 6" in first and str(cache_home) in first
    files = sorted(p.name for p in cache_home.iterdir())
    assert files == ["cp_l1_1_1_r6.npz"]  # no partial file left behind
    with np.load(cache_home / files[0], allow_pickle=False) as f:
        assert f["a"].shape == (4, 6) and f["b"].shape == (4, 6) and f["c"].shape == (4, 6)
        assert float(f["error"]) == pytest.approx(_error(first), rel=1e-3)
    assert 0 < _error(first) < 1  # rank 6 < 16 = D1 D2: an approximation, not exact

    def no_fitting(*args, **kwargs):
        raise AssertionError("the second call must read the cache, not fit again")

    monkeypatch.setattr(cp, "fit_cp", no_fitting)
    assert main(["tp", "fit-cp", "--lmax", "1", "--rank", "6"]) == 0
    second = capsys.readouterr().out
    assert "fitted" not in second and _error(second) == _error(first)
    assert sorted(p.name for p in cache_home.iterdir()) == files


def test_per_path_factors_have_their_own_cache_file(cache_home, capsys):
    assert main(["tp", "fit-cp", "--lmax", "1", "--rank", "6", "--no-sharing"]) == 0
    assert "per path" in capsys.readouterr().out
    assert sorted(p.name for p in cache_home.iterdir()) == ["cp_l1_1_1_r6_paths.npz"]


def test_full_rank_is_exact_and_not_cached(cache_home, capsys):
    assert main(["tp", "fit-cp", "--lmax", "1", "--rank", "16"]) == 0
    assert _error(capsys.readouterr().out) == 0.0
    assert not cache_home.exists()
