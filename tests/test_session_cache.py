"""The suite runs with its own cache folder, not the user's."""

from __future__ import annotations

import os
from pathlib import Path

from mlip.cache import cache_dir


def test_cache_is_the_sessions_folder(session_cache):
    assert os.environ["MLIP_CACHE_DIR"] == str(session_cache)
    assert cache_dir("cp").parent == session_cache
    assert cache_dir() != Path.home() / ".cache" / "mlip"  # not the user's default folder
