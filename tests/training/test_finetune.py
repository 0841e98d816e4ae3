"""Fine-tuning from a model file (``model.init_from``): weights, new elements, the E0
choice, frozen groups, the architecture guard and the CLI."""

from __future__ import annotations

from pathlib import Path

import ase
import ase.io
import numpy as np
import pytest
import torch
from ase.calculators.singlepoint import SinglePointCalculator

from mlip.cli.main import main
from mlip.data import keys
from mlip.graph.build import atoms_to_batch
from mlip.model.io import load_model, read_model_file
from mlip.training.config import load_config
from mlip.training.datamodule import PotentialDataModule
from mlip.training.finetune import freeze, initial_info, start_from
from mlip.training.module import PotentialModule
from mlip.training.run import train


@pytest.fixture
def pretrained(tiny_data, write_config) -> Path:
    """A model file from two epochs on the tiny acac set (float64)."""
    cfg = load_config(write_config(tiny_data), ["run_name=base"])
    return Path(train(cfg)["model"])


def _relabelled(model_path: Path, frames: list[ase.Atoms], path: Path, delta: dict[int, float],
                force_factor: float = 1.0) -> Path:
    """``frames`` labelled by the model itself, energies shifted by ``delta`` per atom of
    each element and forces scaled: a "new level of theory" whose E0s differ by delta."""
    model = load_model(model_path, dtype=torch.float64)
    out = []
    for atoms in frames:
        pred = model(atoms_to_batch([atoms], model.cutoff, dtype=torch.float64, labels=False))
        energy = float(pred[keys.ENERGY].detach()) + sum(delta.get(int(z), 0.0) for z in atoms.numbers)
        a = atoms.copy()
        a.calc = SinglePointCalculator(a, energy=energy,
                                       forces=force_factor * pred[keys.FORCES].detach().numpy())
        out.append(a)
    ase.io.write(path, out)
    return path


def _module(cfg: dict):
    dm = PotentialDataModule(cfg)
    dm.prepare()
    payload = read_model_file(cfg["model"]["init_from"])
    info = initial_info(payload, dm.data_info(), cfg["data"]["e0s"], cfg["model"]["init_from"])
    module = PotentialModule(cfg, info)
    return module, dm, payload


def test_start_from_copies_every_tensor_and_predicts_the_same(tiny_data, write_config, pretrained):
    cfg = load_config(write_config(tiny_data), [f"model.init_from={pretrained}", "data.e0s=foundation"])
    assert cfg["model"]["init_from"] == str(pretrained)
    module, dm, payload = _module(cfg)
    report = start_from(module, dm, payload)
    assert report["tensors"]["extended"] == 0
    original = load_model(pretrained)
    for name, tensor in original.state_dict().items():
        if name.startswith("uncertainty."):  # fitted to the file's weights: refit after the run
            assert module.model.uncertainty is None
            continue
        assert torch.equal(module.model.state_dict()[name], tensor), name
    frames = ase.io.read(tiny_data / "tiny" / "acac_20.xyz", ":3")
    data = atoms_to_batch(frames, 4.0, dtype=torch.float64)
    a, b = module.model(data), original(data)
    assert torch.equal(a[keys.ENERGY], b[keys.ENERGY]) and torch.equal(a[keys.FORCES], b[keys.FORCES])
    # the epoch-0 errors are the file's on the validation split, measured before any step
    assert report["val"]["f_mae"] > 0 and np.isfinite(report["val"]["e_mae"])
    # the moving average starts from the loaded weights, not the throw-away initial ones
    for name, p in module.model.named_parameters():
        assert torch.equal(module.ema.shadow[name], p), name


