"""This process's place in a multi-process launch, read before Lightning starts.

torchrun and Lightning's own launcher set ``RANK``/``LOCAL_RANK``; SLURM's ``srun`` sets
``SLURM_PROCID``/``SLURM_LOCALID`` (Lightning reads the same variables). Code that must run
once per run (writing the config) or once per node (converting a structure file into the
node's cache) asks here, so it behaves under every launcher.
"""

from __future__ import annotations

import os


def _first_int(*names: str) -> int:
    for name in names:
        value = os.environ.get(name)
        if value not in (None, ""):
            return int(value)
    return 0


def global_rank() -> int:
    """0 for a single process and for the first process of a torchrun/srun launch."""
    return _first_int("RANK", "SLURM_PROCID")


def local_rank() -> int:
    """This process's index on its node (0 for a single process)."""
    return _first_int("LOCAL_RANK", "SLURM_LOCALID")
