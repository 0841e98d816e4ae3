"""CP tensor product: exact at full rank, error and equivariance error fall with rank,
factors fitted by an explicit step, cached, and carried by saved models."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from e3nn import o3

from mlip.ops.buffers import exact
from mlip.ops.sh import num_components, wigner_d
from mlip.ops.tp.cg import CGTensorProduct
from mlip.ops.tp.cp import CPTensorProduct, fit_cp, shared_path_tensor


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    # the default location, $XDG_CACHE_HOME/mlip (not the suite's $MLIP_CACHE_DIR)
    monkeypatch.delenv("MLIP_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def prepared(lmax, rank):
    tp = CPTensorProduct(lmax, lmax, lmax, rank=rank).double()
    tp.prepare()
    return tp


def test_constructor_only_allocates():
    tp = CPTensorProduct(2, 2, 2)
    assert tp.rank == 28 and torch.isnan(exact(tp, "fit_error"))
    with pytest.raises(RuntimeError, match="prepare"):
        tp(torch.randn(2, 1, 9), torch.randn(2, 1, 9))


@pytest.mark.parametrize("lmax", [1, 2])
def test_full_rank_equals_cg_with_shared_weights(lmax):
    d = num_components(lmax)
    tp = prepared(lmax, d * d)
    cg = CGTensorProduct(lmax, lmax, lmax)
    g = torch.Generator().manual_seed(0)
    x1 = torch.randn(5, 3, d, generator=g, dtype=torch.float64)
    x2 = torch.randn(5, 1, d, generator=g, dtype=torch.float64)
    ref = cg(x1, x2, torch.ones(5, 3, cg.weight_numel, dtype=torch.float64))
    out = tp(x1, x2)
    assert ((out - ref).norm() / ref.norm()) < 1e-6


@pytest.mark.parametrize("lmax", [1, 2])
def test_sharing_off_is_cg_with_per_path_weights(lmax):
    """share_weights=False: one weight per CG path; at its default (exact) rank it is the
    CG product with the same weights; below that rank it is visibly approximate."""
    d = num_components(lmax)
    tp = CPTensorProduct(lmax, lmax, lmax, share_weights=False).double()
    tp.prepare()
    cg = CGTensorProduct(lmax, lmax, lmax)
    assert tp.rank == d * d and tp.weight_numel == cg.weight_numel
    g = torch.Generator().manual_seed(2)
    x1 = torch.randn(5, 3, d, generator=g, dtype=torch.float64)
    x2 = torch.randn(5, 1, d, generator=g, dtype=torch.float64)
    w = torch.randn(5, 3, cg.weight_numel, generator=g, dtype=torch.float64)
    ref = cg(x1, x2, w)
    assert ((tp(x1, x2, w) - ref).norm() / ref.norm()) < 1e-12
    low = CPTensorProduct(lmax, lmax, lmax, rank=7 * lmax**2, share_weights=False).double()
    low.prepare()
    assert 0.1 < float(exact(low, "fit_error")) < 1.0  # the stacked path tensor is not low rank


def equivariance_error(tp, lmax, num=100):
    g = torch.Generator().manual_seed(1)
    d = num_components(lmax)
    x1 = torch.randn(8, 2, d, generator=g, dtype=torch.float64)
    x2 = torch.randn(8, 1, d, generator=g, dtype=torch.float64)
    errors = []
    for k in range(num):
        torch.manual_seed(k)
        dm = wigner_d(lmax, o3.rand_matrix(dtype=torch.float64))
        a, b = tp(x1 @ dm.T, x2 @ dm.T), tp(x1, x2) @ dm.T
        errors.append(float((a - b).norm() / b.norm()))
    return float(np.mean(errors))


def test_error_and_equivariance_error_fall_with_rank():
    lmax = 2
    m = shared_path_tensor(lmax, lmax, lmax)
    fits = [fit_cp(m, r, restarts=1)[3] for r in (6, 14, 28)]
    assert fits[0] > fits[1] > fits[2] and fits[2] < 1e-3, fits
    eq = [equivariance_error(prepared(lmax, r), lmax) for r in (6, 14, 28, 81)]
    assert eq[0] > eq[1] > eq[2] > eq[3], eq
    assert eq[0] > 1e-2 and eq[3] < 1e-10  # visibly approximate at low rank, exact at full


def test_default_rank_fit_quality_and_cache(tmp_path):
    tp = prepared(3, None)
    assert tp.rank == 63 and float(exact(tp, "fit_error")) < 1e-3
    cached = list((tmp_path / "cache" / "mlip" / "cp").glob("*.npz"))
    assert len(cached) == 1
    again = prepared(3, None)  # from the cache: identical factors
    assert torch.equal(exact(again, "factor_a"), exact(tp, "factor_a"))


def test_saved_model_carries_factors(tmp_path, bundled_acac):
    import ase.io

    from mlip.graph.build import atoms_to_batch
    from mlip.model.build import build_potential
    from mlip.model.io import load_model, save_model

    config = {"backbone": {"class_path": "mlip.backbones.equivariant.EquivariantBackbone",
                           "init_args": {"channels": 4, "lmax_sh": 2, "correlation": 2,
                                         "tensor_product": "mlip.ops.tp.cp.CPTensorProduct",
                                         "tensor_product_args": {"rank": 20}}}}
    torch.manual_seed(0)
    model = build_potential(config, [1, 6, 8], [-1.0, -2.0, -3.0], 1.0, 0.0, 5.0, 12.0).double()
    path = save_model(tmp_path / "cp.pt", model, config, 12.0)
    for f in (tmp_path / "cache").rglob("*.npz"):
        f.unlink()  # loading must not need the cache nor refit
    loaded = load_model(path)
    data = atoms_to_batch(ase.io.read(bundled_acac / "train_300K.xyz", ":2"), 5.0, torch.float64)
    assert torch.equal(model(data)["forces"], loaded(data)["forces"])
    assert not list((tmp_path / "cache").rglob("*.npz"))
