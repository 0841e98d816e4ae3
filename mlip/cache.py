"""The user cache folder: the one place mlip writes files the user did not name.

``$MLIP_CACHE_DIR`` if set, else ``$XDG_CACHE_HOME/mlip``, else ``~/.cache/mlip``. Inside it:
``cp/`` (fitted CP tensor-product factors), ``data/`` (LMDB conversions of the structure
files that training and evaluation read; nothing is written beside them), ``statistics/``
(training-split statistics of LMDB datasets the user gave: mlip never writes into those)
and ``compiled/`` (compiled force paths, :mod:`mlip.inference.compiled`).
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir(*parts: str) -> Path:
    """The cache folder (not created), or a subfolder of it.

    >>> cache_dir("cp").name
    'cp'
    """
    root = os.environ.get("MLIP_CACHE_DIR")
    if not root:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        root = os.path.join(base, "mlip")
    return Path(root, *parts)


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (on this machine): temporary files named after a dead
    writer's pid are stale and may be removed."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True
