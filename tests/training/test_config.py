"""`load_config`: defaults, YAML file, dotted overrides parsed as YAML, and clear errors."""

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
    config["training"]["lr"] = -1.0  # a copy: the defaults themselves are untouched
    assert DEFAULTS["training"]["lr"] != -1.0


def test_file_merges_into_defaults(tmp_path):
    path = _write(tmp_path, {"run_name": "x", "data": {"train": "a.xyz", "batch_size": 3},
                             "training": {"lr": 0.002}})
    config = load_config(path)
    assert config["run_name"] == "x" and config["training"]["lr"] == 0.002
    assert config["data"]["train"] == ["a.xyz"]  # one file becomes a list
    assert config["data"]["batch_size"] == 3
    assert config["data"]["cutoff"] == DEFAULTS["data"]["cutoff"]  # the rest stays default
    assert config["training"]["max_epochs"] == DEFAULTS["training"]["max_epochs"]


def test_dotted_overrides_are_parsed_as_yaml(tmp_path):
    path = _write(tmp_path, {"training": {"lr": 0.002}})
    config = load_config(path, ["training.lr=0.001", "training.max_epochs=7", "data.test=[a, b]",
                                "training.max_time=null", "training.scheduler=cosine",
                                "data.e0s=e0.xyz", "training.amsgrad=false", "seed=3"])
    assert config["training"]["lr"] == 0.001 and isinstance(config["training"]["lr"], float)
    assert config["training"]["max_epochs"] == 7
    assert config["data"]["test"] == ["a", "b"]
    assert config["training"]["max_time"] is None
    assert config["training"]["scheduler"] == "cosine"
    assert config["data"]["e0s"] == "e0.xyz"
    assert config["training"]["amsgrad"] is False and config["seed"] == 3
    assert load_config(None, ["data.train=one.xyz"])["data"]["train"] == ["one.xyz"]


def test_override_without_equals_sign():
    with pytest.raises(ValueError, match="key.sub=value"):
        load_config(None, ["training.lr"])


def test_unknown_top_level_key_is_an_error(tmp_path):
    path = _write(tmp_path, {"trainng": {"lr": 0.1}})
    with pytest.raises(ValueError, match=r"config\.yaml: unknown top-level key\(s\) \['trainng'\]"):
        load_config(path)


@pytest.mark.parametrize("section", ["data", "training"])
def test_unknown_section_key_is_an_error(tmp_path, section):
    path = _write(tmp_path, {section: {"no_such_option": 1}})
    with pytest.raises(ValueError, match=rf"unknown {section} option\(s\) \['no_such_option'\]"):
        load_config(path)
    with pytest.raises(ValueError, match=rf"unknown {section} option\(s\) \['typo'\]"):
        load_config(None, [f"{section}.typo=1"])


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
    path.write_text("training:\n  lr: 2e-3\n")
    config = load_config(path, ["training.weight_decay=1e-5"])
    assert config["training"]["lr"] == 0.002 and config["training"]["weight_decay"] == 1e-5
