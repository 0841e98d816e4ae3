"""The run config's sections: typed dataclasses with defaults, and one validator for all.

Every section (``data``, ``model``, ``training`` and the sections inside ``training``) is a
dataclass below; each field carries its default and a :class:`Check` that says what it
accepts. :func:`resolve_section` turns a user mapping into the full plain-data section
(defaults filled in), or raises a one-line ``ValueError`` naming the full key, the value and
what is allowed, e.g. ``training.optim.lr: expected a positive number, got 'abc'``.

The resolved config stays plain data (dicts, lists, numbers, strings), so it is written to
the run's config.yaml and into Lightning checkpoints as is.

Layout (``mlip train`` overrides use the same dotted keys)::

    run_name, seed, output_dir
    data:      train, val, val_fraction, val_size, max_train, split_seed, test, e0s, cutoff, batch_size,
               max_atoms_per_batch, val_batch_size, num_workers, energy_key, forces_key,
               stress_key, allow_missing_labels, extra [{file, weight}]
    model:     dtype, backbone {class_path, init_args}, repulsion {inner, outer, reference}
               (or null), baseline, learn_shift
    training:
      optim:     optimizer, lr, weight_decay, amsgrad, gradient_clip
      loss:      energy_weight, forces_weight, stress_weight
      schedule:  max_epochs, max_time, scheduler, plateau_factor, plateau_patience,
                 early_stopping_patience
      stage_two: start, energy_weight, forces_weight, lr
      symmetry:  augment_rotations, equivariance {weight, max_angle, objective, transform,
                 temperature, schedule, warmup, final}
      ema:       decay
      trainer:   accelerator, devices, num_nodes, strategy, threads, log_every_n_steps,
                 check_val_every_n_epoch, enable_progress_bar
      freeze, final_e0_refit, uncertainty, committee
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from mlip.model.potential import BASELINES
from mlip.training.symmetry import OBJECTIVES, SCHEDULES, TRANSFORMS

# training.optim.optimizer -> class; training.schedule.scheduler names (the module's
# configure_optimizers builds them)
OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}
SCHEDULERS = ("plateau", "cosine", "none")


@dataclass(frozen=True)
class Check:
    """What a field accepts: ``accepts(value)`` and the phrase for the error message."""

    expected: str
    accepts: Callable[[Any], bool]
    normalise: Callable[[Any], Any] = lambda value: value

    def __or__(self, other: Check) -> Check:
        def normalise(value: Any) -> Any:
            return self.normalise(value) if self.accepts(value) else other.normalise(value)

        return Check(f"{self.expected} or {other.expected}",
                     lambda v: self.accepts(v) or other.accepts(v), normalise)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


NONE = Check("null", lambda v: v is None)
BOOL = Check("true or false", lambda v: isinstance(v, bool))
TEXT = Check("a string", lambda v: isinstance(v, str))
NUMBER = Check("a number", _is_number)
POSITIVE = Check("a positive number", lambda v: _is_number(v) and v > 0)
NON_NEGATIVE = Check("a number >= 0", lambda v: _is_number(v) and v >= 0)
FRACTION = Check("a number in (0, 1)", lambda v: _is_number(v) and 0 < v < 1)
UNIT = Check("a number in [0, 1]", lambda v: _is_number(v) and 0 <= v <= 1)
ANGLE = Check("an angle in (0, 180] degrees", lambda v: _is_number(v) and 0 < v <= 180)
COUNT = Check("a positive integer", lambda v: _is_int(v) and v > 0)
NON_NEGATIVE_INT = Check("an integer >= 0", lambda v: _is_int(v) and v >= 0)
MAPPING = Check("a mapping", lambda v: isinstance(v, dict))
_DHMS = re.compile(r"^\d+:\d{1,2}:\d{1,2}:\d{1,2}$")
DURATION = Check('a "DD:HH:MM:SS" string', lambda v: isinstance(v, str) and bool(_DHMS.match(v)))
FILES = Check("a path or a list of paths",
              lambda v: isinstance(v, str) or (isinstance(v, list) and all(isinstance(p, str) for p in v)),
              lambda v: [v] if isinstance(v, str) else list(v))


def _is_extra(value: Any) -> bool:
    entries = value if isinstance(value, list) else [value]
    return all(
        (isinstance(e, str) or (isinstance(e, dict) and isinstance(e.get("file"), str)
                                and set(e) <= {"file", "weight", "stage_two_weight", "forces_weight"}
                                and all(_is_number(w) and w >= 0 for w in
                                        (e.get("weight", 1.0), e.get("stage_two_weight", 0.0),
                                         e.get("forces_weight", 1.0)))))
        for e in entries)


def _normalise_extra(value: Any) -> list[dict]:
    entries = [{"file": e} if isinstance(e, str) else e
               for e in (value if isinstance(value, list) else [value])]
    return [{"file": e["file"], "weight": float(e.get("weight", 1.0)),
             "stage_two_weight": float(e.get("stage_two_weight", EXTRA_STAGE_TWO_WEIGHT)),
             "forces_weight": float(e.get("forces_weight", 1.0))}
            for e in entries]


# An extra file's weight in stage two, unless its entry names one (see data.extra).
EXTRA_STAGE_TWO_WEIGHT = 0.0
EXTRA = Check("a list of {file: PATH, weight: number >= 0, stage_two_weight: number >= 0, "
              "forces_weight: number >= 0} (or paths)", _is_extra, _normalise_extra)
NAMES = Check("a list of names", lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v))
STAGE_START = Check("an epoch >= 1 or a budget fraction in (0, 1)",
                    lambda v: (_is_int(v) and v >= 1) or (_is_number(v) and 0 < v < 1))
DEVICES = Check('a positive integer, a list of device indices or "auto"',
                lambda v: (_is_int(v) and v > 0) or v == "auto" or (
                    isinstance(v, list) and all(_is_int(i) for i in v)))


def choice(*names: str) -> Check:
    return Check("one of " + ", ".join(names), lambda v: isinstance(v, str) and v in names)


def option(default: Any, check: Check) -> Any:
    """A field with its default and check (mutable defaults are copied per instance)."""
    if isinstance(default, list | dict):
        return field(default_factory=lambda: type(default)(default), metadata={"check": check})
    return field(default=default, metadata={"check": check})


def section(cls: type, nullable: bool = False) -> Any:
    """A nested section; ``nullable``: the user may write null to switch it off."""
    return field(default_factory=cls, metadata={"section": cls, "nullable": nullable})


# -- data and model ---------------------------------------------------------------------------
@dataclass
class ReplayConfig:
    """Frames of the pretraining data mixed into fine-tuning (mlip.training.replay); on
    when ``file`` names any. Give ``count`` or ``fraction``."""

    file: list = option([], FILES)
    count: int | None = option(None, COUNT | NONE)
    fraction: float | None = option(None, Check("a number in (0, 1]", lambda v: _is_number(v) and 0 < v <= 1) | NONE)
    select: str = option("random", choice("random", "fps"))  # fps: farthest points of descriptors
    weight: float = option(1.0, NON_NEGATIVE)  # loss weight per replayed structure
    pseudolabels: bool = option(False, BOOL)  # label them with the starting model
    # their own readout head and E0s (the pretraining level), beside the data's "default"
    # head: a multi-head model (mlip export head picks one); null: the data's head
    head: str | None = option(None, TEXT | NONE)


@dataclass
class DataConfig:
    train: list | None = option(None, FILES | NONE)  # extxyz/ASE file(s) or .lmdb
    val: list | None = option(None, FILES | NONE)  # else a seeded split of train
    val_fraction: float = option(0.1, FRACTION)
    val_size: int | None = option(None, COUNT | NONE)  # absolute number (wins over fraction)
    max_train: int | None = option(None, COUNT | NONE)  # cap the training split
    # seed of the train/val split; null: the run's seed (committee members share one split)
    split_seed: int | None = option(None, Check("an integer or null", lambda v: v is None or _is_int(v)))
    test: list = option([], FILES)  # held-out files evaluated at the end of training
    # "least_squares", an isolated-atoms file, or with model.init_from "foundation" (the
    # file's) or "refit" (the file's plus a least-squares fit of the new data's residuals)
    e0s: str = option("least_squares", TEXT)
    cutoff: float = option(5.0, POSITIVE)
    batch_size: int = option(5, COUNT)
    max_atoms_per_batch: int | None = option(None, COUNT | NONE)  # replaces batch_size
    val_batch_size: int = option(20, COUNT)
    num_workers: int = option(0, NON_NEGATIVE_INT)
    energy_key: str | None = option(None, TEXT | NONE)
    forces_key: str | None = option(None, TEXT | NONE)
    stress_key: str | None = option(None, TEXT | NONE)
    allow_missing_labels: bool = option(False, BOOL)  # frames may lack labels frame 0 has
    # Extra training frames, never in validation or the statistics, each file with its loss
    # weight: e.g. dissociation frames from `mlip data dissociation`.
    extra: list = option([], EXTRA)
    # Fine-tuning (model.init_from): frames of the pretraining data replayed every epoch.
    replay: ReplayConfig = section(ReplayConfig)


@dataclass
class BackboneConfig:
    """A resolved backbone: its class and typed constructor arguments (configs/backbone/)."""

    class_path: str = option("mlip.backbones.equivariant.EquivariantBackbone", TEXT)
    init_args: dict = option({}, MAPPING)


@dataclass
class RepulsionConfig:
    """ZBL nuclear repulsion core (mlip.model.repulsion): pure ZBL and no learned pair below
    inner x d_ref, the learned part alone above outer x d_ref, where d_ref is each element
    pair's shortest distance in the training split (data) or its covalent-radius sum."""

    inner: float = option(0.5, NON_NEGATIVE)
    outer: float = option(0.85, POSITIVE)
    reference: str = option("data", choice("data", "covalent"))


