"""The public API at the package root, and what constructing objects must not change."""

from __future__ import annotations

import subprocess
import sys

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


CALCULATOR_SCRIPT = """
import ctypes, ase, torch
opened = []
real_cdll = ctypes.CDLL
ctypes.CDLL = lambda name, *a, **k: opened.append(name) or real_cdll(name, *a, **k)
from mlip.calculator import MLIPCalculator
from mlip.cli import allocator
from mlip.model.build import build_potential
backbone = {"class_path": "mlip.backbones.equivariant.EquivariantBackbone",
            "init_args": {"channels": 4, "lmax_hidden": 1, "lmax_sh": 1, "correlation": 2}}
model = build_potential({"backbone": backbone}, [1, 8], [-13.6, -2041.0], 1.0, 0.0, 4.0, 2.0)
atoms = ase.Atoms("OH2", positions=[[0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]])
atoms.calc = MLIPCalculator(model, device="cpu", dtype="float64")
atoms.get_forces()
print(torch.get_default_dtype(), allocator._done, any("libc" in str(n) for n in opened))
"""


def test_calculator_changes_no_process_state():
    """A fresh process: building a model and a calculator and computing forces leaves torch's
    default dtype alone and never reaches glibc's mallopt (the CLI opts its own process in)."""
    out = subprocess.run([sys.executable, "-c", CALCULATOR_SCRIPT], capture_output=True,
                         text=True, check=True)
    assert out.stdout.split() == ["torch.float32", "False", "False"], out.stdout
