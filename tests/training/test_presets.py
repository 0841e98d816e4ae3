"""Backbone presets (configs/backbone/*.yaml): every preset builds and trains one epoch
through the CLI, the precedence of a preset's training defaults, init_args merging, and
the error for a missing preset."""

from __future__ import annotations

from pathlib import Path

import ase.io
import pytest
import torch
import yaml

from mlip.cli.main import main
from mlip.model.build import build_potential
from mlip.training.config import DEFAULTS, load_config

REPO_ROOT = Path(__file__).resolve().parents[2]
CONFIGS = REPO_ROOT / "configs"
PRESETS = sorted(p.stem for p in (CONFIGS / "backbone").glob("*.yaml"))


def test_the_five_presets_exist():
    assert set(PRESETS) >= {"cg", "gaunt-grid", "gaunt-fourier", "cp", "transip"}


@pytest.mark.parametrize("name", PRESETS)
def test_preset_loads_and_builds(name):
    """Each preset resolves to a full block, and that block builds a Potential for H, C, O
    whose energy on a 3-atom molecule is finite."""
    config = load_config(None, [f"model.backbone={CONFIGS / 'backbone' / f'{name}.yaml'}"])
    backbone = config["model"]["backbone"]
    assert set(backbone) == {"class_path", "init_args"} and backbone["init_args"]
    torch.manual_seed(0)
    model = build_potential({**config["model"], "repulsion": {"reference": "covalent"}},
                            [1, 6, 8], [-13.6, -1029.0, -2042.0], 1.0, 0.0, 5.0, 2.0)
    from mlip.graph.build import atoms_to_batch

    atoms = ase.Atoms("COH", positions=[[0, 0, 0], [1.2, 0, 0], [-0.6, 0.9, 0.1]])
    out = model(atoms_to_batch([atoms], 5.0, dtype=torch.float32))
    assert all(torch.isfinite(v).all() for v in out.values() if isinstance(v, torch.Tensor))


@pytest.fixture
def few_frames(bundled_acac, tmp_path, monkeypatch):
    """6 acac frames and the isolated-atom energies, copied into tmp_path (the cwd)."""
    ase.io.write(tmp_path / "frames.xyz", ase.io.read(bundled_acac / "train_300K.xyz", ":6"))
    (tmp_path / "isolated_atoms.xyz").write_bytes(
        (bundled_acac / "isolated_atoms.xyz").read_bytes())
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("name", PRESETS)
def test_switch_backbone_with_one_override_and_train(few_frames, name):
    """`mlip train --config configs/quickstart.yaml model.backbone=backbone/<name>.yaml`
    (resolved relative to the config's folder) trains one epoch on 4 + 2 frames; presets
    as they are, no size overrides."""
    tmp = few_frames
    args = ["train", "--config", str(CONFIGS / "quickstart.yaml"),
            f"model.backbone=backbone/{name}.yaml", f"run_name={name}",
            f"output_dir={tmp / 'runs'}", f"data.train={tmp / 'frames.xyz'}", "data.val_size=2",
            "data.test=[]", f"data.e0s={tmp / 'isolated_atoms.xyz'}", "training.schedule.max_epochs=1",
            "training.trainer.threads=1", "training.trainer.enable_progress_bar=false"]
    assert main(args) == 0
    run = tmp / "runs" / name
    assert (run / "model.pt").is_file()
    saved = yaml.safe_load((run / "config.yaml").read_text())
    preset = yaml.safe_load((CONFIGS / "backbone" / f"{name}.yaml").read_text())
    assert saved["model"]["backbone"]["class_path"] == preset["class_path"]
    if name == "transip":  # the preset's training defaults reach the run ...
        assert saved["training"]["symmetry"]["augment_rotations"] is True
        # ... except what the run config sets itself: quickstart.yaml's lr wins (precedence)
        assert saved["training"]["optim"]["lr"] == 0.02


