"""One training run: config -> data -> Lightning fit -> deployable model -> test metrics."""

from __future__ import annotations

import contextlib
import copy
import json
import os
import random
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from mlip.training.lightning_import import L  # isort: split

import numpy as np
import torch
import yaml
from ase.data import chemical_symbols
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger

from mlip.model.io import load_model, read_model_file, save_model
from mlip.ranks import global_rank
from mlip.training.callbacks import StagedBest, StagedEarlyStopping, StageTwo
from mlip.training.checkpoint_io import AtomicCheckpointIO
from mlip.training.config import max_time_seconds
from mlip.training.datamodule import PotentialDataModule
from mlip.training.evaluate import evaluate_file, format_table
from mlip.training.finetune import initial_info, start_from
from mlip.training.module import PotentialModule
from mlip.training.progress import EpochLines


def run_dir_of(config: dict[str, Any]) -> Path:
    return Path(config["output_dir"]) / config["run_name"]


def build_trainer(config: dict[str, Any], run_dir: Path) -> tuple[L.Trainer, StagedBest]:
    """The Lightning Trainer of a run and its best-checkpoint callback.

    ``last.ckpt`` (every epoch, for ``--resume``) is Lightning's ModelCheckpoint without a
    monitor; ``best.ckpt`` and early stopping rank epochs only within the current stage
    (:mod:`mlip.training.callbacks`), so the exported model is stage two's best.
    """
    tc = config["training"]
    sc, trainer_cfg = tc["schedule"], tc["trainer"]
    checkpoints = run_dir / "checkpoints"
    best = StagedBest(checkpoints, monitor="val/loss")
    last = ModelCheckpoint(dirpath=checkpoints, filename="last", monitor=None, save_top_k=1,
                           enable_version_counter=False)
    callbacks: list = [StageTwo(tc["stage_two"]["start"], tc["stage_two"]["lr"]), best, last,
                       LearningRateMonitor(logging_interval="epoch")]
    # A bar only on a terminal; elsewhere (a log file, a pipe, a batch job) a line per epoch.
    progress_bar = bool(trainer_cfg["enable_progress_bar"]) and sys.stdout.isatty()
    if not progress_bar:
        callbacks.append(EpochLines(max_epochs=sc["max_epochs"] if sc["max_epochs"] < 10**5 else None,
                                    max_time=max_time_seconds(sc["max_time"])))
    if sc["early_stopping_patience"]:
        callbacks.append(StagedEarlyStopping(sc["early_stopping_patience"], monitor="val/loss"))
    trainer = L.Trainer(
        default_root_dir=run_dir,
        max_epochs=sc["max_epochs"],
        max_time=sc["max_time"],
        accelerator=trainer_cfg["accelerator"],
        devices=trainer_cfg["devices"],
        num_nodes=trainer_cfg["num_nodes"],
        strategy=trainer_cfg["strategy"],
        gradient_clip_val=tc["optim"]["gradient_clip"],
        logger=TensorBoardLogger(run_dir, name="tensorboard", version=""),
        callbacks=callbacks,
        inference_mode=False,
        log_every_n_steps=trainer_cfg["log_every_n_steps"],
        check_val_every_n_epoch=trainer_cfg["check_val_every_n_epoch"],
        enable_progress_bar=progress_bar,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        plugins=[AtomicCheckpointIO()],
        use_distributed_sampler=False,  # our batch samplers split the data between ranks
    )
    return trainer, best


def export_model(module: PotentialModule, checkpoint_path: str | None, path: Path) -> Path:
    """Write the deployable model from a Lightning checkpoint (EMA weights when present)."""
    if checkpoint_path:
        state = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
        module.load_state_dict(state["state_dict"])
        module.on_load_checkpoint(state)
    model = module.model
    model.load_state_dict(module.export_state_dict())
    return save_model(path, model, module.config["model"], module.data_info["avg_num_neighbors"])


@contextlib.contextmanager
def process_state_restored():
    """Undo what a training run changes in its process: environment variables (Lightning's
    seeding and DDP launcher set some), torch's thread count (``training.trainer.threads``) and the
    global torch/numpy/python random states (``seed_everything``). Nothing in a run sets the
    default dtype (tests/training/test_process_state.py checks it)."""
    env = dict(os.environ)
    threads = torch.get_num_threads()
    states = (torch.get_rng_state(), np.random.get_state(), random.getstate())
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")  # what Lightning's import sets
    try:
        yield
    finally:
        for key in set(os.environ) - set(env):
            del os.environ[key]
        for key, value in env.items():
            if os.environ.get(key) != value:
                os.environ[key] = value  # intended: restores the caller's environment
        torch.set_num_threads(threads)
        torch.set_rng_state(states[0])
        np.random.set_state(states[1])
        random.setstate(states[2])
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)


