"""LightningModule: a Potential, its loss, metrics, EMA and optimiser."""

from __future__ import annotations

import math
import time
from typing import Any

from mlip.training.lightning_import import L  # isort: split

import torch
from torch import nn

from mlip.data import keys
from mlip.model.build import ModelStatistics, build_model
from mlip.model.potential import Potential
from mlip.ops.rotations import random_rotations
from mlip.training.callbacks import RestartablePlateau
from mlip.training.config import max_time_seconds
from mlip.training.ema import ExponentialMovingAverage
from mlip.training.finetune import freeze
from mlip.training.metrics import metric_sums, stage_weights, summarize, weighted_loss
from mlip.training.schema import OPTIMIZERS
from mlip.training.symmetry import EquivarianceTerm, rotate_batch


class PotentialModule(L.LightningModule):
    """Training wrapper around :class:`~mlip.model.potential.Potential`: the loss (weighted
    energy/forces/stress plus the loss terms the backbone and config call for), metrics,
    EMA and the optimiser. Stage two and checkpoint selection are callbacks
    (:mod:`mlip.training.callbacks`).

    Args:
        config: the resolved run config (see :mod:`mlip.training.config`).
        data_info: dataset-derived constants: the model statistics
            (:class:`~mlip.model.build.ModelStatistics`: atomic_numbers, e0s, scale, shift,
            cutoff, avg_num_neighbors, closest_pairs), has_stress, batch_normalisers.
    """

    def __init__(self, config: dict[str, Any], data_info: dict[str, Any]) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.config = config
        self.data_info = data_info
        self.model: Potential = build_model(config["model"], ModelStatistics.from_dict(data_info))
        tc = config["training"]
        self.frozen = freeze(self.model, tc.get("freeze") or [])
        self.ema: ExponentialMovingAverage | None = None
        self.reset_ema()
        self.compute_stress = bool(data_info.get("has_stress")) and tc["loss"]["stress_weight"] > 0
        # Extra loss terms, each created because the backbone declares what it acts on and
        # the config enables it; trained with the model, never exported.
        dtype = getattr(torch, config["model"]["dtype"])
        terms = [EquivarianceTerm.create(self.model.backbone.outputs, tc["symmetry"]["equivariance"])]
        self.loss_terms = nn.ModuleDict({t.name: t.to(dtype) for t in terms if t is not None})
        self._sums: dict[str, torch.Tensor] = {}
        self.last_metrics: dict[str, dict[str, float]] = {}  # reduced over ranks
        self.stage_two = False  # set by mlip.training.callbacks.StageTwo
        self._fit_start: float | None = None

    def reset_ema(self) -> None:
        """Start the moving average afresh from the current weights (after loading a model
        to fine-tune: the average must not remember the throw-away initial weights)."""
        decay = self.config["training"]["ema"]["decay"]
        self.ema = ExponentialMovingAverage(self.model, decay) if decay else None

    # -- budget and loss weights ---------------------------------------------------------------
    def budget_fraction(self) -> float:
        """How much of the training budget is used: epochs / max_epochs, or elapsed /
        max_time when a wall-time budget is set and binds first."""
        sc = self.config["training"]["schedule"]
        frac = self.current_epoch / max(1, sc["max_epochs"])
        budget = max_time_seconds(sc["max_time"])
        if budget and self._fit_start is not None:
            frac = max(frac, (time.time() - self._fit_start) / max(budget, 1.0))
        return frac

    def _cosine_factor(self, epoch: int) -> float:
        """Cosine annealing to zero over the budget: over max_epochs, or over max_time when a
        wall-time budget binds first (then a slower machine still ends at a small lr)."""
        sc = self.config["training"]["schedule"]
        frac = epoch / max(1, sc["max_epochs"])
        if sc["max_time"] and self._fit_start is not None and epoch > 0:
            frac = max(frac, self.budget_fraction())
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, frac)))

    def loss_weights(self, stage_two: bool) -> tuple[float, float, float]:
        tc = self.config["training"]
        stress = tc["loss"]["stress_weight"]
        if stage_two:
            return tc["stage_two"]["energy_weight"], tc["stage_two"]["forces_weight"], stress
        return tc["loss"]["energy_weight"], tc["loss"]["forces_weight"], stress

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
        symmetry = self.config["training"]["symmetry"]
        num_graphs = int(data[keys.NUM_ATOMS].shape[0])
        if symmetry["augment_rotations"]:
            data = rotate_batch(data, self._rotations(num_graphs))
        pred = self(data, training=True)
        losses = weighted_loss(pred, stage_weights(data, self.stage_two), *self.loss_weights(self.stage_two),
                               normalisers=self.data_info.get("batch_normalisers"))
        for stream, (name, term) in enumerate(self.loss_terms.items(), start=1):
            rotations = self._rotations(num_graphs, term.settings["max_angle"], stream=stream)
            value, weight = term(self.model, data, pred, rotations, self.budget_fraction())
            losses["loss"] = losses["loss"] + weight * value
            self.log(f"train/{name}_loss", value, batch_size=num_graphs)
            self.log(f"train/{name}_weight", weight, batch_size=num_graphs)
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
        # loss stage two trains (selection restarts when it begins, callbacks.StagedBest)
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
        optim, sc = tc["optim"], tc["schedule"]
        cls = OPTIMIZERS[optim["optimizer"]]
        params = [p for p in list(self.model.parameters()) + list(self.loss_terms.parameters())
                  if p.requires_grad]  # not the frozen groups (training.freeze)
        opt = cls(params, lr=optim["lr"], weight_decay=optim["weight_decay"], amsgrad=optim["amsgrad"])
        if sc["scheduler"] == "plateau":
            sched = RestartablePlateau(opt, factor=sc["plateau_factor"], patience=sc["plateau_patience"])
            return {"optimizer": opt,
                    "lr_scheduler": {"scheduler": sched, "monitor": "val/loss", "interval": "epoch"}}
        if sc["scheduler"] == "cosine":
            sched = torch.optim.lr_scheduler.LambdaLR(opt, self._cosine_factor)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}
        return opt

    # -- input ---------------------------------------------------------------------------------
    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> dict[str, torch.Tensor]:
        """A PyTorch Geometric ``Batch`` (e.g. from :mod:`mlip.integrations.pyg`) becomes the
        batch dict every step takes (:func:`mlip.graph.build.as_batch_dict`); a dict passes."""
        from mlip.graph.build import as_batch_dict

        return as_batch_dict(batch)
