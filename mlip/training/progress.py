"""Plain progress lines for training without a progress bar (a log file, a pipe, a batch job).

One line per epoch: epoch, elapsed wall time, train and validation force (and energy) MAE,
learning rate and stage. Within a long epoch a line every ``heartbeat`` seconds says which
batch it is at. Written to stdout and flushed, so ``mlip train ... | tee log`` and
``mlip train ... > log`` show progress as it happens.
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

from mlip.training.lightning_import import L


def format_seconds(seconds: float) -> str:
    """``1:02:03`` or ``2:03``.

    >>> format_seconds(3723.4), format_seconds(59.9)
    ('1:02:03', '0:59')
    """
    s = int(seconds)
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class EpochLines(L.Callback):
    """Print one line per finished epoch (and a heartbeat inside long epochs) on rank 0.

    The line of epoch k is printed when epoch k + 1 starts (the module has reduced epoch k's
    train and validation metrics by then) and at the end of training.

    Args:
        max_epochs: the epoch limit, shown as ``epoch k/max`` when it binds (else ``None``).
        max_time: the wall-time budget [s], shown beside the elapsed time (else ``None``).
        heartbeat: seconds between lines inside an epoch.
        stream: where to write (default: ``sys.stdout`` at the time of writing).
    """

    def __init__(self, max_epochs: int | None = None, max_time: float | None = None,
                 heartbeat: float = 30.0, stream: TextIO | None = None) -> None:
        self.max_epochs = max_epochs
        self.max_time = max_time
        self.heartbeat = heartbeat
        self.stream = stream
        self._start = 0.0
        self._last_line = 0.0
        self._printed: int | None = None

    def _write(self, text: str) -> None:
        stream = self.stream or sys.stdout
        stream.write(text + "\n")
        stream.flush()

    def _elapsed(self) -> str:
        elapsed = time.monotonic() - self._start
        budget = f"/{format_seconds(self.max_time)}" if self.max_time else ""
        return f"{format_seconds(elapsed)}{budget}"

    def on_train_start(self, trainer, pl_module) -> None:
        self._start = self._last_line = time.monotonic()
        self._printed = trainer.current_epoch - 1

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._epoch_line(trainer, pl_module, trainer.current_epoch - 1)

    def on_train_end(self, trainer, pl_module) -> None:
        self._epoch_line(trainer, pl_module, trainer.current_epoch - 1)
        if trainer.is_global_zero:
            self._write(f"training stopped after {trainer.current_epoch} epochs, "
                        f"{format_seconds(time.monotonic() - self._start)} elapsed")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        now = time.monotonic()
        if not trainer.is_global_zero or now - self._last_line < self.heartbeat:
            return
        total = trainer.num_training_batches
        of = f"/{total}" if isinstance(total, int) else ""
        self._write(f"epoch {trainer.current_epoch + 1}: batch {batch_idx + 1}{of}, "
                    f"elapsed {self._elapsed()}")
        self._last_line = now

    def _epoch_line(self, trainer, pl_module, epoch: int) -> None:
        if epoch < 0 or epoch == self._printed or not trainer.is_global_zero:
            return
        self._printed = epoch
        metrics: dict[str, Any] = getattr(pl_module, "last_metrics", {})
        parts = [f"epoch {epoch + 1}" + (f"/{self.max_epochs}" if self.max_epochs else ""),
                 f"elapsed {self._elapsed()}"]
        for split in ("train", "val"):
            m = metrics.get(split, {})
            if "f_mae" in m:
                parts.append(f"{split} F MAE {m['f_mae']:.2f} meV/Å")
            if "e_mae" in m:
                parts.append(f"{split} E MAE {m['e_mae']:.2f} meV")
        if trainer.optimizers:
            parts.append(f"lr {trainer.optimizers[0].param_groups[0]['lr']:.2g}")
        if getattr(pl_module, "stage_two", False):
            parts.append("stage two")
        self._write(", ".join(parts))
        self._last_line = time.monotonic()