def test_new_element_gets_new_rows_and_old_predictions_stay(tiny_data, write_config, pretrained):
    frames = ase.io.read(tiny_data / "tiny" / "acac_20.xyz", ":20")
    for k in range(0, 20, 2):  # half the frames with one H -> N (labels need not be physical)
        frames[k].numbers[14] = 7
    ase.io.write(tiny_data / "with_n.xyz", frames)
    original = load_model(pretrained)
    e0s = []  # the file's own E0s (its final refit moved them off isolated_atoms.xyz's) and N's
    for z, e in [*zip(original.atomic_numbers, original.e0s.tolist(), strict=True), (7, -1485.0)]:
        atom = ase.Atoms(numbers=[z])
        atom.calc = SinglePointCalculator(atom, energy=e)
        e0s.append(atom)
    ase.io.write(tiny_data / "e0s_n.xyz", e0s)
    cfg = load_config(write_config(tiny_data), [
        f"model.init_from={pretrained}", f"data.train={tiny_data / 'with_n.xyz'}",
        f"data.e0s={tiny_data / 'e0s_n.xyz'}", "data.test=[]"])
    module, dm, payload = _module(cfg)
    report = start_from(module, dm, payload)
    assert module.model.atomic_numbers == [1, 6, 8, 7]  # the file's order, then the new one
    assert report["tensors"]["extended"] > 0
    grown = 0
    for name, old in original.state_dict().items():
        if name.startswith("uncertainty."):
            continue
        new = module.model.state_dict()[name]
        if name in ("z_to_species", "e0s_f64bits") or new.shape == old.shape:
            continue
        grown += 1
        assert torch.equal(new[tuple(slice(0, s) for s in old.shape)], old), name
    assert grown == report["tensors"]["extended"]
    acac = ase.io.read(tiny_data / "tiny" / "acac_20.xyz", ":3")
    data = atoms_to_batch(acac, 4.0, dtype=torch.float64)
    a, b = module.model(data), original(data)
    assert torch.equal(a[keys.ENERGY], b[keys.ENERGY]) and torch.equal(a[keys.FORCES], b[keys.FORCES])
    # a frame with nitrogen runs through the grown model
    assert torch.isfinite(module.model(atoms_to_batch(frames[:1], 4.0, dtype=torch.float64))[keys.ENERGY]).all()


def test_refit_recovers_the_new_levels_e0s(tiny_data, write_config, pretrained):
    delta = {1: -0.37, 6: 2.5, 8: -1.25}
    frames = ase.io.read(tiny_data / "tiny" / "acac_20.xyz", ":20")
    rng = np.random.default_rng(0)
    for a in frames:  # vary compositions' weights: rattle only (acac has one composition)
        a.positions += rng.normal(scale=0.01, size=a.positions.shape)
    new = _relabelled(pretrained, frames, tiny_data / "new_level.xyz", delta)
    cfg = load_config(write_config(tiny_data), [
        f"model.init_from={pretrained}", f"data.train={new}", "data.e0s=refit", "data.test=[]"])
    module, dm, payload = _module(cfg)
    report = start_from(module, dm, payload)
    # one composition: the fit is the minimum-norm dE0 with counts @ dE0 = the true shift
    counts = np.array([8, 5, 2], dtype=float)  # acac: C5H8O2 -> H, C, O
    shift = counts @ np.array([delta[1], delta[6], delta[8]])
    fitted = np.array(report["e0s"]) - np.array(payload["e0s"])
    assert counts @ fitted == pytest.approx(shift, abs=1e-8)
    np.testing.assert_allclose(fitted, counts * shift / (counts @ counts), atol=1e-9)
    assert report["refit_mae_before"] == pytest.approx(shift / 15, rel=1e-6)
    assert report["refit_mae_after"] < 1e-9
    assert report["val"]["e_mae"] < 1e-3  # meV: the refit model reproduces the new energies


def test_refit_separates_elements_when_compositions_differ(tiny_data, write_config, pretrained):
    delta = {1: -0.37, 6: 2.5, 8: -1.25}
    frames = ase.io.read(tiny_data / "tiny" / "acac_20.xyz", ":20")
    frames = [a if k % 3 == 0 else a[[i for i in range(len(a)) if i != 14 - (k % 3)]]
              for k, a in enumerate(frames)]  # drop one H or two: three compositions
    frames = [a[[i for i in range(len(a)) if not (k % 4 == 1 and a.numbers[i] == 8 and i == 3)]]
              for k, a in enumerate(frames)]
    new = _relabelled(pretrained, frames, tiny_data / "new_level.xyz", delta)
    cfg = load_config(write_config(tiny_data), [
        f"model.init_from={pretrained}", f"data.train={new}", "data.e0s=refit", "data.test=[]"])
    module, dm, payload = _module(cfg)
    counts = np.array([[np.sum(a.numbers == z) for z in (1, 6, 8)] for a in frames])
    assert np.linalg.matrix_rank(counts[dm.train_set.indices]) == 3
    report = start_from(module, dm, payload)
    fitted = np.array(report["e0s"]) - np.array(payload["e0s"])
    np.testing.assert_allclose(fitted, [delta[1], delta[6], delta[8]], atol=1e-8)


