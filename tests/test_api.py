"""The public API at the package root, and what constructing objects must not change."""

from __future__ import annotations

import subprocess
import sys

import torch

import mlip


def test_public_names_resolve():
    from mlip.calculator import MLIPCalculator
    from mlip.model.io import load_model, save_model
    from mlip.model.potential import Potential
    from mlip.training.config import load_config
    from mlip.training.evaluate import evaluate
    from mlip.training.run import train

    assert mlip.Potential is Potential and mlip.MLIPCalculator is MLIPCalculator
    assert mlip.load_model is load_model and mlip.save_model is save_model
    assert mlip.train is train and mlip.evaluate is evaluate and mlip.load_config is load_config
    assert set(mlip.__all__) >= {"Potential", "load_model", "MLIPCalculator", "train", "evaluate"}


def test_import_is_light():
    """`import mlip` loads neither torch nor Lightning (they load with the names that need them)."""
    code = "import sys, mlip; print('torch' in sys.modules, 'lightning' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_calculator_changes_no_process_state(trained_acac_model, monkeypatch):
    from mlip.calculator import MLIPCalculator, allocator

    calls = []
    monkeypatch.setattr(allocator, "tune_glibc_malloc", lambda: calls.append(1))
    model, frames = trained_acac_model
    before = torch.get_default_dtype()
    atoms = frames[0].copy()
    atoms.calc = MLIPCalculator(model, device="cpu", dtype="float32")
    atoms.get_forces()
    assert torch.get_default_dtype() == before
    assert not calls  # malloc tuning is for scripts and the CLI to opt into