@dataclass
class ModelConfig:
    dtype: str = option("float32", choice("float32", "float64"))
    backbone: BackboneConfig = section(BackboneConfig)
    repulsion: RepulsionConfig | None = section(RepulsionConfig, nullable=True)
    # Whether and how a per-element mean interaction energy enters (mlip.model.potential):
    # none (default; the backbone learns all of it), constant, per_element, coordination.
    baseline: str = option("none", choice(*BASELINES))
    # Train a per-element correction to that constant (forces and stress unaffected);
    # null: on for every baseline with a shift, off for none.
    learn_shift: bool | None = option(None, BOOL | NONE)
    # Start from a trained model file: its architecture and weights (mlip.training.finetune);
    # choose the energy reference with data.e0s (foundation, refit or an isolated-atoms file).
    init_from: str | None = option(None, TEXT | NONE)
    # readout heads: set from data.replay.head (["default", that head]), not by hand
    heads: list | None = option(None, NAMES | NONE)


# -- training ---------------------------------------------------------------------------------
@dataclass
class OptimConfig:
    optimizer: str = option("adam", choice(*OPTIMIZERS))
    lr: float = option(0.01, POSITIVE)
    weight_decay: float = option(0.0, NON_NEGATIVE)
    amsgrad: bool = option(True, BOOL)
    gradient_clip: float | None = option(10.0, POSITIVE | NONE)


