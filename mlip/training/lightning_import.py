"""Lightning, imported without side effects on the process.

Importing Lightning sets environment variables (``PYTORCH_NVML_BASED_CUDA_CHECK=1``, and
``TORCHINDUCTOR_CACHE_DIR`` through torch's inductor), and, when the ``rich`` package is
installed (torch-sim pulls it in), draws from Python's global random generator. Importing it
through this module puts the environment and that random state back afterwards, so importing
an mlip module changes neither; a training run sets the first variable for its own duration
(:func:`mlip.training.run.process_state_restored`).

Every module that uses Lightning takes it from here (``from mlip.training.lightning_import
import L``); one that also imports a Lightning submodule by name does so after that line,
kept first by ``# isort: split``. The rest of mlip (data, evaluation, the ``eval`` and
``data`` commands) never imports Lightning.
"""

from __future__ import annotations

import os
import random
from types import ModuleType


def _import_lightning() -> ModuleType:
    environment = dict(os.environ)
    random_state = random.getstate()
    try:
        import lightning
    finally:
        for key in set(os.environ) - set(environment):
            del os.environ[key]
        os.environ.update(environment)  # intended: puts back what the import changed
        random.setstate(random_state)
    return lightning


L = _import_lightning()