# --- precedence and merging (no training) ---------------------------------------------------
def write(path: Path, data: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture
def preset_dir(tmp_path, monkeypatch):
    """tmp/run/backbone/toy.yaml with training defaults; the cwd is tmp/elsewhere."""
    write(tmp_path / "run" / "backbone" / "toy.yaml", {
        "class_path": "mlip.backbones.equivariant.EquivariantBackbone",
        "init_args": {"channels": 8, "lmax_sh": 1,
                      "tensor_product": "cp", "tensor_product_args": {"rank": 4}},
        "training": {"optim": {"lr": 0.002}, "symmetry": {"augment_rotations": True},
                     "stage_two": {"lr": 0.0002}},
    })
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    return tmp_path / "run"


def test_preset_training_defaults_and_precedence(preset_dir):
    # Preset training defaults apply over DEFAULTS.
    cfg = load_config(write(preset_dir / "a.yaml", {"model": {"backbone": "backbone/toy.yaml"}}))
    tc = cfg["training"]
    assert tc["optim"]["lr"] == 0.002 and tc["symmetry"]["augment_rotations"] is True
    assert tc["schedule"] == DEFAULTS["training"]["schedule"]
    assert cfg["model"]["backbone"]["init_args"]["channels"] == 8
    # The run config's own training section wins over the preset's.
    path = write(preset_dir / "b.yaml", {"model": {"backbone": "backbone/toy.yaml"},
                                         "training": {"optim": {"lr": 0.05}}})
    cfg = load_config(path)
    assert cfg["training"]["optim"]["lr"] == 0.05 and cfg["training"]["stage_two"]["lr"] == 0.0002
    # Command-line overrides win over both.
    cfg = load_config(path, ["training.optim.lr=0.1", "training.stage_two.lr=0.01"])
    assert cfg["training"]["optim"]["lr"] == 0.1 and cfg["training"]["stage_two"]["lr"] == 0.01
    # A preset chosen on the command line brings its training defaults too...
    plain = write(preset_dir / "c.yaml", {"training": {"schedule": {"max_epochs": 3}}})
    cfg = load_config(plain, ["model.backbone=backbone/toy.yaml"])
    assert cfg["training"]["optim"]["lr"] == 0.002
    assert cfg["training"]["schedule"]["max_epochs"] == 3
    # ...and a full block replacing the preset drops them.
    cfg = load_config(path, ["model.backbone={class_path: x.Y, init_args: {}}"])
    assert cfg["training"]["symmetry"]["augment_rotations"] is False
    assert cfg["model"]["backbone"] == {"class_path": "x.Y", "init_args": {}}


def test_init_args_merge_over_preset(preset_dir):
    path = write(preset_dir / "a.yaml", {"model": {"backbone": {
        "preset": "backbone/toy.yaml",
        "init_args": {"channels": 64, "tensor_product_args": {"share_weights": False}}}}})
    args = load_config(path)["model"]["backbone"]["init_args"]
    assert args == {"channels": 64, "lmax_sh": 1, "tensor_product": "cp",
                    "tensor_product_args": {"rank": 4, "share_weights": False}}
    # Dotted overrides on top of a preset mapping and of a preset string.
    args = load_config(path, ["model.backbone.init_args.lmax_sh=2"])["model"]["backbone"]
    assert args["init_args"]["lmax_sh"] == 2 and args["init_args"]["channels"] == 64
    plain = write(preset_dir / "b.yaml", {"model": {"backbone": "backbone/toy.yaml"}})
    args = load_config(plain, ["model.backbone.init_args.channels=16"])["model"]["backbone"]
    assert args["init_args"]["channels"] == 16 and args["init_args"]["lmax_sh"] == 1
    # Swapping the preset under a mapping keeps its init_args.
    other = dict(yaml.safe_load((preset_dir / "backbone" / "toy.yaml").read_text()),
                 training={}, class_path="mlip.backbones.transip.TransIPBackbone")
    write(preset_dir / "backbone" / "other.yaml", other)
    cfg = load_config(path, ["model.backbone.preset=backbone/other.yaml"])
    assert cfg["model"]["backbone"]["class_path"].endswith("TransIPBackbone")
    assert cfg["model"]["backbone"]["init_args"]["channels"] == 64


def test_preset_found_relative_to_cwd(preset_dir, monkeypatch):
    monkeypatch.chdir(preset_dir)
    cfg = load_config(None, ["model.backbone=backbone/toy.yaml"])
    assert cfg["model"]["backbone"]["init_args"]["channels"] == 8


def test_missing_preset_names_the_paths_tried(preset_dir):
    path = write(preset_dir / "a.yaml", {"model": {"backbone": "backbone/nope.yaml"}})
    with pytest.raises(FileNotFoundError) as err:
        load_config(path)
    message = str(err.value)
    assert str(preset_dir / "backbone" / "nope.yaml") in message
    assert str(Path.cwd() / "backbone" / "nope.yaml") in message


def test_bad_preset_contents_are_refused(preset_dir):
    write(preset_dir / "backbone" / "typo.yaml", {"class_path": "a.B", "init_args": {},
                                                  "training": {"lrr": 1.0}})
    with pytest.raises(ValueError, match="lrr"):
        load_config(None, [f"model.backbone={preset_dir / 'backbone' / 'typo.yaml'}"])
    path = write(preset_dir / "a.yaml", {"model": {"backbone": {
        "preset": "backbone/toy.yaml", "class_path": "a.B"}}})
    with pytest.raises(ValueError, match="full"):
        load_config(path)


def test_run_configs_use_presets():
    """Every run config under configs/ picks its backbone through a preset, except a
    fine-tuning config, which names none (the architecture comes from the model file); an
    active-learning loop config (it names a train_config) resolves as one."""
    from mlip.training.active import load_learn_config

    for path in sorted(CONFIGS.glob("*.yaml")):
        user = yaml.safe_load(path.read_text())
        if "train_config" in user:
            assert (REPO_ROOT / load_learn_config(path)["train_config"]).is_file(), path
            continue
        model = user["model"]
        if "init_from" in model:
            assert "backbone" not in model, path
            with pytest.raises(ValueError, match="needs a model to start from"):
                load_config(path)  # until --init-from names one
        else:
            assert isinstance(model["backbone"], str) or "preset" in model["backbone"], path
            load_config(path)
