"""Run configuration: one YAML file, defaults below, ``dotted.key=value`` overrides.

The backbone (and through it the tensor product) is chosen by class path in
``model.backbone.class_path``, usually through a preset file (configs/backbone/*.yaml,
see :func:`load_config`); everything else is plain data.
"""

from __future__ import annotations

import copy
import re
import sys
from pathlib import Path
from typing import Any

import yaml

from mlip.training.schema import RunConfig, TrainingConfig, resolve_section


class _Loader(yaml.SafeLoader):
    """YAML 1.1's safe loader, also reading ``1e-3``-style numbers as floats (YAML 1.1 wants
    a dot, ``1.0e-3``, and would give the string "1e-3" for a learning rate)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def max_time_seconds(max_time: str | None) -> float | None:
    """``training.max_time`` ``"DD:HH:MM:SS"`` -> seconds (``None`` stays ``None``).

    >>> max_time_seconds("00:01:02:03"), max_time_seconds(None)
    (3723.0, None)
    """
    if not max_time:
        return None
    dd, hh, mm, ss = (int(x) for x in str(max_time).split(":"))
    return float(((dd * 24 + hh) * 60 + mm) * 60 + ss)


def parse_yaml(text_or_stream) -> Any:
    """Parse config YAML (safe: plain data only)."""
    return yaml.load(text_or_stream, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass

DEFAULTS: dict[str, Any] = resolve_section(RunConfig, {})
"""The resolved defaults (see :mod:`mlip.training.schema` for every section and its types)."""

# The flat ``training`` keys of earlier configs -> their place in the nested sections.
MOVED: dict[str, str] = {
    **{k: f"optim.{k}" for k in ("optimizer", "lr", "weight_decay", "amsgrad", "gradient_clip")},
    **{k: f"loss.{k}" for k in ("energy_weight", "forces_weight", "stress_weight")},
    **{k: f"schedule.{k}" for k in ("max_epochs", "max_time", "scheduler", "plateau_factor",
                                    "plateau_patience", "early_stopping_patience")},
    **{f"stage_two_{k}": f"stage_two.{k}" for k in ("start", "energy_weight", "forces_weight", "lr")},
    "augment_rotations": "symmetry.augment_rotations",
    **{f"equivariance_{k}": f"symmetry.equivariance.{k}"
       for k in ("weight", "max_angle", "objective", "transform", "temperature", "schedule",
                 "warmup", "final")},
    "ema_decay": "ema.decay",
    **{k: f"trainer.{k}" for k in ("accelerator", "devices", "num_nodes", "strategy", "threads",
                                   "log_every_n_steps", "check_val_every_n_epoch",
                                   "enable_progress_bar")},
}


def _note_moved(old: str, new: str) -> None:
    print(f"mlip: config key training.{old} is now training.{new} (still read; please update)",
          file=sys.stderr, flush=True)


def upgrade_training(training: Any, where: str = "training") -> Any:
    """Move the flat keys of an earlier ``training`` section (:data:`MOVED`) into the nested
    sections, with a one-line note per key on stderr; anything else is left for validation.
    A nested value given as well wins over the flat one."""
    if not isinstance(training, dict) or not any(k in MOVED for k in training):
        return training
    out = {k: v for k, v in training.items() if k not in MOVED}
    for old, value in training.items():
        if old not in MOVED:
            continue
        _note_moved(old, MOVED[old])
        *parents, leaf = MOVED[old].split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"{where}.{part}: expected a mapping, got {node!r}")
        node.setdefault(leaf, value)
    return out


def deep_update(base: dict, other: dict, replace: frozenset[str] = frozenset({"init_args"})) -> dict:
    """Recursively merge ``other`` into a copy of ``base``; mappings under a key in
    ``replace`` are replaced whole (a full backbone block's init_args replace the defaults'),
    with ``replace=frozenset()`` every mapping is merged (preset init_args)."""
    out = copy.deepcopy(base)
    for key, value in other.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key not in replace:
            out[key] = deep_update(out[key], value, replace)
        else:
            out[key] = copy.deepcopy(value)
    return out


def apply_override(config: dict, override: str) -> None:
    """Apply one ``a.b.c=value`` override (value parsed as YAML) in place."""
    if "=" not in override:
        raise ValueError(f"override {override!r} must look like key.sub=value")
    dotted, raw = override.split("=", 1)
    value = parse_yaml(raw)
    node = config
    parts = dotted.strip().split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ValueError(f"override {override!r}: {part!r} is not a section")
    node[parts[-1]] = value


PRESET_KEYS = frozenset({"class_path", "init_args", "training"})


def find_preset(name: str | Path, config_dir: Path | None) -> Path:
    """The preset file ``name``: tried relative to ``config_dir`` (the run config's folder),
    then to the current directory; an absolute path is taken as is.

    Raises:
        FileNotFoundError: naming every path tried.
    """
    name = Path(name)
    candidates = [name] if name.is_absolute() else (
        ([config_dir / name] if config_dir is not None else []) + [Path.cwd() / name])
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    tried = ", ".join(str(c) for c in candidates)
    raise FileNotFoundError(
        f"model.backbone: preset {str(name)!r} not found; tried {tried}. Give a path relative "
        "to the run config's folder (e.g. backbone/cg.yaml for configs/backbone/cg.yaml) or to "
        "the current directory."
    )


def load_preset(name: str | Path, config_dir: Path | None) -> tuple[dict, dict]:
    """Read a backbone preset file: ``(backbone block, training defaults)``.

    A preset is a YAML mapping with ``class_path``, ``init_args`` and, optionally, a
    ``training`` section of defaults the backbone needs (see :func:`load_config`).
    """
    path = find_preset(name, config_dir)
    with open(path) as fh:
        preset = parse_yaml(fh) or {}
    if not isinstance(preset, dict) or "class_path" not in preset:
        raise ValueError(f"backbone preset {path}: expected a mapping with class_path and "
                         "init_args (see configs/backbone/*.yaml)")
    unknown = set(preset) - PRESET_KEYS
    if unknown:
        raise ValueError(f"backbone preset {path}: unknown key(s) {sorted(unknown)}; "
                         f"allowed: {sorted(PRESET_KEYS)}")
    training = upgrade_training(preset.get("training") or {}, f"{path}: training")
    try:
        resolve_section(TrainingConfig, training, "training")
    except ValueError as err:
        raise ValueError(f"backbone preset {path}: {err}") from None
    backbone = {"class_path": preset["class_path"],
                "init_args": copy.deepcopy(preset.get("init_args") or {})}
    return backbone, copy.deepcopy(training)


def resolve_backbone(backbone: Any, config_dir: Path | None) -> tuple[Any, dict]:
    """Turn the user's ``model.backbone`` into a ``{class_path, init_args}`` block.

    Returns ``(block, training defaults from the preset)``; a block without ``preset`` (or
    ``None``) is returned unchanged with no training defaults.
    """
    if isinstance(backbone, str | Path):
        return load_preset(backbone, config_dir)
    if isinstance(backbone, dict) and "preset" in backbone:
        extra = set(backbone) - {"preset", "init_args"}
        if extra:
            raise ValueError(
                f"model.backbone: a preset mapping takes only preset and init_args, not "
                f"{sorted(extra)}; to choose another class give a full "
                "{class_path, init_args} block instead of a preset"
            )
        block, training = load_preset(backbone["preset"], config_dir)
        block["init_args"] = deep_update(block["init_args"], backbone.get("init_args") or {},
                                         replace=frozenset())
        return block, training
    if backbone is not None and not isinstance(backbone, dict):
        raise ValueError(f"model.backbone: expected a preset path, {{preset, init_args}} or "
                         f"{{class_path, init_args}}, got {backbone!r}")
    return backbone, {}


def _apply_user_override(user: dict, override: str) -> None:
    """:func:`apply_override` on the user's (not yet resolved) config; a flat key of an
    earlier layout (``training.lr``, :data:`MOVED`) is moved to its nested key with a note,
    and a dotted key below a preset string (``model.backbone.init_args.channels=16`` on
    ``model.backbone: X.yaml``) first turns it into ``{preset: X.yaml}``."""
    dotted, sep, raw = override.partition("=")
    dotted = dotted.strip()
    head, _, rest = dotted.partition(".")
    if sep and head == "training" and rest in MOVED:
        _note_moved(rest, MOVED[rest])
        override = f"training.{MOVED[rest]}={raw}"
        dotted = f"training.{MOVED[rest]}"
    model = user.get("model")
    backbone = model.get("backbone") if isinstance(model, dict) else None
    if dotted.startswith("model.backbone.") and isinstance(backbone, str):
        user["model"]["backbone"] = {"preset": backbone}
    apply_override(user, override)


def load_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> dict:
    """Resolve a run config: defaults <- backbone preset's training <- YAML file <- overrides.

    The sections, their keys, types and defaults are in :mod:`mlip.training.schema`; every
    section rejects unknown keys and wrong values with one line naming the full key. The flat
    ``training`` keys of earlier configs (``training.lr``) are still read, each with a note
    naming its new key (:data:`MOVED`: ``training.optim.lr``), in files, presets and overrides.

    ``model.backbone`` takes one of three forms:

    - a preset path, ``backbone/gaunt-grid.yaml``: a file with ``class_path``, ``init_args``
      and optionally ``training`` (see configs/backbone/*.yaml);
    - ``{preset: backbone/gaunt-grid.yaml, init_args: {channels: 64}}``: the preset with these
      init_args deep-merged over its own;
    - a full ``{class_path, init_args}`` block (no preset; init_args replace the defaults').

    A relative preset path is looked up in the run config's folder, then in the current
    directory (an error names both paths); this holds for overrides too, so switching backbone
    is one argument: ``mlip train --config configs/quickstart.yaml
    model.backbone=backbone/gaunt-grid.yaml`` (replacing the whole backbone, init_args
    included) or ``model.backbone.preset=backbone/gaunt-grid.yaml`` (keeping the config's
    init_args overrides). ``model.backbone.init_args.channels=16`` works on top of a preset.

    A preset's ``training`` section holds defaults the backbone needs (TransIP: rotation
    augmentation, a smaller lr). Precedence, lowest first: the defaults, the preset's training
    section, the run config's own sections, command-line overrides. The returned config always
    holds a full backbone block, so the run's saved config.yaml needs no preset files.

    Args:
        path: the run config YAML, or None (defaults + overrides only).
        overrides: ``dotted.key=value`` strings, values parsed as YAML.

    Returns:
        The resolved config, plain data with every key of :data:`DEFAULTS`. Relative data
        paths stay relative to the cwd; ``data.train``, ``data.val`` and ``data.test`` are
        lists (``val`` may be None).

    Raises:
        ValueError: one line naming the key, the value and what is allowed.
    """
    user: dict = {}
    config_dir = None
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file {path} does not exist")
        with open(path) as fh:
            user = parse_yaml(fh) or {}
        if not isinstance(user, dict):
            raise ValueError(f"{path}: the top level must be a mapping")
        if "training" in user:
            user["training"] = upgrade_training(user["training"])
        config_dir = path.parent
    for override in overrides:
        _apply_user_override(user, override)
    from mlip.training.finetune import check_replay, inherit_model

    inherit_model(user, config_dir)  # model.init_from: the architecture comes from the file
    preset_training: dict = {}
    if isinstance(user.get("model"), dict) and "backbone" in user["model"]:
        user["model"]["backbone"], preset_training = resolve_backbone(
            user["model"]["backbone"], config_dir)
    merged = deep_update({"training": preset_training}, user) if preset_training else user
    config = resolve_section(RunConfig, merged)
    check_replay(config)
    return config
