"""The train CLI on a tiny acac run: a config writer and a working folder (as fixtures)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import yaml


@pytest.fixture
def tiny_data(tiny, bundled_acac, tmp_path, monkeypatch) -> Path:
    """``tmp_path`` (also the cwd) holding ``tiny/acac_20.xyz`` and ``acac/isolated_atoms.xyz``
    (their LMDB conversions go to the session's $MLIP_CACHE_DIR, not beside them)."""
    (tmp_path / "tiny").mkdir()
    (tmp_path / "acac").mkdir()
    (tmp_path / "tiny" / "acac_20.xyz").write_bytes((tiny / "acac_20.xyz").read_bytes())
    (tmp_path / "acac" / "isolated_atoms.xyz").write_bytes(
        (bundled_acac / "isolated_atoms.xyz").read_bytes())
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def write_config(acac_backbone) -> Callable[..., Path]:
    """``write_config(folder, **training)``: a 2-epoch float64 config on ``tiny_data``'s files
    (20 frames: 14 train, 6 val; the held-out test file is the same acac_20.xyz), training
    options overridden by ``training``, named by their short names (``lr``, ``stage_two_start``)
    and written to their nested keys (``training.optim.lr``; the mapping
    :data:`mlip.training.config.MOVED`); returns the path of ``folder/config.yaml``."""
    from mlip.training.config import MOVED

    def nest(flat: dict) -> dict:
        out: dict = {}
        for key, value in flat.items():
            *parents, leaf = MOVED[key].split(".")
            node = out
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = value
        return out

    def write(folder: Path, **training) -> Path:
        config = {
            "run_name": "tiny",
            "output_dir": str(folder / "runs"),
            "seed": 1,
            "data": {"train": str(folder / "tiny" / "acac_20.xyz"), "val_size": 6,
                     "test": [str(folder / "tiny" / "acac_20.xyz")],
                     "e0s": str(folder / "acac" / "isolated_atoms.xyz"),
                     "batch_size": 4, "val_batch_size": 3, "cutoff": 4.0},
            "model": {"dtype": "float64", "backbone": acac_backbone},
            "training": nest({"max_epochs": 2, "lr": 0.005, "enable_progress_bar": False,
                              "threads": 1, "stage_two_start": 1, "log_every_n_steps": 1,
                              **training}),
        }
        path = folder / "config.yaml"
        path.write_text(yaml.safe_dump(config))
        return path

    return write
