"""Run configuration: one YAML file, defaults below, ``dotted.key=value`` overrides.

The backbone (and through it the tensor product) is chosen by class path in
``model.backbone.class_path``; everything else is plain data.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

DEFAULTS: dict[str, Any] = {
    "run_name": "run",
    "seed": 0,
    "output_dir": "checkpoints",
    "data": {
        "train": None,  # extxyz/ASE file(s) or .lmdb
        "val": None,  # separate validation file(s); else a seeded split of train
        "val_fraction": 0.1,
        "val_size": None,  # absolute number of validation structures (wins over fraction)
        "max_train": None,  # cap the training split (for quick runs)
        "test": [],  # held-out files evaluated at the end of training
        "e0s": "least_squares",  # or an isolated-atoms file
        "cutoff": 5.0,
        "batch_size": 5,
        "val_batch_size": 20,
        "num_workers": 0,
        "energy_key": None,
        "forces_key": None,
        "stress_key": None,
    },
    "model": {
        "dtype": "float32",
        "backbone": {
            "class_path": "mlip.backbones.equivariant.EquivariantBackbone",
            "init_args": {},
        },
    },
    "training": {
        "max_epochs": 100,
        "max_time": None,  # "DD:HH:MM:SS"
        "optimizer": "adam",  # adam | adamw
        "lr": 0.01,
        "weight_decay": 0.0,
        "amsgrad": True,
        "scheduler": "plateau",  # plateau | cosine | none
        "plateau_factor": 0.8,
        "plateau_patience": 50,
        "energy_weight": 1.0,
        "forces_weight": 100.0,
        "stress_weight": 1.0,
        # Second stage (MACE's SWA stage): larger energy weight for the last epochs.
        "stage_two_start": None,  # epoch, or a fraction of max_epochs when < 1
        "stage_two_energy_weight": 1000.0,
        "stage_two_forces_weight": 100.0,
        "stage_two_lr": None,
        # Symmetry without equivariant layers (TransIP and friends):
        "augment_rotations": False,  # rotate every training batch randomly (baseline)
        "equivariance_weight": 0.0,  # weight of the learned-equivariance loss (> 0 enables)
        "equivariance_max_angle": 180.0,  # its rotations: Haar-uniform at 180, else angle <= this [deg]
        "ema_decay": 0.99,  # 0 disables EMA
        "gradient_clip": 10.0,
        "early_stopping_patience": None,  # epochs without val-loss improvement
        "accelerator": "auto",
        "devices": 1,
        "num_nodes": 1,
        "strategy": "auto",
        "threads": None,  # torch intra-op threads on CPU
        "log_every_n_steps": 10,
        "check_val_every_n_epoch": 1,
        "enable_progress_bar": True,
    },
}


def deep_update(base: dict, other: dict) -> dict:
    """Recursively merge ``other`` into a copy of ``base``."""
    out = copy.deepcopy(base)
    for key, value in other.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key != "init_args":
            out[key] = deep_update(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def apply_override(config: dict, override: str) -> None:
    """Apply one ``a.b.c=value`` override (value parsed as YAML) in place."""
    if "=" not in override:
        raise ValueError(f"override {override!r} must look like key.sub=value")
    dotted, raw = override.split("=", 1)
    value = yaml.safe_load(raw)
    node = config
    parts = dotted.strip().split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ValueError(f"override {override!r}: {part!r} is not a section")
    node[parts[-1]] = value


def load_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> dict:
    """Defaults <- YAML file <- overrides. Relative data paths stay relative to the cwd."""
    config = copy.deepcopy(DEFAULTS)
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file {path} does not exist")
        with open(path) as fh:
            loaded = yaml.safe_load(fh) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"{path}: the top level must be a mapping")
        unknown = set(loaded) - set(DEFAULTS)
        if unknown:
            raise ValueError(f"{path}: unknown top-level key(s) {sorted(unknown)}")
        config = deep_update(config, loaded)
    for override in overrides:
        apply_override(config, override)
    backbone = config["model"]["backbone"]
    if isinstance(backbone, str):  # a preset file, e.g. configs/backbone/cg.yaml
        candidates = [Path(backbone)] + ([Path(path).parent / backbone] if path else [])
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            raise FileNotFoundError(f"model.backbone: preset file {backbone} does not exist")
        with open(found) as fh:
            config["model"]["backbone"] = yaml.safe_load(fh)
    for section in ("data", "training"):
        unknown = set(config[section]) - set(DEFAULTS[section])
        if unknown:
            raise ValueError(f"unknown {section} option(s) {sorted(unknown)}")
    if isinstance(config["data"]["train"], str):
        config["data"]["train"] = [config["data"]["train"]]
    if isinstance(config["data"]["val"], str):
        config["data"]["val"] = [config["data"]["val"]]
    if isinstance(config["data"]["test"], str):
        config["data"]["test"] = [config["data"]["test"]]
    return config
