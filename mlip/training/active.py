"""Active learning on the user's machine (``mlip learn --config learn.yaml``).

Round 0 trains a model on the ``initial`` labelled frames. Each further round:

1. sample: Langevin MD with the current model from ``sampling.starts`` structures of the
   ``pool`` (default: the initial frames), one candidate frame every ``sampling.interval``
   steps with the model's per-atom force uncertainty (a run ends when it meets two atoms too
   close, heats past ``sampling.max_temperature_factor`` times the target (that frame is
   dropped: not of the target ensemble) or passes ``sampling.max_uncertainty`` (that frame,
   the frontier, is kept); its frames so far are kept);
2. select ``per_round`` frames: ``uncertainty`` takes the ``pool_factor * per_round`` candidates
   of largest per-structure force uncertainty (RMS over atoms) and picks among them by
   farthest-point sampling of the model's mean invariant features, starting at the most
   uncertain (diversity: no two near-copies of one excursion); ``random`` draws uniformly
   from all candidates (the baseline);
3. label them with the ``labeller`` (GFN2-xTB through tblite, or any ASE calculator class);
   a frame whose calculation fails or gives non-finite output is recorded in
   ``failures.json`` with its error and skipped, never kept;
4. train on everything labelled so far, from the previous round's model (``finetune``, the
   default; ``data.e0s: foundation``) or from scratch;
5. evaluate on the ``test`` files (errors and the uncertainty's calibration).

Each stage writes its files atomically into ``<run_dir>/round_NN/`` and is skipped when they
exist, so running the same command again after a kill resumes where it stopped (a training
interrupted mid-run continues from its last checkpoint). ``summary.json`` and the printed
table hold every round's label count and test errors.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ase
import ase.io
import numpy as np
from ase.calculators.singlepoint import SinglePointCalculator

from mlip.training.schema import (
    BOOL,
    COUNT,
    FILES,
    NAMES,
    NON_NEGATIVE,
    NON_NEGATIVE_INT,
    NONE,
    POSITIVE,
    TEXT,
    Check,
    choice,
    option,
    resolve_section,
    section,
)

XTB = {"method": "GFN2-xTB", "accuracy": 1.0, "electronic_temperature": 300.0, "charge": 0,
       "multiplicity": 1, "verbosity": 0}
DICT = Check("a mapping", lambda v: isinstance(v, dict))
INT = Check("an integer", lambda v: isinstance(v, int) and not isinstance(v, bool))


@dataclass
class SamplingConfig:
    temperature: float = option(600.0, POSITIVE)  # K, Langevin thermostat and initial velocities
    steps: int = option(400, COUNT)  # MD steps per run
    interval: int = option(10, COUNT)  # steps between candidate frames
    timestep: float = option(0.5, POSITIVE)  # fs
    friction: float = option(0.01, POSITIVE)  # 1/fs
    starts: int = option(4, COUNT)  # MD runs per round, from random pool structures
    max_uncertainty: float | None = option(None, POSITIVE | NONE)  # eV/Å: a run stops above it
    # a run stops when its temperature passes this multiple of the target (a model that heats
    # the system is off its data; frames beyond are not of the target ensemble and are dropped)
    max_temperature_factor: float = option(2.0, POSITIVE)
    min_distance: float = option(0.5, NON_NEGATIVE)  # Å: a run stops when two atoms come closer


@dataclass
class LabellerConfig:
    # "xtb" (GFN2-xTB through tblite: neutral singlet, accuracy 1, 300 K electronic
    # temperature, as tools/make_xtb_dataset.py) or "package.module.Class" of an ASE calculator
    calculator: str = option("xtb", TEXT)
    args: dict = option({}, DICT)  # keyword arguments of the class (merged over xtb's)


@dataclass
class LearnConfig:
    run_dir: str = option("learn", TEXT)
    train_config: str | None = option(None, TEXT | NONE)  # the mlip train YAML of every round
    overrides: list = option([], NAMES)  # dotted overrides of it (e.g. training.schedule.max_time=...)
    initial: list = option([], FILES)  # labelled starting frames
    pool: list | None = option(None, FILES | NONE)  # MD starting structures (default: initial)
    test: list = option([], FILES)  # labelled held-out files evaluated after every round
    rounds: int = option(4, NON_NEGATIVE_INT)  # rounds after round 0 (0: train on the initial frames only)
    per_round: int = option(10, COUNT)  # frames labelled per round
    selection: str = option("uncertainty", choice("uncertainty", "random"))
    pool_factor: int = option(4, COUNT)  # uncertainty: FPS among per_round * pool_factor most uncertain
    finetune: bool = option(True, BOOL)  # rounds >= 1 start from the previous round's model
    seed: int = option(0, INT)
    sampling: SamplingConfig = section(SamplingConfig)
    labeller: LabellerConfig = section(LabellerConfig)


def load_learn_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """The resolved loop config of a YAML file (one-line errors naming the key)."""
    from mlip.training.config import apply_override, parse_yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"learn config {path} does not exist")
    user = parse_yaml(path.read_text()) or {}
    if not isinstance(user, dict):
        raise ValueError(f"{path}: expected a mapping of keys")
    for override in overrides:
        apply_override(user, override)
    config = resolve_section(LearnConfig, user)
    if not config["initial"]:
        raise ValueError(f"{path}: initial: give the labelled starting frames")
    if not config["train_config"]:
        raise ValueError(f"{path}: train_config: give the mlip train YAML each round trains with")
    return config


# -- labelling ---------------------------------------------------------------------------------
def make_labeller(settings: dict[str, Any]):
    """The ASE calculator of ``labeller`` (one line naming what is missing otherwise)."""
    from mlip.classpath import import_class

    name, args = settings["calculator"], dict(settings["args"])
    if name == "xtb":
        try:
            from tblite.ase import TBLite
        except ImportError as err:
            raise ValueError("labeller.calculator: xtb needs tblite (pip install 'tblite>=0.4')") from err
        return TBLite(**{**XTB, **args})
    return import_class(name.replace(":", "."), what="labeller.calculator")(**args)


def label_frames(frames: list[ase.Atoms], calculator) -> tuple[list[ase.Atoms], list[dict[str, Any]]]:
    """Energy and forces of each frame from ``calculator``: (labelled copies, failures), a
    failure being {"index", "error"} for an exception or a non-finite result."""
    labelled, failures = [], []
    for k, frame in enumerate(frames):
        atoms = ase.Atoms(numbers=frame.numbers, positions=frame.positions, cell=frame.cell, pbc=frame.pbc)
        atoms.info.update({key: v for key, v in frame.info.items() if key.startswith(("md_", "round"))})
        atoms.calc = calculator
        try:
            energy = float(atoms.get_potential_energy())
            forces = np.array(atoms.get_forces(), dtype=np.float64)
        except Exception as err:  # noqa: BLE001 - any labeller failure (SCF not converged, ...)
            failures.append({"index": k, "error": f"{type(err).__name__}: {str(err).strip()[:200]}"})
            continue
        if not (math.isfinite(energy) and np.isfinite(forces).all()):
            failures.append({"index": k, "error": "non-finite energy or forces"})
            continue
        atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=forces)
        labelled.append(atoms)
    return labelled, failures


# -- sampling and selection ------------------------------------------------------------------
def sample_candidates(model: str | Path, starts: list[ase.Atoms], settings: dict[str, Any],
                      seed: int) -> tuple[list[ase.Atoms], dict[str, Any]]:
    """Langevin MD from each start; a frame every ``interval`` steps with its uncertainties
    (info md_run, md_step, max/rms_forces_uncertainty; arrays forces_uncertainty).

    Returns:
        the candidate frames and a report (runs, frames, runs ended early and why).
    """
    from mlip.inference.errors import AtomsTooCloseError, NonFiniteOutputError
    from mlip.integrations.ase import MLIPCalculator
    from mlip.md.ase_driver import initial_velocities, make_integrator

    calculator = MLIPCalculator(str(model), device="cpu", min_distance=settings["min_distance"] or None)
    if not calculator.engine.has_uncertainty:
        raise ValueError(f"{model} has no uncertainty: the loop needs training.uncertainty: llpr")
    rng = np.random.default_rng(seed)
    candidates: list[ase.Atoms] = []
    ended: list[str] = []
    for run, start in enumerate(starts):
        atoms = ase.Atoms(numbers=start.numbers, positions=start.positions, cell=start.cell, pbc=start.pbc)
        atoms.calc = calculator
        initial_velocities(atoms, settings["temperature"], rng)
        dyn = make_integrator(atoms, "langevin", settings["timestep"], settings["temperature"],
                              settings["friction"], 0.0, rng)
        for step in range(0, settings["steps"] + 1, settings["interval"]):
            try:
                if step:
                    dyn.run(settings["interval"])
                atoms.get_potential_energy()
            except (AtomsTooCloseError, NonFiniteOutputError) as err:
                ended.append(f"run {run} at step {step}: {str(err).splitlines()[0][:120]}")
                break
            temperature = float(atoms.get_temperature())
            if step and temperature > settings["max_temperature_factor"] * settings["temperature"]:
                ended.append(f"run {run} at step {step}: temperature {temperature:.0f} K (frame dropped)")
                break
            u = np.asarray(calculator.results["forces_uncertainty"], dtype=np.float64)
            frame = ase.Atoms(numbers=atoms.numbers, positions=atoms.positions.copy(), cell=atoms.cell,
                              pbc=atoms.pbc)
            frame.info.update(md_run=run, md_step=step, max_forces_uncertainty=float(u.max()),
                              rms_forces_uncertainty=float(np.sqrt(np.mean(u ** 2))),
                              md_temperature=temperature)
            frame.arrays["forces_uncertainty"] = u
            candidates.append(frame)
            limit = settings["max_uncertainty"]
            if limit is not None and u.max() > limit:  # this frame is the frontier: kept
                ended.append(f"run {run} at step {step}: force uncertainty {u.max():.3f} > {limit:g} eV/Å")
                break
    return candidates, {"runs": len(starts), "frames": len(candidates), "ended_early": ended}


def mean_features(model: str | Path, frames: list[ase.Atoms]) -> np.ndarray:
    """(M, F) mean invariant node features of each frame under ``model``."""
    import torch

    from mlip.data import keys
    from mlip.graph.build import atoms_to_batch
    from mlip.model.io import load_model
    from mlip.ops.scatter import scatter_sum

    potential = load_model(model)
    dtype = next(potential.parameters()).dtype
    rows = []
    for k in range(0, len(frames), 20):
        data = atoms_to_batch(frames[k:k + 20], potential.cutoff, dtype=dtype)
        with torch.no_grad():
            out = potential(data, compute_forces=False)
        n = data[keys.NUM_ATOMS]
        sums = scatter_sum(out[keys.NODE_FEATURES].double(), data[keys.BATCH], len(n))
        rows.append((sums / n[:, None].double()).numpy())
    return np.concatenate(rows)


def select_frames(candidates: list[ase.Atoms], count: int, method: str, pool_factor: int,
                  seed: int, features: np.ndarray | None = None) -> np.ndarray:
    """Indices of the ``count`` candidates to label (see the module docstring), sorted."""
    from mlip.training.replay import farthest_points

    count = min(count, len(candidates))
    if count == 0:
        return np.zeros(0, dtype=np.int64)
    if method == "random":
        return np.sort(np.random.default_rng(seed).choice(len(candidates), size=count, replace=False))
    scores = np.array([c.info["rms_forces_uncertainty"] for c in candidates])
    pool = np.argsort(-scores, kind="stable")[: min(len(candidates), pool_factor * count)]
    if features is None:
        return np.sort(pool[:count])
    x = features[pool]
    x = (x - x.mean(axis=0)) / np.where(x.std(axis=0) > 0, x.std(axis=0), 1.0)
    return np.sort(pool[farthest_points(x, count, first=0)])


# -- files -------------------------------------------------------------------------------------
def _write_frames(path: Path, frames: list[ase.Atoms]) -> None:
    tmp = path.with_name(path.name + f".partial-{os.getpid()}")
    try:
        if frames:
            ase.io.write(tmp, frames, format="extxyz")
        else:
            tmp.write_text("")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _write_json(path: Path, value: Any) -> None:
    tmp = path.with_name(path.name + f".partial-{os.getpid()}")
    try:
        tmp.write_text(json.dumps(value, indent=2))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _read_frames(paths: list[str]) -> list[ase.Atoms]:
    frames = []
    for p in paths:
        try:
            frames += ase.io.read(p, ":")
        except Exception as err:  # noqa: BLE001 - any reader failure names the file
            raise ValueError(f"cannot read {p}: {err}") from err
    return frames


# -- the loop ----------------------------------------------------------------------------------
def _train_round(config: dict[str, Any], r: int, train_file: Path, previous: Path | None) -> Path:
    from mlip.training.config import load_config
    from mlip.training.run import run_dir_of, train

    run_dir = Path(config["run_dir"])
    overrides = [*config["overrides"], f"data.train={train_file}", f"run_name=round_{r:02d}",
                 f"output_dir={run_dir / 'models'}", f"seed={config['seed'] + r}",
                 "training.uncertainty=llpr", "training.committee=1"]
    if previous is not None:
        overrides += [f"model.init_from={previous}", "data.e0s=foundation"]
    train_config = load_config(config["train_config"], overrides)
    out = run_dir_of(train_config)
    model = out / "model.pt"
    if (out / "summary.json").exists() and model.exists():
        return model
    resume = (out / "checkpoints" / "last.ckpt").exists()
    train(train_config, resume=resume, overwrite=not resume)
    return model


def _evaluate(model: Path, tests: list[str]) -> list[dict[str, Any]]:
    from mlip.inference.engine import ForceField
    from mlip.training.evaluate import evaluate_file

    engine = ForceField(str(model), device="cpu")
    results = []
    for path in tests:
        r = evaluate_file(engine, path, 20, progress=False, uncertainty=True)
        r.pop("calibration", None)
        results.append(r)
    return results


def learn(config: dict[str, Any]) -> dict[str, Any]:
    """Run (or resume) the loop of a resolved config (:func:`load_learn_config`).

    Returns:
        summary: per round the labels so far, the labeller's failures, the MD report and
        the test results; also written to ``<run_dir>/summary.json``.
    """
    run_dir = Path(config["run_dir"])
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "learn.json").write_text(json.dumps(config, indent=2))
    initial = _read_frames(config["initial"])
    pool = _read_frames(config["pool"]) if config["pool"] else initial
    labeller = make_labeller(config["labeller"])  # a bad labeller fails before any training
    rounds = []
    previous: Path | None = None
    for r in range(config["rounds"] + 1):
        folder = run_dir / f"round_{r:02d}"
        folder.mkdir(exist_ok=True)
        t0 = time.time()
        record: dict[str, Any] = {"round": r}
        train_file = folder / "train.xyz"
        if r == 0:
            if not train_file.exists():
                _write_frames(train_file, initial)
            record["added"] = len(initial)
        else:
            prior = run_dir / f"round_{r - 1:02d}" / "train.xyz"
            labelled_file = folder / "labelled.xyz"
            if not labelled_file.exists():
                candidates_file = folder / "candidates.xyz"
                if not candidates_file.exists():
                    rng = np.random.default_rng(config["seed"] + 1000 * r)
                    starts = [pool[int(k)] for k in rng.choice(len(pool), size=config["sampling"]["starts"],
                                                               replace=len(pool) < config["sampling"]["starts"])]
                    candidates, report = sample_candidates(previous, starts, config["sampling"],
                                                           config["seed"] + r)
                    _write_json(folder / "sampling.json", report)
                    _write_frames(candidates_file, candidates)
                candidates = ase.io.read(candidates_file, ":")
                features = (mean_features(previous, candidates)
                            if config["selection"] == "uncertainty" and candidates else None)
                chosen = select_frames(candidates, config["per_round"], config["selection"],
                                       config["pool_factor"], config["seed"] + r, features)
                selected = [candidates[int(k)] for k in chosen]
                _write_frames(folder / "selected.xyz", selected)
                labelled, failures = label_frames(selected, labeller)
                _write_json(folder / "failures.json", failures)
                _write_frames(labelled_file, labelled)
            labelled = ase.io.read(labelled_file, ":") if labelled_file.stat().st_size else []
            failures = json.loads((folder / "failures.json").read_text())
            if not train_file.exists():
                _write_frames(train_file, ase.io.read(prior, ":") + labelled)
            record.update(added=len(labelled), failures=len(failures),
                          sampling=json.loads((folder / "sampling.json").read_text())
                          if (folder / "sampling.json").exists() else None)
        record["labels"] = len(ase.io.read(train_file, ":"))
        print(f"mlip learn: round {r}: {record['labels']} labelled frames"
              + (f" (+{record['added']}, {record.get('failures', 0)} labeller failure(s))" if r else "")
              + ", training", flush=True)
        model = _train_round(config, r, train_file, previous if config["finetune"] else None)
        metrics_file = folder / "metrics.json"
        if not metrics_file.exists():
            _write_json(metrics_file, _evaluate(model, config["test"]))
        record["test"] = json.loads(metrics_file.read_text())
        record["model"] = str(model)
        record["seconds"] = time.time() - t0
        rounds.append(record)
        for t in record["test"]:
            u = t.get("uncertainty", {})
            print(f"mlip learn: round {r}: {Path(t['file']).name}: F MAE {t.get('f_mae', float('nan')):.2f} meV/Å, "
                  f"E MAE {t.get('e_mae', float('nan')):.2f} meV, uncertainty Spearman (per structure F) "
                  f"{u.get('spearman_forces_structure', float('nan')):.2f}", flush=True)
        previous = model
    summary = {"run_dir": str(run_dir), "selection": config["selection"], "rounds": rounds}
    _write_json(run_dir / "summary.json", summary)
    print(format_rounds(rounds))
    return summary


def format_rounds(rounds: list[dict[str, Any]]) -> str:
    """The loop's summary table: labels and the first test file's errors per round."""
    lines = [f"{'round':>5}{'labels':>8}{'failed':>8}{'F MAE':>10}{'E MAE':>10}{'rho F':>8}"]
    for r in rounds:
        t = r["test"][0] if r["test"] else {}
        u = t.get("uncertainty", {})
        lines.append(f"{r['round']:>5}{r['labels']:>8}{r.get('failures', 0):>8}"
                     f"{t.get('f_mae', float('nan')):>10.2f}{t.get('e_mae', float('nan')):>10.2f}"
                     f"{u.get('spearman_forces_structure', float('nan')):>8.2f}")
    lines.append("F MAE meV/Å, E MAE meV on the first test file; rho F: Spearman of predicted and actual "
                 "per-structure force error")
    return "\n".join(lines)
