"""Training: Lightning module, data module, metrics, EMA, the run driver.

Importing Lightning sets environment variables (``PYTORCH_NVML_BASED_CUDA_CHECK=1``, and
``TORCHINDUCTOR_CACHE_DIR`` through torch's inductor). This package imports it with the
environment put back afterwards, so importing mlip changes no environment; a training run
sets the first for its own duration (:func:`mlip.training.run.process_state_restored`).
"""

import os as _os

_environment = dict(_os.environ)
import lightning  # noqa: E402,F401

for _key in set(_os.environ) - set(_environment):
    del _os.environ[_key]
_os.environ.update(_environment)
del _environment