def train(config: dict[str, Any] | str | Path, resume: bool = False,
          overrides: list[str] | tuple[str, ...] = (), overwrite: bool = False) -> dict[str, Any]:
    """Run training as configured; returns a summary dict (also written to summary.json).

    The process is left as it was found (:func:`process_state_restored`): environment,
    thread count and random states.

    Args:
        config: a resolved config (:func:`mlip.training.config.load_config`) or a YAML path.
        resume: continue ``checkpoints/<run_name>/checkpoints/last.ckpt`` exactly.
        overrides: dotted ``key=value`` overrides, with a YAML path.
        overwrite: replace an earlier run in the same folder (it is deleted first; only a
            folder that holds an mlip run, i.e. its ``config.yaml``, is ever deleted).
    """
    if resume and overwrite:
        raise ValueError("resume and overwrite exclude each other")
    with process_state_restored():
        if not isinstance(config, dict):
            from mlip.training.config import load_config

            config = load_config(config, overrides)
        if config["training"]["committee"] > 1:
            return _train_committee(config, resume, overwrite)
        return _train(config, resume, overrides, overwrite)


def member_config(config: dict[str, Any], k: int) -> dict[str, Any]:
    """Committee member k's run: seed ``seed + k``, the committee's split (``data.split_seed``,
    default the committee's seed), folder ``<run>/member_<k>``, no test files."""
    member = copy.deepcopy(config)
    member["training"]["committee"] = 1
    member["seed"] = int(config["seed"]) + k
    if member["data"]["split_seed"] is None:
        member["data"]["split_seed"] = int(config["seed"])
    member["run_name"] = f"{config['run_name']}/member_{k}"
    member["data"]["test"] = []
    return member


def _train_committee(config: dict[str, Any], resume: bool, overwrite: bool) -> dict[str, Any]:
    """``training.committee`` = K > 1: K runs (:func:`member_config`), then one committee file
    ``<run>/committee.pt`` calibrated on the shared validation split, and the committee's
    test errors and calibration. A finished member is kept on ``--resume``."""
    from mlip.graph.build import as_batch_dict
    from mlip.inference.engine import ForceField
    from mlip.model.io import save_committee
    from mlip.training.calibration import calibrate_committee

    count = int(config["training"]["committee"])
    run_dir = run_dir_of(config)
    t0 = time.time()
    paths, members = [], []
    for k in range(count):
        member = member_config(config, k)
        member_dir = run_dir_of(member)
        paths.append(member_dir / "model.pt")
        if resume and (member_dir / "summary.json").exists():
            print(f"mlip train: committee member {k + 1}/{count} already trained ({member_dir})", flush=True)
            continue
        print(f"mlip train: committee member {k + 1}/{count} (seed {member['seed']}) in {member_dir}", flush=True)
        member_resume = resume and (member_dir / "checkpoints" / "last.ckpt").exists()
        members.append(_train(member, member_resume, (), overwrite))
    if global_rank() != 0:
        return {"members": members}
    with open(run_dir / "config.yaml", "w") as fh:
        yaml.safe_dump(config, fh, sort_keys=False)
    engine = ForceField([str(p) for p in paths], device="cpu")
    dm = PotentialDataModule(member_config(config, 0))
    dm.prepare()
    val = ({k: v for k, v in as_batch_dict(b).items()} for b in dm.val_dataloader())
    alpha = calibrate_committee(engine, val)
    committee = save_committee(run_dir / "committee.pt", paths, alpha,
                               {"seeds": [int(config["seed"]) + k for k in range(count)]})
    print(f"mlip train: committee of {count} in {committee}: calibrated on {len(dm.val_set)} "
          f"validation structures, alpha_E {alpha[0]:.3g}, alpha_F {alpha[1]:.3g}", flush=True)
    engine.committee_alpha = alpha
    results = []
    mapping = {k: config["data"][k] for k in ("energy_key", "forces_key", "stress_key")}
    for path in config["data"]["test"]:
        r = evaluate_file(engine, path, config["data"]["val_batch_size"], mapping,
                          progress=sys.stderr.isatty(), uncertainty=True)
        r.pop("calibration")
        results.append(r)
    if results:
        from mlip.training.calibration import format_metrics

        print(format_table(results))
        print(format_metrics(results))
    summary = {"run_dir": str(run_dir), "committee": str(committee), "members": [str(p) for p in paths],
               "alpha": list(alpha), "test": results, "total_seconds": time.time() - t0}
    with open(run_dir / "summary.json", "w") as fh:
        json.dump(summary, fh, indent=2)
    print(f"mlip train: committee done in {summary['total_seconds']:.0f} s; committee file: {committee}")
    for r in results:
        if "f_mae" in r:
            print(f"held-out force MAE of the committee mean on {Path(r['file']).name}: {r['f_mae']:.2f} meV/Å")
    return summary


