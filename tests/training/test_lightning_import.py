"""Lightning is imported only through :mod:`mlip.training.lightning_import`, so importing any
mlip module leaves the environment and Python's global random state as they were."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "mlip"
HELPER = "from mlip.training.lightning_import import L"
DIRECT = re.compile(r"^\s*(import lightning\b|from lightning[. ])", re.MULTILINE)
USERS = sorted(
    ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    for path in PACKAGE.rglob("*.py") if "lightning" in path.read_text(encoding="utf-8")
)

SNAPSHOT = textwrap.dedent(
    """
    import importlib, json, os, random, sys
    env, state = dict(os.environ), random.getstate()
    importlib.import_module(sys.argv[1])
    print(json.dumps({"env": sorted(set(os.environ.items()) ^ set(env.items())),
                      "random": random.getstate() != state}))
    """
)


def test_lightning_is_imported_through_the_helper_first() -> None:
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        if path.name == "lightning_import.py" or not (found := DIRECT.search(text)):
            continue
        helper = text.find(HELPER)
        assert 0 <= helper < found.start(), (
            f"{path}: import Lightning after `{HELPER}` (it keeps the environment and the "
            "random state), not before or instead")


@pytest.mark.parametrize("module", USERS)
def test_import_changes_no_process_state(module: str) -> None:
    proc = subprocess.run([sys.executable, "-c", SNAPSHOT, module], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {"env": [], "random": False}
