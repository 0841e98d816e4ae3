"""No hidden global state: the public calls of a whole workflow (train on
a user's LMDB, load in float64, evaluate, calculator, a few MD steps) leave the process as
they found it, never write into the user's dataset, and write files only where documented:
the run folder and the user cache folder ($MLIP_CACHE_DIR)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import yaml

from mlip.cli.main import main

WORKFLOW = textwrap.dedent(
    """
    import json, os, random, sys
    import numpy as np
    import torch

    def snapshot():
        return {
            "dtype": str(torch.get_default_dtype()),
            "threads": torch.get_num_threads(),
            "env": dict(os.environ),
            "torch_rng": torch.get_rng_state().sum().item(),
            "numpy_rng": int(np.random.get_state()[1].sum()),
            "python_rng": hash(random.getstate()),
            "grad": torch.is_grad_enabled(),
            "anomaly": torch.is_anomaly_enabled(),
            "deterministic": torch.are_deterministic_algorithms_enabled(),
        }

    config, xyz = sys.argv[1], sys.argv[2]
    import mlip, ase.io
    from ase.md.verlet import VelocityVerlet
    from ase import units
    torch.set_num_threads(2)
    before = snapshot()
    states = {}
    summary = mlip.train(config)
    states["train"] = snapshot()
    model = mlip.load_model(summary["model"], dtype=torch.float64)
    states["load_model"] = snapshot()
    mlip.evaluate(model, xyz, batch_size=4)
    states["evaluate"] = snapshot()
    atoms = ase.io.read(xyz, 0)
    atoms.calc = mlip.MLIPCalculator(model, device="cpu", dtype="float64")
    atoms.get_forces()
    VelocityVerlet(atoms, 0.5 * units.fs).run(3)
    states["calculator_md"] = snapshot()
    changed = {step: sorted(k for k in before if state[k] != before[k])
               for step, state in states.items()}
    env = {step: sorted(set(state["env"].items()) ^ set(before["env"].items()))
           for step, state in states.items()}
    print(json.dumps({"changed": changed, "env": env}))
    """
)


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_workflow_leaves_process_and_user_data_alone(tiny_data, write_config) -> None:
    user = tiny_data / "user" / "acac.lmdb"
    user.parent.mkdir()
    assert main(["data", "convert", str(tiny_data / "tiny" / "acac_20.xyz"), "-o", str(user),
                 "--no-progress"]) == 0
    digest, mtime = _digest(user), user.stat().st_mtime_ns
    cfg = write_config(tiny_data, max_epochs=1)
    config = yaml.safe_load(cfg.read_text())
    config["data"]["train"] = str(user)
    config["data"]["test"] = []
    config["training"]["trainer"]["threads"] = 1  # asked for: the run uses 1, the process keeps 2
    cfg.write_text(yaml.safe_dump(config))
    cache = tiny_data / "cache"
    before = {p for p in tiny_data.rglob("*")}
    env = dict(os.environ, MLIP_CACHE_DIR=str(cache), OMP_NUM_THREADS="2")
    proc = subprocess.run(
        [sys.executable, "-c", WORKFLOW, str(cfg), str(tiny_data / "tiny" / "acac_20.xyz")],
        capture_output=True, text=True, env=env, cwd=tiny_data, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["changed"] == {s: [] for s in result["changed"]}, result
    assert result["env"] == {s: [] for s in result["env"]}, result
    # The user's dataset is untouched; statistics were cached in the user cache folder.
    assert _digest(user) == digest and user.stat().st_mtime_ns == mtime
    assert sorted(p.name for p in user.parent.iterdir()) == ["acac.lmdb"]
    assert list((cache / "statistics").glob("*.json"))
    # New files only in the run folder and the cache folder: nothing beside the inputs.
    allowed = (tiny_data / "runs", cache)
    new = [p for p in set(tiny_data.rglob("*")) - before
           if p.is_file() and not any(a == p or a in p.parents for a in allowed)]
    assert new == [], new