def _set_aside(run_dir: Path) -> Path:
    """Move an earlier run folder aside (``--overwrite``), refusing anything that is not one;
    the caller deletes it once the new run's setup succeeded, or puts it back."""
    if not (run_dir / "config.yaml").is_file():
        raise FileExistsError(f"{run_dir} exists but holds no mlip run (no config.yaml): "
                              "not deleting it; choose another run_name or output_dir")
    print(f"mlip train: replacing the earlier run in {run_dir}", flush=True)
    aside = run_dir.with_name(f".{run_dir.name}.replaced")
    shutil.rmtree(aside, ignore_errors=True)  # left by a process killed during setup
    run_dir.rename(aside)
    return aside


def _replay(config: dict[str, Any], module: PotentialModule, dm: PotentialDataModule,
            payload: dict[str, Any], run_dir: Path, resume: bool) -> str:
    """``data.replay``: choose and label the frames once (``<run>/replay.lmdb``, kept for a
    resumed run) and add them to the training split; returns a one-line description."""
    from mlip.data.open import key_mapping
    from mlip.data.shards import open_dataset
    from mlip.training.replay import build_replay

    settings = config["data"]["replay"]
    out = run_dir / "replay.lmdb"
    head = module.model.head_index(settings["head"]) if settings["head"] else None
    if not (resume and out.exists()):
        shift = None
        if head is None:  # one head: the original labels move onto the run's E0s
            shift = {int(z): float(new - old) for z, new, old in zip(
                payload["atomic_numbers"], module.model.e0s.tolist(), payload["e0s"], strict=False)}
        build_replay(settings, module.model, key_mapping(config["data"]), out, config["seed"],
                     config["data"]["val_batch_size"], e0_shift=shift, head=head)
    dataset = open_dataset(str(out))
    dm.add_frames(dataset, settings["weight"], settings["weight"], str(out),
                  known=set(module.model.atomic_numbers), what="data.replay", head=head)
    labels = "pseudolabels of the starting model" if settings["pseudolabels"] else "their labels"
    where = f", on head {settings['head']}" if head is not None else ""
    return (f"{len(dataset)} frames of {', '.join(settings['file'])} ({settings['select']}, "
            f"{labels}, weight {settings['weight']:g}{where})")


def final_e0_refit(model_path: Path, dm: PotentialDataModule, config: dict[str, Any],
                   avg_num_neighbors: float) -> dict[str, Any]:
    """``training.final_e0_refit``: move the model file's E0s by the least-squares fit of the
    training split's energy residuals (its own frames, not extra or replayed ones) over
    element counts (:func:`mlip.training.finetune.refit_e0s`) and rewrite the file."""
    from mlip.training.finetune import refit_e0s, training_split_loader

    model = load_model(model_path)
    old = model.e0s.cpu().numpy().copy()
    try:
        new, before, after = refit_e0s(model, training_split_loader(dm))
    except ValueError as exc:  # no energy labels in the training split
        return {"skipped": str(exc)}
    save_model(model_path, model, config["model"], avg_num_neighbors)
    shifts = 1000 * (new - (old[0] if model.heads else old))
    elements = ", ".join(f"{chemical_symbols[z]} {d:+.2f}" for z, d in zip(model.atomic_numbers, shifts, strict=True))
    print(f"mlip train: E0s refit on the training split after training ({elements} meV): per-atom "
          f"energy MAE {1000 * before:.2f} -> {1000 * after:.2f} meV", flush=True)
    return {"e0s": new.tolist(), "delta_mev": shifts.tolist(), "mae_per_atom_before": before,
            "mae_per_atom_after": after}


