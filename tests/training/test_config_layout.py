"""The shipped configs (configs/*.yaml, presets in configs/backbone/) in the nested layout
resolve to the same runs as they did in the flat layout: data/resolved_configs_v1.json holds
their resolution by the flat-layout loader, recorded before the layout changed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mlip.training.config import DEFAULTS, MOVED, load_config

ROOT = Path(__file__).resolve().parents[2]
SNAPSHOT = json.loads((Path(__file__).parent / "data" / "resolved_configs_v1.json").read_text())


# Defaults changed on purpose since the snapshot (the energy expression: no shift, so
# nothing switches with an atom's first neighbour) and keys added since, with their defaults.
CHANGED_DEFAULTS = {("model", "baseline"): ("per_element", "none"),
                    ("model", "learn_shift"): (True, None)}
ADDED = {("data", "extra"): [], ("model", "init_from"): None, ("model", "heads"): None,
         ("data", "split_seed"): None,
         ("data", "replay"): {"file": [], "count": None, "fraction": None, "select": "random",
                              "weight": 1.0, "pseudolabels": False, "head": None}}
ADDED_TRAINING = {"freeze": [], "final_e0_refit": True, "uncertainty": "llpr", "committee": 1}


def nested(flat: dict) -> dict:
    """A flat-layout resolved config in the nested layout (the deprecation mapping), with
    the deliberate default changes and the added keys applied."""
    flat = json.loads(json.dumps(flat))
    for (section, key), (old, new) in CHANGED_DEFAULTS.items():
        if flat[section][key] == old:
            flat[section][key] = new
    for (section, key), value in ADDED.items():
        flat[section].setdefault(key, value)
    out = {k: v for k, v in flat.items() if k != "training"}
    training: dict = {}
    for old, value in flat["training"].items():
        *parents, leaf = MOVED[old].split(".")
        node = training
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    out["training"] = {**training, **ADDED_TRAINING}
    return out


def test_mapping_covers_every_flat_key_once():
    flat_keys = set().union(*(cfg["training"] for cfg in SNAPSHOT.values()))
    assert flat_keys == set(MOVED)
    targets = set(MOVED.values())
    assert len(targets) == len(MOVED)
    for target in targets:
        node = DEFAULTS["training"]
        for part in target.split("."):
            node = node[part]  # every new key exists


@pytest.mark.parametrize("name", sorted(SNAPSHOT))
def test_shipped_config_resolves_as_before(name, monkeypatch):
    monkeypatch.chdir(ROOT)
    if name.startswith("configs/backbone/"):
        config = load_config(None, [f"model.backbone={name}"])
    else:
        config = load_config(name)
    assert config == nested(SNAPSHOT[name])


def test_shipped_configs_use_the_nested_layout(capsys, monkeypatch):
    """No shipped config needs the deprecation mapping (no note is printed)."""
    monkeypatch.chdir(ROOT)
    for name in SNAPSHOT:
        if not name.startswith("configs/backbone/"):
            load_config(name)
    assert "is now training." not in capsys.readouterr().err