def test_architecture_comes_from_the_file(tiny_data, write_config, pretrained, tmp_path):
    base = write_config(tiny_data)
    cfg = load_config(base, [f"model.init_from={pretrained}", "data.e0s=foundation",
                             "model.dtype=float32"])
    stored = read_model_file(pretrained)["model_config"]
    assert cfg["model"]["backbone"] == stored["backbone"] and cfg["model"]["dtype"] == "float32"
    with pytest.raises(ValueError, match=r"^model.backbone.init_args.channels: 4 in the config "
                                         r"but 8 in .*model.pt \(model.init_from\)"):
        load_config(base, [f"model.init_from={pretrained}", "model.backbone.init_args.channels=4"])
    with pytest.raises(ValueError, match=r"^data.cutoff: 5.0 in the config but 4 in"):
        load_config(base, [f"model.init_from={pretrained}", "data.cutoff=5.0"])
    with pytest.raises(ValueError, match=r"^model.baseline: 'constant' in the config but 'none'"):
        load_config(base, [f"model.init_from={pretrained}", "model.baseline=constant"])
    with pytest.raises(ValueError, match=r"^data.e0s: refit needs a model to start from"):
        load_config(base, ["data.e0s=refit"])
    with pytest.raises(FileNotFoundError, match="model file .*nothing.pt does not exist"):
        load_config(base, [f"model.init_from={tmp_path / 'nothing.pt'}"])
    payload = torch.load(pretrained, weights_only=True)
    payload["format_version"] = 99
    torch.save(payload, tmp_path / "future.pt")
    with pytest.raises(ValueError, match="future.pt has format version 99"):
        load_config(base, [f"model.init_from={tmp_path / 'future.pt'}"])
    payload["format_version"] = "three"
    torch.save(payload, tmp_path / "odd.pt")
    with pytest.raises(ValueError, match="odd.pt: unknown mlip model format version 'three'"):
        load_config(base, [f"model.init_from={tmp_path / 'odd.pt'}"])


def test_energy_reference_must_be_chosen(tiny_data, write_config, pretrained):
    cfg = load_config(write_config(tiny_data), [f"model.init_from={pretrained}",
                                                "data.e0s=least_squares"])
    with pytest.raises(ValueError, match="data.e0s: with model.init_from choose the energy reference"):
        _module(cfg)
    frames = ase.io.read(tiny_data / "tiny" / "acac_20.xyz", ":20")
    for a in frames:
        a.numbers[14] = 7
    ase.io.write(tiny_data / "with_n.xyz", frames)
    cfg = load_config(write_config(tiny_data), [
        f"model.init_from={pretrained}", f"data.train={tiny_data / 'with_n.xyz'}",
        "data.e0s=foundation", "data.test=[]"])
    with pytest.raises(ValueError, match=r"data.e0s: foundation has no E0 for \['N'\]"):
        _module(cfg)
    with pytest.raises(ValueError, match=r"data.e0s: foundation has no E0 for \['N'\]"):
        train({**cfg, "run_name": "refused"})
    assert not (tiny_data / "runs" / "refused").exists()  # nothing left behind


def test_frozen_groups_stay_and_the_rest_trains(tiny_data, write_config, pretrained, capsys):
    cfg = load_config(write_config(tiny_data), [
        f"model.init_from={pretrained}", "data.e0s=foundation", "run_name=frozen",
        "training.freeze=[embedding, layers.0]", "training.ema.decay=0"])
    summary = train(cfg)
    out = capsys.readouterr().out
    assert "epoch 0 (before training): val F MAE" in out and "parameters frozen" in out
    before, after = load_model(pretrained).state_dict(), load_model(summary["model"]).state_dict()
    names = [n for n, _ in load_model(pretrained).named_parameters()]
    frozen = [n for n in names if n.startswith(("backbone.embedding", "backbone.layers.0."))]
    assert frozen and all(torch.equal(before[n], after[n]) for n in frozen)
    assert any(not torch.equal(before[n], after[n]) for n in names if n not in frozen)
    module, _, _ = _module(cfg)
    with pytest.raises(ValueError, match=r"training.freeze: 'encoder' names no parameters of "
                                         r"EquivariantBackbone; groups: embedding, .*layers.0"):
        freeze(module.model, ["encoder"])


