"""CUDA graphs of the force call: the same results as without, one capture per input
shape, a new one when the list outgrows its capacity, and a failed capture warns once and
runs without graphs. The CUDA tests skip on machines without a GPU."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from ase.md.velocitydistribution import thermalize_momenta
from ase.md.verlet import VelocityVerlet
from ase.units import fs

from mlip.calculator import MLIPCalculator
from mlip.data import keys
from mlip.data.readers import atoms_to_structure
from mlip.graph.skin import SkinNeighborList
from mlip.inference.graphed import GraphedForceField

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_cuda_graphs_need_a_cuda_device(trained_acac_model):
    model, _ = trained_acac_model
    with pytest.raises(ValueError, match="cuda_graphs=True needs a CUDA device"):
        MLIPCalculator(model, device="cpu", cuda_graphs=True)


def test_failed_capture_warns_once_and_runs_without(trained_acac_model):
    """Capturing CPU tensors fails (no CUDA stream for them); the call still returns the
    function's result, and later calls run the function without trying again."""
    model, frames = trained_acac_model
    neighbors = SkinNeighborList(model.cutoff, 0.5, torch.float64, fixed_shapes=True)
    neighbors.reset([atoms_to_structure(frames[0])])
    data = neighbors.batch(torch.as_tensor(frames[0].positions))
    calls = []

    def fn(data, stress):
        calls.append(stress)
        return model(data, compute_forces=True, compute_stress=stress)

    graphed = GraphedForceField(fn)
    ref = model(data, compute_forces=True)
    with pytest.warns(RuntimeWarning, match="capturing a CUDA graph failed, running without"):
        out = graphed(data, False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = graphed(data, False)
    assert graphed.failed and graphed.captures == 0 and len(calls) == 2
    for got in (out, again):
        assert torch.equal(got[keys.FORCES], ref[keys.FORCES])


def _nve(model, atoms, **kwargs):
    a = atoms.copy()
    thermalize_momenta(a, 300, rng=np.random.default_rng(0))
    a.calc = MLIPCalculator(model, device="cuda", min_distance=None, **kwargs)
    VelocityVerlet(a, 0.5 * fs).run(60)
    return a


@cuda
@pytest.mark.parametrize("compile", ["none", "aot"])
def test_cuda_graphs_equal_plain_calls(trained_acac_model, compile, tmp_path, monkeypatch):
    """60 NVE steps on the GPU: graph replays give the trajectory of plain calls (float64,
    eager to 1e-9; AOT to 1e-6), with one capture (the shapes held)."""
    monkeypatch.setenv("MLIP_CACHE_DIR", str(tmp_path))
    model, frames = trained_acac_model
    plain = _nve(model, frames[2], compile=compile)
    graphed = _nve(model, frames[2], compile=compile, cuda_graphs=True)
    assert graphed.calc.graphs.failed is None and graphed.calc.graphs.captures == 1
    tol = 1e-9 if compile == "none" else 1e-6
    np.testing.assert_allclose(graphed.positions, plain.positions, atol=tol)
    np.testing.assert_allclose(graphed.get_forces(), plain.get_forces(), atol=10 * tol)


@cuda
def test_cuda_graph_recaptured_when_the_list_grows(trained_acac_model):
    """Squeezing the molecule past the list's capacity: a new capture, still exact."""
    model, frames = trained_acac_model
    calc = MLIPCalculator(model, device="cuda", min_distance=None, cuda_graphs=True)
    ref = MLIPCalculator(model, device="cuda", min_distance=None)
    atoms = frames[0].copy()
    for scale in (1.0, 0.8, 0.6):
        a = atoms.copy()
        a.positions = atoms.positions.mean(0) + scale * (atoms.positions - atoms.positions.mean(0))
        np.testing.assert_allclose(calc.get_forces(a), ref.get_forces(a), atol=1e-9)
    assert calc.graphs.captures >= 2