def fit_uncertainty(model_path: Path, dm: PotentialDataModule, config: dict[str, Any],
                    avg_num_neighbors: float) -> dict[str, Any]:
    """Fit the model file's last-layer uncertainty (:func:`mlip.model.uncertainty.fit_last_layer`)
    on the run's training split, calibrate it on its validation split, and rewrite the file.
    Returns the fit's report (or {"skipped": reason} for a backbone without readout features)."""
    from mlip.graph.build import as_batch_dict
    from mlip.model.uncertainty import fit_last_layer

    model = load_model(model_path)
    if not model.backbone.outputs.readout_features:
        return {"skipped": f"{type(model.backbone).__name__} declares no readout features"}
    device = next(model.parameters()).device

    def batches(loader):
        for batch in loader:
            yield {k: v.to(device) for k, v in as_batch_dict(batch).items()}

    start = time.time()
    train, val = dm.whole_split_loaders()  # all of each split, also after a multi-rank run
    report = fit_last_layer(model, batches(train), batches(val))
    save_model(model_path, model, config["model"], avg_num_neighbors)
    report["seconds"] = time.time() - start
    print(f"mlip train: uncertainty (llpr) fitted on {report['train_atoms']} training atoms, calibrated "
          f"on {report['val_structures']} validation structures: alpha_E {report['alpha_energy']:.3g}, "
          f"alpha_F {report['alpha_forces']:.3g} ({report['seconds']:.1f} s)", flush=True)
    return report


