"""LightningModule: a Potential, its loss, metrics, EMA and optimiser."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch

from mlip.data import keys
from mlip.model.build import build_potential
from mlip.model.potential import Potential
from mlip.ops.rotations import random_rotations
from mlip.training.config import max_time_seconds
from mlip.training.ema import ExponentialMovingAverage
from mlip.training.metrics import metric_sums, summarize, weighted_loss
from mlip.training.symmetry import (
    OBJECTIVES,
    RotationTransform,
    contrastive_equivariance_loss,
    equivariance_loss,
    equivariance_weight,
    rotate_batch,
)


class PotentialModule(L.LightningModule):
    """Training wrapper around :class:`~mlip.model.potential.Potential`.

    Args:
        config: the resolved run config (see :mod:`mlip.training.config`).
        data_info: dataset-derived constants: atomic_numbers, e0s, scale, shift, cutoff,
            avg_num_neighbors, has_stress.
    """

    def __init__(self, config: dict[str, Any], data_info: dict[str, Any]) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.config = config
        self.data_info = data_info
        dtype = getattr(torch, config["model"]["dtype"])
        self.model: Potential = build_potential(
            config["model"],
            data_info["atomic_numbers"],
            data_info["e0s"],
            data_info["scale"],
            data_info["shift"],
            data_info["cutoff"],
            data_info["avg_num_neighbors"],
        )
        rep = self.model.repulsion
        if rep is not None and rep.reference == "data":
            pairs = {tuple(int(z) for z in k.split("-")): d
                     for k, d in data_info.get("closest_pairs", {}).items()}
            rep.set_reference(pairs, data_info["cutoff"])
        self.model = self.model.to(dtype)
        tc = config["training"]
        self.ema = ExponentialMovingAverage(self.model, tc["ema_decay"]) if tc["ema_decay"] else None
        self.compute_stress = bool(data_info.get("has_stress")) and tc["stress_weight"] > 0
        # T(R) of the learned-equivariance objective: trained with the model, not exported.
        self.rotation_transform: RotationTransform | None = None
        if tc["equivariance_weight"] > 0:
            lmax = self.model.backbone.outputs.embedding_lmax
            if lmax is None:
                raise ValueError("training.equivariance_weight > 0 needs a backbone that declares "
                                 "an equivariant embedding (outputs.embedding_lmax, e.g. TransIPBackbone)")
            if tc["equivariance_objective"] not in OBJECTIVES:
                raise ValueError(f"training.equivariance_objective must be one of {OBJECTIVES}, "
                                 f"got {tc['equivariance_objective']!r}")
            equivariance_weight(1.0, tc["equivariance_schedule"], 0.0)  # validates the name
            channels = int(self.model.backbone.embedding_channels)
            self.rotation_transform = RotationTransform(channels, lmax, tc["equivariance_transform"]).to(dtype)
        self._sums: dict[str, torch.Tensor] = {}
        self.last_metrics: dict[str, dict[str, float]] = {}  # reduced over ranks
        self.stage_two = False
        self._fit_start: float | None = None

    # -- loss weights (two stages) ----------------------------------------------------
    def budget_fraction(self) -> float:
        """How much of the training budget is used: epochs / max_epochs, or elapsed /
        max_time when a wall-time budget is set and binds first."""
        tc = self.config["training"]
        frac = self.current_epoch / max(1, tc["max_epochs"])
        budget = max_time_seconds(tc["max_time"])
        if budget and self._fit_start is not None:
            frac = max(frac, (time.time() - self._fit_start) / max(budget, 1.0))
        return frac

    def _cosine_factor(self, epoch: int) -> float:
        """Cosine annealing to zero over the budget: over max_epochs, or over max_time when a
        wall-time budget binds first (then a slower machine still ends at a small lr)."""
        tc = self.config["training"]
        frac = epoch / max(1, tc["max_epochs"])
        if tc["max_time"] and self._fit_start is not None and epoch > 0:
            frac = max(frac, self.budget_fraction())
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, frac)))

    def update_stage(self) -> None:
        """Enter stage two (latched) once the configured start is reached: an epoch
        number (>= 1) or a fraction of the budget (< 1)."""
        start = self.config["training"]["stage_two_start"]
        if self.stage_two or start is None:
            return
        if (start < 1 and self.budget_fraction() >= start) or (start >= 1 and self.current_epoch >= start):
            self.stage_two = True
            lr = self.config["training"]["stage_two_lr"]
            if lr:
                for opt in self.trainer.optimizers:
                    for group in opt.param_groups:
                        group["lr"] = lr
            self._restart_selection()

    def _restart_selection(self) -> None:
        """From stage two on, val/loss uses the stage-two weights, so everything that ranks
        epochs by it starts afresh: the best checkpoint (else a stage-one epoch, scored with
        other weights, stays "best" and becomes the exported model), early stopping and the
        plateau scheduler."""
        trainer = self.trainer
        for cb in trainer.checkpoint_callbacks:
            if getattr(cb, "monitor", None) != "val/loss":
                continue
            old = cb.best_model_path
            cb.best_k_models = {}
            cb.best_model_path = cb.kth_best_model_path = ""
            cb.best_model_score = None
            cb.kth_value = torch.tensor(float("inf") if cb.mode == "min" else -float("inf"))
            if old and trainer.is_global_zero:
                Path(old).unlink(missing_ok=True)
        for cb in trainer.early_stopping_callbacks:
            cb.wait_count = 0
            cb.best_score = torch.tensor(float("inf") if cb.mode == "min" else -float("inf"))
        for config in trainer.lr_scheduler_configs:
            sched = config.scheduler
            if isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau):
                sched.best = sched.mode_worse
                sched.num_bad_epochs = 0

    def loss_weights(self, stage_two: bool) -> tuple[float, float, float]:
        tc = self.config["training"]
        if stage_two:
            return tc["stage_two_energy_weight"], tc["stage_two_forces_weight"], tc["stress_weight"]
        return tc["energy_weight"], tc["forces_weight"], tc["stress_weight"]

    # -- steps -----------------------------------------------------------------------------
    def forward(self, data: dict[str, torch.Tensor], training: bool = False) -> dict[str, torch.Tensor]:
        return self.model(
            data, compute_forces=True, compute_stress=self.compute_stress, training=training
        )

    def _accumulate(self, split: str, pred: dict, data: dict) -> torch.Tensor:
        sums = metric_sums(pred, data)
        self._sums[split] = self._sums.get(split, torch.zeros_like(sums)) + sums
        return sums

    def _rotations(self, num: int, max_angle_deg: float = 180.0, stream: int = 0) -> torch.Tensor:
        """Random rotations that depend only on (seed, step, stream): resumes stay exact;
        augmentation (stream 0) and the objective (stream 1) draw independently."""
        seed = (self.config["seed"] * 1_000_003 + self.global_step) * 2 + stream
        g = torch.Generator().manual_seed(seed)
        return random_rotations(num, g, device=self.device, max_angle_deg=max_angle_deg)

    def training_step(self, data: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        tc = self.config["training"]
        num_graphs = int(data[keys.NUM_ATOMS].shape[0])
        if tc["augment_rotations"]:
            data = rotate_batch(data, self._rotations(num_graphs))
        pred = self(data, training=True)
        losses = weighted_loss(pred, data, *self.loss_weights(self.stage_two),
                               normalisers=self.data_info.get("batch_normalisers"))
        if self.rotation_transform is not None:
            lmax = self.model.backbone.outputs.embedding_lmax
            rotations = self._rotations(num_graphs, tc["equivariance_max_angle"], stream=1)
            rotated = self.model(rotate_batch(data, rotations), compute_forces=False)
            z = pred[keys.EQUIVARIANT_EMBEDDING]
            if tc["equivariance_objective"] == "contrastive":
                eq = contrastive_equivariance_loss(z, rotated[keys.EQUIVARIANT_EMBEDDING], rotations,
                                                   data[keys.BATCH], lmax, self.rotation_transform,
                                                   tc["equivariance_temperature"])
            else:
                eq = equivariance_loss(z, rotated[keys.EQUIVARIANT_EMBEDDING], rotations,
                                       data[keys.BATCH], lmax, self.rotation_transform)
            weight = equivariance_weight(tc["equivariance_weight"], tc["equivariance_schedule"],
                                         self.budget_fraction(), tc["equivariance_warmup"],
                                         tc["equivariance_final"])
            losses["loss"] = losses["loss"] + weight * eq
            self.log("train/equivariance_loss", eq, batch_size=num_graphs)
            self.log("train/equivariance_weight", weight, batch_size=num_graphs)
        sums = self._accumulate("train", pred, data)
        bs = int(data[keys.NUM_ATOMS].shape[0])
        self.log("train/loss", losses["loss"], prog_bar=True, batch_size=bs)
        f_mae = summarize(sums).get("f_mae")  # label masks respected, as every metric
        if f_mae is not None:
            self.log("f_mae", f_mae, prog_bar=True, logger=False, batch_size=bs)
        return losses["loss"]

    def validation_step(self, data: dict[str, torch.Tensor], batch_idx: int) -> None:
        with torch.enable_grad():
            pred = self(data, training=False)
        # the current stage's weights: the best checkpoint of stage two is chosen by the
        # loss stage two trains (selection restarts when it begins, _restart_selection)
        losses = weighted_loss(pred, data, *self.loss_weights(self.stage_two))
        self._accumulate("val", pred, data)
        self.log("val/loss", losses["loss"], batch_size=int(data[keys.NUM_ATOMS].shape[0]),
                 sync_dist=True, prog_bar=False)

    # -- epoch ends: reduce sums over ranks, log MAE/RMSE ------------------------------------
    def _log_split(self, split: str) -> dict[str, float]:
        sums = self._sums.pop(split, None)
        if sums is None:
            return {}
        if self.trainer.world_size > 1:
            sums = self.all_gather(sums).sum(0)
        metrics = summarize(sums)
        self.last_metrics[split] = {**metrics, "structures": int(sums[4].item())}
        for name, value in metrics.items():
            self.log(f"{split}/{name}", value, prog_bar=(split == "val" and name == "f_mae"),
                     rank_zero_only=True)
        return metrics

    def on_train_start(self) -> None:
        self._fit_start = time.time()

    def on_train_epoch_start(self) -> None:
        self.update_stage()
        self.log("stage", float(self.stage_two), rank_zero_only=True)

    def on_train_epoch_end(self) -> None:
        self._log_split("train")

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        if self.ema is not None:
            self.ema.update(self.model)

    def on_validation_epoch_start(self) -> None:
        if self.ema is not None:
            self._ema_ctx = self.ema.swapped_in(self.model)
            self._ema_ctx.__enter__()

    def on_validation_epoch_end(self) -> None:
        if self.ema is not None and getattr(self, "_ema_ctx", None) is not None:
            self._ema_ctx.__exit__(None, None, None)
            self._ema_ctx = None
        self._log_split("val")

    # -- checkpoint state -----------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["stage_two"] = self.stage_two
        if self.ema is not None:
            checkpoint["ema"] = self.ema.state_dict()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.stage_two = bool(checkpoint.get("stage_two", False))
        if self.ema is not None and "ema" in checkpoint:
            self.ema.load_state_dict(checkpoint["ema"])

    def export_state_dict(self) -> dict[str, torch.Tensor]:
        """Model weights for deployment: EMA weights when EMA is on."""
        if self.ema is None:
            return {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        with self.ema.swapped_in(self.model):
            return {k: v.detach().clone() for k, v in self.model.state_dict().items()}

    # -- optimiser ---------------------------------------------------------------------------
    def configure_optimizers(self):
        tc = self.config["training"]
        cls = torch.optim.AdamW if tc["optimizer"] == "adamw" else torch.optim.Adam
        params = list(self.model.parameters())
        if self.rotation_transform is not None:
            params += list(self.rotation_transform.parameters())
        opt = cls(params, lr=tc["lr"], weight_decay=tc["weight_decay"], amsgrad=tc["amsgrad"])
        if tc["scheduler"] == "plateau":
            sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
                opt, factor=tc["plateau_factor"], patience=tc["plateau_patience"]
            )
            return {"optimizer": opt,
                    "lr_scheduler": {"scheduler": sched, "monitor": "val/loss", "interval": "epoch"}}
        if tc["scheduler"] == "cosine":
            sched = torch.optim.lr_scheduler.LambdaLR(opt, self._cosine_factor)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}
        if tc["scheduler"] not in (None, "none"):
            raise ValueError(f"unknown scheduler {tc['scheduler']!r}: use plateau, cosine or none")
        return opt
