"""Training callbacks: stage two, and checkpoint selection and early stopping that judge
epochs only within the current stage.

From stage two on, val/loss carries the stage-two loss weights, so a stage-one epoch,
scored with other weights, must not stay "best" (it would become the exported model) nor
stop the run. Lightning's ModelCheckpoint and EarlyStopping keep their rankings in private
state; these callbacks keep their own (saved with the checkpoint through the public
``state_dict``), and the plateau scheduler is our subclass with a public :meth:`restart`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from mlip.training.lightning_import import L


class RestartablePlateau(torch.optim.lr_scheduler.ReduceLROnPlateau):
    """ReduceLROnPlateau whose ranking can start afresh (:meth:`restart`)."""

    def restart(self) -> None:
        """Forget the best value, bad epochs and cooldown (a new stage's metric)."""
        self.best = self.mode_worse
        self.num_bad_epochs = 0
        self.cooldown_counter = 0


def _stage(pl_module: L.LightningModule) -> int:
    return int(bool(getattr(pl_module, "stage_two", False)))


class StageTwo(L.Callback):
    """Enter stage two (latched on the module's ``stage_two``) at the start of the first
    epoch where ``start`` is reached: an epoch number (>= 1) or a fraction of the training
    budget (< 1, :meth:`PotentialModule.budget_fraction`). Then the stage-two learning rate
    is set (when given) and every :class:`RestartablePlateau` restarts.

    Args:
        start: ``training.stage_two.start`` (None: never).
        lr: ``training.stage_two.lr`` (None: keep the current rate).
    """

    def __init__(self, start: float | None, lr: float | None) -> None:
        self.start, self.lr = start, lr

    def reached(self, pl_module: L.LightningModule) -> bool:
        if self.start is None:
            return False
        if self.start < 1:
            return pl_module.budget_fraction() >= self.start
        return pl_module.current_epoch >= self.start

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if pl_module.stage_two or not self.reached(pl_module):
            return
        pl_module.stage_two = True
        if self.lr:
            for opt in trainer.optimizers:
                for group in opt.param_groups:
                    group["lr"] = self.lr
        for config in trainer.lr_scheduler_configs:
            if isinstance(config.scheduler, RestartablePlateau):
                config.scheduler.restart()


class _StagedMonitor(L.Callback):
    """The best value of ``monitor`` (lower is better) among the current stage's epochs."""

    def __init__(self, monitor: str) -> None:
        self.monitor = monitor
        self.best = math.inf
        self.stage = 0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # after StageTwo's hook (it comes first in the callback list)
        if _stage(pl_module) != self.stage:
            self.stage, self.best = _stage(pl_module), math.inf
            self.on_new_stage(trainer)

    def _improved(self, trainer: L.Trainer, pl_module: L.LightningModule) -> bool | None:
        """Update for this validation: True if it is the stage's best, None without a value."""
        value = trainer.callback_metrics.get(self.monitor)
        if value is None or trainer.sanity_checking:
            return None
        value = float(value)
        if value < self.best:
            self.best = value
            return True
        return False

    def on_new_stage(self, trainer: L.Trainer) -> None:
        """Called when a new stage begins (its best starts afresh)."""

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "stage": self.stage}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best, self.stage = float(state_dict["best"]), int(state_dict["stage"])


class StagedBest(_StagedMonitor):
    """Keep ``dirpath/best.ckpt``: the checkpoint of the best validation epoch of the
    current stage (removed when a new stage begins).

    Args:
        dirpath: the run's checkpoint folder.
        monitor: the logged metric to minimise.
    """

    def __init__(self, dirpath: str | Path, monitor: str = "val/loss") -> None:
        super().__init__(monitor)
        self.path = Path(dirpath) / "best.ckpt"

    @property
    def best_model_path(self) -> str:
        """The current stage's best checkpoint, or "" before its first validation."""
        return str(self.path) if math.isfinite(self.best) and self.path.is_file() else ""

    def on_new_stage(self, trainer: L.Trainer) -> None:
        if trainer.is_global_zero:  # an earlier stage's best is never exported
            self.path.unlink(missing_ok=True)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._improved(trainer, pl_module):
            trainer.save_checkpoint(self.path)  # every rank calls it; rank zero writes


class StagedEarlyStopping(_StagedMonitor):
    """Stop after ``patience`` validations without a new best of the current stage.

    Args:
        patience: validations without improvement before stopping.
        monitor: the logged metric to minimise.
    """

    def __init__(self, patience: int, monitor: str = "val/loss") -> None:
        super().__init__(monitor)
        self.patience = int(patience)
        self.wait = 0

    def on_new_stage(self, trainer: L.Trainer) -> None:
        self.wait = 0

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        improved = self._improved(trainer, pl_module)
        if improved is None:
            return
        self.wait = 0 if improved else self.wait + 1
        stop = trainer.strategy.reduce_boolean_decision(self.wait >= self.patience, all=False)
        trainer.should_stop = trainer.should_stop or stop

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "wait": self.wait}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.wait = int(state_dict.get("wait", 0))
