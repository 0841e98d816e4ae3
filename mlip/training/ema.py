"""Exponential moving average of model parameters (used for validation and export)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn


class ExponentialMovingAverage:
    """Shadow copy of the trainable parameters, p_ema <- d p_ema + (1 - d) p.

    The decay ramps up as min(decay, (1 + n) / (10 + n)) over the first updates so early,
    random weights are forgotten quickly.

    Args:
        module: the model whose parameters are tracked.
        decay: asymptotic decay (e.g. 0.99).
    """

    def __init__(self, module: nn.Module, decay: float) -> None:
        self.decay = float(decay)
        self.num_updates = 0
        self.shadow = {
            name: p.detach().clone() for name, p in module.named_parameters() if p.requires_grad
        }

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        self.num_updates += 1
        d = min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))
        for name, p in module.named_parameters():
            if name in self.shadow:
                shadow = self.shadow[name]
                if shadow.device != p.device or shadow.dtype != p.dtype:
                    shadow = self.shadow[name] = shadow.to(device=p.device, dtype=p.dtype)
                shadow.lerp_(p.detach(), 1.0 - d)

    @contextlib.contextmanager
    def swapped_in(self, module: nn.Module) -> Iterator[None]:
        """Temporarily load the averaged weights into ``module``."""
        backup = {}
        with torch.no_grad():
            for name, p in module.named_parameters():
                if name in self.shadow:
                    backup[name] = p.detach().clone()
                    p.copy_(self.shadow[name])
        try:
            yield
        finally:
            with torch.no_grad():
                for name, p in module.named_parameters():
                    if name in backup:
                        p.copy_(backup[name])

    def state_dict(self) -> dict:
        return {"decay": self.decay, "num_updates": self.num_updates, "shadow": dict(self.shadow)}

    def load_state_dict(self, state: dict) -> None:
        self.decay = float(state["decay"])
        self.num_updates = int(state["num_updates"])
        self.shadow = {k: v.clone() for k, v in state["shadow"].items()}
