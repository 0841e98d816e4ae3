"""Training: Lightning module, data module, metrics, EMA, the run driver.

Importing Lightning sets environment variables (``PYTORCH_NVML_BASED_CUDA_CHECK=1``, and
``TORCHINDUCTOR_CACHE_DIR`` through torch's inductor), and, when the ``rich`` package is
installed (torch-sim pulls it in), draws from Python's global random generator. This package
imports it with the environment and that random state put back afterwards, so importing
mlip changes neither; a training run sets the first variable for its own duration
(:func:`mlip.training.run.process_state_restored`).
"""

import os as _os
import random as _random

_environment = dict(_os.environ)
_random_state = _random.getstate()
import lightning  # noqa: E402,F401

for _key in set(_os.environ) - set(_environment):
    del _os.environ[_key]
_os.environ.update(_environment)
_random.setstate(_random_state)
del _environment, _random_state
