"""Shared fixtures: where the test data lives.

The repository is expected beside a ``shared/`` folder (``<parent>/shared/data``) holding
the reference data sets; tests that need them are skipped when it is absent. A copy of
the acac data set is bundled in the repository under ``data/acac``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``<repo>/../shared/data`` (acac, ethanol, cu_emt, tiny/); skip the test if missing."""
    path = REPO_ROOT.parent / "shared" / "data"
    if not path.is_dir():
        pytest.skip(f"shared test data not found at {path}")
    return path


@pytest.fixture(scope="session")
def bundled_acac() -> Path:
    """The acac data set bundled with the repository (``data/acac``)."""
    path = REPO_ROOT / "data" / "acac"
    if not path.is_dir():
        pytest.skip(f"bundled acac data not found at {path}")
    return path