def _train(config: dict[str, Any] | str | Path, resume: bool,
           overrides: list[str] | tuple[str, ...], overwrite: bool = False) -> dict[str, Any]:
    if not isinstance(config, dict):
        from mlip.training.config import load_config

        config = load_config(config, overrides)
    threads = config["training"]["trainer"]["threads"]
    if threads:
        torch.set_num_threads(int(threads))
    L.seed_everything(config["seed"], workers=True, verbose=False)
    run_dir = run_dir_of(config)
    last = run_dir / "checkpoints" / "last.ckpt"
    if resume and not last.exists():
        raise FileNotFoundError(f"--resume: {last} does not exist")
    rank_zero = global_rank() == 0
    earlier = last.exists() or (run_dir / "model.pt").exists()
    aside = None
    if overwrite and earlier and rank_zero:
        aside = _set_aside(run_dir)
    elif not resume and not overwrite and earlier:
        raise FileExistsError(
            f"{run_dir} already holds a run: pass --resume to continue it, --overwrite to "
            "replace it, or choose another run_name (e.g. run_name=NAME)"
        )
    created = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    try:  # bad input found while setting up leaves no new run folder behind
        if rank_zero:
            with open(run_dir / "config.yaml", "w") as fh:
                yaml.safe_dump(config, fh, sort_keys=False)
        t0 = time.time()
        dm = PotentialDataModule(config)
        dm.prepare()
        info = dm.data_info()
        source = config["model"].get("init_from")
        if source:  # fine-tuning: the file's elements, normalisations and E0 choice
            payload = read_model_file(source)
            info = initial_info(payload, info, config["data"]["e0s"], source, config["model"].get("heads"))
        module = PotentialModule(config, info)
        n_params = sum(p.numel() for p in module.model.parameters())
        start = start_from(module, dm, payload) if source and not resume else None
        if rank_zero:
            s = info["statistics"]
            print(
                f"mlip train: {len(dm.train_set) - dm.extra_count} train"
                f"{f' + {dm.extra_count} extra' if dm.extra_count else ''} / {len(dm.val_set)} val structures, "
                f"elements {info['atomic_numbers']}, E0s ({config['data']['e0s'] if source else s['e0_method']}), "
                f"avg neighbours {info['avg_num_neighbors']:.2f}, scale {info['scale']:.4f} eV, "
                + ("no shift (baseline none), " if config["model"]["baseline"] == "none" else
                   f"shift ({config['model']['baseline']}) "
                   f"{', '.join(f'{z}: {e:.4f}' for z, e in zip(info['atomic_numbers'], info['shift'], strict=True))} eV, ")
                + f"{n_params:,} parameters"
            )
        if start is not None and rank_zero:
            val = start["val"]
            refit = (f"; E0s refit: per-atom energy MAE {1000 * start['refit_mae_before']:.1f} -> "
                     f"{1000 * start['refit_mae_after']:.1f} meV/atom" if "refit_mae_before" in start else "")
            new = info["init_from"]["new_elements"]
            grown = f", {start['tensors']['extended']} grown for new elements {new}" if new else ""
            frozen = f", {len(module.frozen)} parameters frozen" if module.frozen else ""
            print(f"mlip train: from {source}: {start['tensors']['copied']} tensors copied"
                  f"{grown}{frozen}{refit}")
            print(f"epoch 0 (before training): val F MAE {val.get('f_mae', float('nan')):.2f} meV/Å, "
                  f"val E MAE {val.get('e_mae', float('nan')):.2f} meV", flush=True)
        if source and config["data"]["replay"]["file"]:
            replayed = _replay(config, module, dm, payload, run_dir, resume)
            if rank_zero:
                print(f"mlip train: replaying {replayed}", flush=True)
    except BaseException:
        if created and rank_zero:
            shutil.rmtree(run_dir, ignore_errors=True)
        if aside is not None:  # a setup error keeps the earlier run
            aside.rename(run_dir)
        raise
    if aside is not None:
        shutil.rmtree(aside)
    trainer, checkpoint = build_trainer(config, run_dir)
    t_fit = time.time()
    trainer.fit(module, datamodule=dm, ckpt_path=str(last) if resume else None)
    fit_seconds = time.time() - t_fit
    summary: dict[str, Any] = {
        "run_dir": str(run_dir),
        "parameters": n_params,
        "epochs": trainer.current_epoch,
        "fit_seconds": fit_seconds,
        "train_structures": len(dm.train_set),
        "threads": torch.get_num_threads(),
        "train_structures_per_second": trainer.current_epoch * len(dm.train_set) / max(fit_seconds, 1e-9),
        "last_metrics": module.last_metrics,
    }
    if start is not None:
        summary["initial"] = {"from": source, "val": start["val"], "e0s": start["e0s"]}
    if not trainer.is_global_zero:
        return summary
    best = checkpoint.best_model_path or (str(last) if last.exists() else None)
    model_path = export_model(module, best, run_dir / "model.pt")
    summary["model"] = str(model_path)
    heads = config["model"].get("heads")
    if heads:  # adapters take one head: the data's, beside the multi-head file
        from mlip.model.heads import export_head

        model_path = export_head(model_path, heads[0], run_dir / f"model_{heads[0]}.pt")
        summary["head_models"] = {heads[0]: str(model_path)}
        print(f"mlip train: heads {', '.join(heads)} in {summary['model']}; {model_path} is the "
              f"{heads[0]} head for every adapter (another: mlip export head {summary['model']} "
              f"--head NAME -o OUT.pt)")
    summary["best_checkpoint"] = best
    if config["training"]["final_e0_refit"]:  # before the uncertainty, whose alpha_E reads energies
        kept = ("a multi-head model keeps its E0 rows" if heads else
                "data.e0s: foundation keeps the starting model's E0s" if source and config["data"]["e0s"] == "foundation"
                else None)
        summary["final_e0_refit"] = ({"skipped": kept} if kept else
                                     final_e0_refit(model_path, dm, config, module.data_info["avg_num_neighbors"]))
    if config["training"]["uncertainty"] == "llpr" and not heads:
        summary["uncertainty"] = fit_uncertainty(model_path, dm, config, module.data_info["avg_num_neighbors"])
    results = []
    if config["data"]["test"]:
        model = load_model(model_path, dtype=getattr(torch, config["model"]["dtype"]))
        mapping = {k: config["data"][k] for k in ("energy_key", "forces_key", "stress_key")}
        for path in config["data"]["test"]:
            r = evaluate_file(model, path, config["data"]["val_batch_size"], mapping,
                              progress=sys.stderr.isatty())
            results.append(r)
        print(format_table(results))
    summary["test"] = results
    summary["total_seconds"] = time.time() - t0
    with open(run_dir / "summary.json", "w") as fh:
        json.dump(summary, fh, indent=2)
    print(
        f"mlip train: done in {summary['total_seconds']:.0f} s ({summary['epochs']} epochs, "
        f"{summary['train_structures_per_second']:.1f} structures/s); model: {model_path}"
    )
    for r in results:
        if "f_mae" in r:
            print(f"held-out force MAE on {Path(r['file']).name}: {r['f_mae']:.2f} meV/Å")
    return summary