def test_cli_fine_tune_lowers_the_error_on_the_new_level(tiny_data, write_config, pretrained, capsys):
    frames = ase.io.read(tiny_data / "tiny" / "acac_20.xyz", ":20")
    new = _relabelled(pretrained, frames, tiny_data / "new_level.xyz", {1: 0.2, 6: -0.1, 8: 0.3},
                      force_factor=1.25)
    cfg = write_config(tiny_data, max_epochs=4)
    code = main(["train", "--config", str(cfg), "--init-from", str(pretrained), "data.e0s=refit",
                 f"data.train={new}", f"data.test=[{new}]", "run_name=fine"])
    assert code == 0
    out = capsys.readouterr().out
    first = next(ln for ln in out.splitlines() if ln.startswith("epoch 0 (before training)"))
    initial = float(first.split("val F MAE ")[1].split()[0])
    last = [ln for ln in out.splitlines() if ln.startswith("epoch 4/4")][0]
    final = float(last.split("val F MAE ")[1].split()[0])
    assert final < initial, out
    run = tiny_data / "runs" / "fine"
    assert load_model(run / "model.pt").atomic_numbers == [1, 6, 8]


# -- replay ------------------------------------------------------------------------------------
def test_choose_counts_and_farthest_points_cover_the_clusters():
    from mlip.training.replay import choose, replay_count

    assert replay_count({"count": 7, "fraction": None}, 5) == 5
    assert replay_count({"count": None, "fraction": 0.25}, 40) == 10
    assert replay_count({"count": None, "fraction": 0.001}, 40) == 1
    for seed in range(5):
        picked = choose(10, 40, "random", seed)
        assert len(set(picked.tolist())) == 10 and picked.min() >= 0 and picked.max() < 40
    # four tight clusters of 25 points: four farthest points take one of each, from any start
    rng = np.random.default_rng(0)
    centres = np.array([[0, 0, 0], [10, 0, 0], [0, 10, 0], [0, 0, 10]], dtype=float)
    x = np.concatenate([c + 0.1 * rng.normal(size=(25, 3)) for c in centres])
    for seed in range(5):
        picked = choose(4, 100, "fps", seed, descriptors=x)
        assert sorted(picked // 25) == [0, 1, 2, 3]
    # random choice over many draws: every frame about equally often
    hits = np.bincount(np.concatenate([choose(10, 40, "random", s) for s in range(400)]), minlength=40)
    assert hits.min() > 0.5 * 100 and hits.max() < 1.5 * 100  # expected 100 each


def test_pseudolabels_are_the_models_predictions(tiny_data, pretrained):
    from mlip.data.shards import open_dataset
    from mlip.training.replay import build_replay

    model = load_model(pretrained, dtype=torch.float64)
    settings = {"file": [str(tiny_data / "tiny" / "acac_20.xyz")], "count": 6, "fraction": None,
                "select": "fps", "weight": 1.0, "pseudolabels": True}
    out = tiny_data / "replay.lmdb"
    report = build_replay(settings, model, {}, out, seed=3, batch_size=4)
    assert report["frames"] == 6 and report["of"] == 20
    ds = open_dataset(str(out))
    frames = ase.io.read(tiny_data / "tiny" / "acac_20.xyz", ":")
    for k, index in enumerate(report["indices"]):
        s = ds[k]
        np.testing.assert_array_equal(s.positions, frames[index].positions)
        pred = model(atoms_to_batch([frames[index]], model.cutoff, dtype=torch.float64, labels=False))
        assert s.energy == pytest.approx(float(pred[keys.ENERGY].detach()), abs=1e-9)
        np.testing.assert_allclose(s.forces, pred[keys.FORCES].detach().numpy(), atol=1e-9)
        assert s.energy != pytest.approx(frames[index].get_potential_energy(), abs=1e-3)


def test_replay_refuses_elements_the_model_cannot_represent(tiny_data, pretrained, write_config):
    from mlip.training.replay import build_replay

    frames = ase.io.read(tiny_data / "tiny" / "acac_20.xyz", ":4")
    frames[0].numbers[14] = 7
    ase.io.write(tiny_data / "with_n.xyz", frames)
    settings = {"file": [str(tiny_data / "with_n.xyz")], "count": 2, "fraction": None,
                "select": "random", "weight": 1.0, "pseudolabels": False}
    with pytest.raises(ValueError, match=r"with_n.xyz \(data.replay\): element\(s\) \['N'\] are not "
                                         r"in the model \(it knows \['H', 'C', 'O'\]\)"):
        build_replay(settings, load_model(pretrained), {}, tiny_data / "r.lmdb", 0, 4)
    assert not (tiny_data / "r.lmdb").exists()
    base = write_config(tiny_data)
    with pytest.raises(ValueError, match="data.replay: replay needs a model to start from"):
        load_config(base, [f"data.replay.file={tiny_data / 'with_n.xyz'}", "data.replay.count=2"])
    with pytest.raises(ValueError, match="data.replay: give exactly one of count and fraction"):
        load_config(base, [f"model.init_from={pretrained}", f"data.replay.file={tiny_data / 'with_n.xyz'}"])


def _force_mae(model_path: Path, frames: list[ase.Atoms]) -> float:
    model = load_model(model_path, dtype=torch.float64)
    pred = model(atoms_to_batch(frames, model.cutoff, dtype=torch.float64))
    ref = np.concatenate([a.get_forces() for a in frames])
    return float(np.abs(pred[keys.FORCES].detach().numpy() - ref).mean())


def test_replay_keeps_the_old_data_while_the_new_is_learned(tiny_data, write_config, pretrained):
    frames = ase.io.read(tiny_data / "tiny" / "acac_20.xyz", ":20")
    old = _relabelled(pretrained, frames, tiny_data / "old_level.xyz", {})  # what it knew
    new = _relabelled(pretrained, frames[:8], tiny_data / "new_level.xyz", {}, force_factor=0.7)
    old_frames, new_frames = ase.io.read(old, ":"), ase.io.read(new, ":")
    errors = {}
    for name, replay in (("naive", []), ("replay", [
            f"data.replay.file={old}", "data.replay.count=12", "data.replay.weight=3.0",
            "data.replay.pseudolabels=true", "data.replay.select=fps"])):
        cfg = load_config(write_config(tiny_data, max_epochs=6, stage_two_start=None), [
            f"model.init_from={pretrained}", f"data.train={new}", "data.val_size=2",
            "data.e0s=foundation", "data.test=[]", f"run_name={name}", *replay])
        summary = train(cfg)
        errors[name] = (_force_mae(summary["model"], old_frames), _force_mae(summary["model"], new_frames))
    start_new = _force_mae(pretrained, new_frames)
    assert _force_mae(pretrained, old_frames) < 1e-6  # the old labels are its own predictions
    assert errors["naive"][1] < start_new and errors["replay"][1] < start_new  # both learn
    assert errors["replay"][0] < 0.5 * errors["naive"][0], errors  # replay forgets far less


def test_replay_on_its_own_head(tiny_data, write_config, pretrained, capsys):
    """Replayed frames keep their level on their own head: the data's head learns the new
    level, the pretraining head keeps the old, and each exports to a single-head file."""
    from mlip.model.heads import export_head

    frames = ase.io.read(tiny_data / "tiny" / "acac_20.xyz", ":20")
    old = _relabelled(pretrained, frames, tiny_data / "old_level.xyz", {})
    new = _relabelled(pretrained, frames[:8], tiny_data / "new_level.xyz", {1: 0.2, 6: -0.1},
                      force_factor=0.7)
    cfg = load_config(write_config(tiny_data, max_epochs=6, stage_two_start=None), [
        f"model.init_from={pretrained}", f"data.train={new}", "data.val_size=2", "data.e0s=refit",
        "data.test=[]", "run_name=heads", f"data.replay.file={old}", "data.replay.count=12",
        "data.replay.head=pretrain", "data.replay.weight=3.0"])
    assert cfg["model"]["heads"] == ["default", "pretrain"]
    summary = train(cfg)
    out = capsys.readouterr().out
    assert "on head pretrain" in out and "model_default.pt is the default head" in out
    multi = load_model(summary["model"])
    assert multi.heads == ["default", "pretrain"]
    # the pretraining head keeps the file's E0s; the data's head has the refit ones
    assert multi.e0s[1].tolist() == read_model_file(pretrained)["e0s"]
    assert multi.e0s[0].tolist() != multi.e0s[1].tolist()
    default = Path(summary["head_models"]["default"])
    pre = export_head(summary["model"], "pretrain", tiny_data / "pretrain_head.pt")
    old_frames, new_frames = ase.io.read(old, ":"), ase.io.read(new, ":")
    assert _force_mae(default, new_frames) < _force_mae(pretrained, new_frames)
    assert _force_mae(pre, old_frames) < _force_mae(default, old_frames)  # heads differ
    # a multi-head file is not a starting point; one of its heads is
    with pytest.raises(ValueError, match=r"has the heads \['default', 'pretrain'\]: start from one"):
        load_config(write_config(tiny_data), [f"model.init_from={summary['model']}"])
    load_config(write_config(tiny_data), [f"model.init_from={pre}", "data.e0s=foundation"])