@dataclass
class LossConfig:
    energy_weight: float = option(1.0, NON_NEGATIVE)
    forces_weight: float = option(100.0, NON_NEGATIVE)
    # Stress MSE in (eV/Å^3)^2 against per-atom energy MSE in eV^2: a strain error costs
    # sigma * V_atom per atom, V_atom^2 ~ 100-150 Å^6 for metals, so 100 weighs stress like
    # energy. Cu in 15 CPU-min (docs/history.md, The stress weight): 3000 gave a bulk modulus
    # 9.6-10.0 % soft, 5000 7.4-8.6 % (seeds 0, 1) at the same force MAE, 10000 6 % but a
    # force MAE 15 % worse. Molecules have no stress: they are unaffected.
    stress_weight: float = option(5000.0, NON_NEGATIVE)


@dataclass
class ScheduleConfig:
    max_epochs: int = option(100, COUNT)
    max_time: str | None = option(None, DURATION | NONE)  # whichever binds first
    scheduler: str = option("plateau", choice(*SCHEDULERS))
    plateau_factor: float = option(0.8, FRACTION)
    plateau_patience: int = option(50, NON_NEGATIVE_INT)
    early_stopping_patience: int | None = option(None, COUNT | NONE)  # epochs without improvement


@dataclass
class StageTwoConfig:
    """Second stage (MACE's SWA stage): other loss weights (and lr) for the last epochs."""

    start: float | None = option(None, STAGE_START | NONE)  # epoch, or fraction of the budget
    energy_weight: float = option(1000.0, NON_NEGATIVE)
    forces_weight: float = option(100.0, NON_NEGATIVE)
    lr: float | None = option(None, POSITIVE | NONE)  # null: keep the current rate


@dataclass
class EquivarianceConfig:
    """The learned-equivariance objective (mlip.training.symmetry), for backbones that
    declare an equivariant embedding (BackboneOutputs.embedding_lmax)."""

    weight: float = option(0.0, NON_NEGATIVE)  # > 0 enables
    max_angle: float = option(180.0, ANGLE)  # Haar-uniform at 180, else angle <= this [deg]
    objective: str = option("regression", choice(*OBJECTIVES))
    transform: str = option("wigner", choice(*TRANSFORMS))
    temperature: float = option(0.1, POSITIVE)  # InfoNCE temperature (contrastive)
    schedule: str = option("constant", choice(*SCHEDULES))  # of the weight over the budget
    warmup: float = option(0.1, UNIT)  # fraction of the budget to ramp the weight up
    final: float = option(0.1, NON_NEGATIVE)  # warmup_decay: end weight / weight


