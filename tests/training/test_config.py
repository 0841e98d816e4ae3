"""`load_config`: defaults, YAML file, dotted overrides parsed as YAML, one-line errors naming
the full key in every section, and the flat layout of earlier configs (read with a note)."""

from __future__ import annotations

import pytest
import yaml

from mlip.training.config import DEFAULTS, load_config


def _write(tmp_path, config: dict):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_defaults_without_a_file():
    config = load_config(None)
    assert config["run_name"] == DEFAULTS["run_name"]
    assert config["training"] == DEFAULTS["training"]
    assert config["data"]["cutoff"] == DEFAULTS["data"]["cutoff"]
    assert config["data"]["test"] == []
    config["training"]["optim"]["lr"] = -1.0  # a copy: the defaults themselves are untouched
    config["data"]["test"].append("x")
    assert DEFAULTS["training"]["optim"]["lr"] != -1.0 and DEFAULTS["data"]["test"] == []


def test_file_merges_into_defaults(tmp_path):
    path = _write(tmp_path, {"run_name": "x", "data": {"train": "a.xyz", "batch_size": 3},
                             "training": {"optim": {"lr": 0.002}}})
    config = load_config(path)
    assert config["run_name"] == "x" and config["training"]["optim"]["lr"] == 0.002
    assert config["data"]["train"] == ["a.xyz"]  # one file becomes a list
    assert config["data"]["batch_size"] == 3
    assert config["data"]["cutoff"] == DEFAULTS["data"]["cutoff"]  # the rest stays default
    assert config["training"]["schedule"] == DEFAULTS["training"]["schedule"]


def test_dotted_overrides_are_parsed_as_yaml(tmp_path):
    path = _write(tmp_path, {"training": {"optim": {"lr": 0.002}}})
    config = load_config(path, ["training.optim.lr=0.001", "training.schedule.max_epochs=7",
                                "data.test=[a, b]", "training.schedule.max_time=null",
                                "training.schedule.scheduler=cosine", "data.e0s=e0.xyz",
                                "training.optim.amsgrad=false", "seed=3"])
    optim, schedule = config["training"]["optim"], config["training"]["schedule"]
    assert optim["lr"] == 0.001 and isinstance(optim["lr"], float)
    assert schedule["max_epochs"] == 7
    assert config["data"]["test"] == ["a", "b"]
    assert schedule["max_time"] is None
    assert schedule["scheduler"] == "cosine"
    assert config["data"]["e0s"] == "e0.xyz"
    assert optim["amsgrad"] is False and config["seed"] == 3
    assert load_config(None, ["data.train=one.xyz"])["data"]["train"] == ["one.xyz"]


def test_override_without_equals_sign():
    with pytest.raises(ValueError, match="key.sub=value"):
        load_config(None, ["training.optim.lr"])


def test_unknown_top_level_key_is_an_error(tmp_path):
    path = _write(tmp_path, {"trainng": {"lr": 0.1}})
    with pytest.raises(ValueError, match=r"^trainng: unknown key; the config takes run_name, "):
        load_config(path)


@pytest.mark.parametrize("key", ["data.no_such_option", "model.bogus_key", "training.typo",
                                 "training.optim.typo", "training.symmetry.equivariance.typo",
                                 "model.repulsion.typo", "model.backbone.typo"])
def test_unknown_key_in_any_section_is_one_line(key):
    section = key.rpartition(".")[0]
    with pytest.raises(ValueError) as err:
        load_config(None, [f"{key}=1"])
    message = str(err.value)
    assert message.startswith(f"{key}: unknown key; {section} takes ") and "\n" not in message


@pytest.mark.parametrize(("override", "message"), [
    ("training.optim.lr=abc", "training.optim.lr: expected a positive number, got 'abc'"),
    ("training.optim.lr=-1", "training.optim.lr: expected a positive number, got -1"),
    ("training.optim.optimizer=sgd", "training.optim.optimizer: expected one of adam, adamw, got 'sgd'"),
    ("training.schedule.max_epochs=2.5", "training.schedule.max_epochs: expected a positive integer"),
    ("training.schedule.max_time=5", "training.schedule.max_time: expected a \"DD:HH:MM:SS\" string"),
    ("training.symmetry.equivariance.objective=x",
     "training.symmetry.equivariance.objective: expected one of regression, contrastive, got 'x'"),
    ("model.dtype=float16", "model.dtype: expected one of float32, float64, got 'float16'"),
    ("model.repulsion.reference=x", "model.repulsion.reference: expected one of data, covalent"),
    ("data.batch_size=0", "data.batch_size: expected a positive integer, got 0"),
    ("training.optim=3", "training.optim: expected a mapping, got 3"),
    ("training.trainer.enable_progress_bar=maybe", "training.trainer.enable_progress_bar: expected true or false"),
])
def test_wrong_value_is_one_line(override, message):
    with pytest.raises(ValueError) as err:
        load_config(None, [override])
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_repulsion_may_be_switched_off():
    assert load_config(None, ["model.repulsion=null"])["model"]["repulsion"] is None
    assert load_config(None, ["model.repulsion.inner=0.3"])["model"]["repulsion"] == {
        "inner": 0.3, "outer": 0.85, "reference": "data"}


def test_flat_layout_still_loads_with_a_note(tmp_path, capsys):
    """Earlier configs (flat training keys) resolve as their nested spelling, one note per key."""
    flat = _write(tmp_path, {"training": {"lr": 0.002, "max_epochs": 7, "stage_two_start": 0.8,
                                          "equivariance_weight": 0.5, "ema_decay": 0.9,
                                          "threads": 1}})
    config = load_config(flat, ["training.stage_two_lr=0.001"])
    notes = capsys.readouterr().err.strip().splitlines()
    assert any("training.lr is now training.optim.lr" in n for n in notes)
    assert any("training.stage_two_lr is now training.stage_two.lr" in n for n in notes)
    assert len(notes) == 7
    nested = load_config(None, ["training.optim.lr=0.002", "training.schedule.max_epochs=7",
                                "training.stage_two.start=0.8", "training.stage_two.lr=0.001",
                                "training.symmetry.equivariance.weight=0.5",
                                "training.ema.decay=0.9", "training.trainer.threads=1"])
    assert config == nested
    with pytest.raises(ValueError, match=r"^training\.optim\.lr: expected a positive number"):
        load_config(None, ["training.lr=abc"])


def test_missing_config_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"config file .*nope\.yaml does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_top_level_must_be_a_mapping(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- a\n- b\n")
    with pytest.raises(ValueError, match="top level must be a mapping"):
        load_config(path)


def test_exponent_floats_without_a_dot(tmp_path):
    """YAML 1.1 reads `1e-3` as a string; configs and overrides read it as the number."""
    from mlip.training.config import load_config

    path = tmp_path / "c.yaml"
    path.write_text("training:\n  optim:\n    lr: 2e-3\n")
    config = load_config(path, ["training.optim.weight_decay=1e-5"])
    optim = config["training"]["optim"]
    assert optim["lr"] == 0.002 and optim["weight_decay"] == 1e-5
