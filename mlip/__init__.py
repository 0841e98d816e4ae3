"""mlip: machine-learning interatomic potentials, from LMDB datasets to ASE molecular dynamics.

The public API (imported lazily, so ``import mlip`` stays light):

- :class:`Potential` (``mlip.model.potential``): the energy/force/stress model.
- :func:`load_model` / :func:`save_model` (``mlip.model.io``): deployable model files,
  loaded with ``torch.load(weights_only=True)``.
- :class:`ForceField` (``mlip.inference``): the inference engine every adapter drives.
- :class:`MLIPCalculator` (``mlip.calculator``): the ASE calculator.
- :func:`train` (``mlip.training.run``): a training run from a config dict or YAML file.
- :func:`evaluate` (``mlip.training.evaluate``): errors of a model on a data file.
- :func:`load_config` (``mlip.training.config``): defaults <- YAML <- overrides.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_PUBLIC = {
    "Potential": "mlip.model.potential",
    "load_model": "mlip.model.io",
    "save_model": "mlip.model.io",
    "MLIPCalculator": "mlip.calculator",
    "ForceField": "mlip.inference",
    "train": "mlip.training.run",
    "evaluate": "mlip.training.evaluate",
    "load_config": "mlip.training.config",
}
__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'mlip' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