@dataclass
class SymmetryConfig:
    """Symmetry without equivariant layers (TransIP and friends)."""

    augment_rotations: bool = option(False, BOOL)  # rotate every training batch randomly
    equivariance: EquivarianceConfig = section(EquivarianceConfig)


@dataclass
class EmaConfig:
    decay: float = option(0.99, Check("a number in [0, 1)", lambda v: _is_number(v) and 0 <= v < 1))


@dataclass
class TrainerConfig:
    """Lightning Trainer settings."""

    accelerator: str = option("auto", TEXT)
    devices: Any = option(1, DEVICES)
    num_nodes: int = option(1, COUNT)
    strategy: str = option("auto", TEXT)
    threads: int | None = option(None, COUNT | NONE)  # torch intra-op threads on CPU
    log_every_n_steps: int = option(10, COUNT)
    check_val_every_n_epoch: int = option(1, COUNT)
    enable_progress_bar: bool = option(True, BOOL)


@dataclass
class TrainingConfig:
    optim: OptimConfig = section(OptimConfig)
    loss: LossConfig = section(LossConfig)
    schedule: ScheduleConfig = section(ScheduleConfig)
    stage_two: StageTwoConfig = section(StageTwoConfig)
    symmetry: SymmetryConfig = section(SymmetryConfig)
    ema: EmaConfig = section(EmaConfig)
    trainer: TrainerConfig = section(TrainerConfig)
    # backbone parameter groups kept fixed (fine-tuning): embedding, layers.0, readouts, ...
    freeze: list = option([], NAMES)
    # after training, move the E0s by the least-squares fit of the training split's energy
    # residuals over element counts (the network leaves a constant offset that stage two's
    # few epochs do not remove; the model file's E0s, and so its lone atoms, say so)
    final_e0_refit: bool = option(True, BOOL)
    # the model's own uncertainty, fitted after training (mlip.model.uncertainty): "llpr"
    # (last-layer prediction rigidity, calibrated on the validation split) or "none"
    uncertainty: str = option("llpr", choice("llpr", "none"))
    # K > 1: train K models (seeds seed .. seed + K - 1, one split) and write a calibrated
    # committee file beside them (mlip train --committee K)
    committee: int = option(1, COUNT)


@dataclass
class RunConfig:
    run_name: str = option("run", TEXT)
    seed: int = option(0, Check("an integer", _is_int))
    output_dir: str = option("checkpoints", TEXT)
    data: DataConfig = section(DataConfig)
    model: ModelConfig = section(ModelConfig)
    training: TrainingConfig = section(TrainingConfig)


def _describe(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def resolve_section(cls: type, value: Any, where: str = "") -> dict[str, Any]:
    """Validate a user mapping against section ``cls`` and fill in its defaults.

    Args:
        cls: a section dataclass (e.g. :class:`RunConfig`, :class:`OptimConfig`).
        value: the user's mapping (keys may be missing: defaults fill them).
        where: the section's dotted name for messages ("" for the top level).

    Returns:
        The full section as plain data (nested sections as dicts, a nullable one as None).

    Raises:
        ValueError: one line: the full key, the value and what is allowed.
    """
    label = where or "the config"
    if not isinstance(value, dict):
        raise ValueError(f"{label}: expected a mapping, got {_describe(value)}")
    names = [f.name for f in dataclasses.fields(cls)]
    for key in value:
        if key not in names:
            raise ValueError(f"{where + '.' if where else ''}{key}: unknown key; {label} takes "
                             f"{', '.join(names)}")
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        key = f"{where}.{f.name}" if where else f.name
        sub = f.metadata.get("section")
        if sub is not None:
            given = value.get(f.name, {})
            if given is None and f.metadata.get("nullable"):
                out[f.name] = None
            else:
                out[f.name] = resolve_section(sub, {} if given is None else given, key)
            continue
        if f.name not in value:
            out[f.name] = f.default_factory() if f.default is dataclasses.MISSING else f.default
            continue
        check: Check = f.metadata["check"]
        given = value[f.name]
        if not check.accepts(given):
            raise ValueError(f"{key}: expected {check.expected}, got {_describe(given)}")
        out[f.name] = check.normalise(given)
    return out


def section_keys(cls: type, where: str = "") -> dict[str, type | None]:
    """Every dotted key below ``cls``: key -> its section class (None for a plain value)."""
    out: dict[str, type | None] = {}
    for f in dataclasses.fields(cls):
        key = f"{where}.{f.name}" if where else f.name
        sub = f.metadata.get("section")
        out[key] = sub
        if sub is not None:
            out.update(section_keys(sub, key))
    return out
