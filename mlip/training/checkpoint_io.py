"""Checkpoint files written atomically: a crash never leaves a half-written ``last.ckpt``.

Lightning's default writer opens the target and writes into it (through fsspec), so a kill
during the write can leave a truncated checkpoint under the real name. This one writes
``<name>.tmp-<pid>`` beside it, flushes it to disk and renames it over the target, which is
atomic on POSIX file systems; a temporary file left by a killed process is removed by the
next save. Remote (``s3://`` ...) paths go through Lightning's writer unchanged.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from mlip.cache import process_alive
from mlip.training.lightning_import import L


class AtomicCheckpointIO(L.pytorch.plugins.io.TorchCheckpointIO):
    """``TorchCheckpointIO`` with write-to-temporary-then-rename saves."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any | None = None
    ) -> None:
        if "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO.save_checkpoint takes no storage_options")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_temporaries(path)
        tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
        try:
            with open(tmp, "wb") as fh:
                torch.save(checkpoint, fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return None


def _remove_stale_temporaries(path: Path) -> None:
    prefix = f"{path.name}.tmp-"
    for entry in path.parent.glob(prefix + "*"):
        pid = entry.name[len(prefix):]
        if pid.isdigit() and int(pid) != os.getpid() and not process_alive(int(pid)):
            entry.unlink(missing_ok=True)
