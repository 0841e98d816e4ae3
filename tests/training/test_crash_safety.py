"""Crash safety (issue 14 item 4), with real SIGKILLs of subprocesses: a killed conversion
leaves nothing that looks like a dataset and the rerun succeeds; a training run killed
mid-epoch resumes to the same final state as an uninterrupted run; a checkpoint write that
is killed never leaves a corrupt ``last.ckpt``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from mlip.cli.main import main
from mlip.data.lmdb import LmdbDataset
from mlip.training.checkpoint_io import AtomicCheckpointIO

ENV = dict(os.environ, OMP_NUM_THREADS="1")


def _wait_for(predicate, timeout: float = 120.0, proc: subprocess.Popen | None = None) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process ended early: {proc.communicate()}")
        if time.monotonic() > end:
            raise AssertionError("timed out")
        time.sleep(0.005)


@pytest.mark.parametrize("delay", [0.0, 0.05, 0.2, 0.5])
def test_killed_conversion_leaves_no_dataset_and_rerun_succeeds(
    tmp_path: Path, tiny: Path, delay: float
) -> None:
    frames = (tiny / "acac_20.xyz").read_text()
    source = tmp_path / "big.xyz"
    source.write_text(frames * 100)  # 2,000 frames: about a second to convert
    out = tmp_path / "out.lmdb"
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlip", "data", "convert", str(source), "-o", str(out),
         "--no-progress"], env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    # Kill once the partial file exists (the writer is mid-way), after `delay` more seconds.
    _wait_for(lambda: any(p.name.startswith("out.lmdb.partial-") for p in tmp_path.iterdir())
              or out.exists(), proc=proc)
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    if out.exists():  # killed after the rename: then it must be complete
        assert len(LmdbDataset(out)) == 2000
        LmdbDataset(out).close()
    names = {p.name for p in tmp_path.iterdir()} - {"big.xyz"}
    assert names <= {"out.lmdb"} | {n for n in names if n.startswith("out.lmdb.partial-")}
    assert main(["data", "convert", str(source), "-o", str(out), "--overwrite",
                 "--no-progress"]) == 0
    assert len(LmdbDataset(out)) == 2000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.xyz", "out.lmdb"]  # stale partial gone


def test_training_killed_mid_epoch_resumes_to_the_same_result(tiny_data, write_config) -> None:
    cfg = write_config(tiny_data, max_epochs=5)
    runs = tiny_data / "runs"
    assert main(["train", "--config", str(cfg), "run_name=straight"]) == 0
    last = runs / "killed" / "checkpoints" / "last.ckpt"
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlip", "train", "--config", str(cfg), "run_name=killed"],
        env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    _wait_for(last.exists, proc=proc)  # epoch 0 done
    t0, first = time.monotonic(), last.stat().st_mtime_ns
    _wait_for(lambda: last.stat().st_mtime_ns != first, proc=proc)  # epoch 1 done
    time.sleep(0.4 * (time.monotonic() - t0))  # inside epoch 2
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    state = torch.load(last, weights_only=True)  # loads: never half-written
    assert 1 <= state["epoch"] < 5
    assert not (runs / "killed" / "model.pt").exists()
    assert main(["train", "--config", str(cfg), "run_name=killed", "--resume"]) == 0
    a = torch.load(runs / "straight" / "checkpoints" / "last.ckpt", weights_only=True)
    b = torch.load(last, weights_only=True)
    assert a["epoch"] == b["epoch"] == 4  # the 0-based index of the last epoch
    for k, v in a["state_dict"].items():
        torch.testing.assert_close(b["state_dict"][k], v, rtol=1e-10, atol=1e-12)
    ma = json.loads((runs / "straight" / "summary.json").read_text())
    mb = json.loads((runs / "killed" / "summary.json").read_text())
    for ra, rb in zip(ma["test"], mb["test"], strict=True):
        for key in ("e_mae", "f_mae"):
            assert rb[key] == pytest.approx(ra[key], rel=1e-9)


_SAVER = textwrap.dedent(
    """
    import sys, torch
    from mlip.training.checkpoint_io import AtomicCheckpointIO
    io, path = AtomicCheckpointIO(), sys.argv[1]
    payload = torch.arange(4_000_000, dtype=torch.float64)  # 32 MB per write
    step = 0
    while True:
        io.save_checkpoint({"step": step, "payload": payload + step}, path)
        print(step, flush=True)
        step += 1
    """
)


@pytest.mark.parametrize("delay", [0.0, 0.013, 0.031, 0.07])
def test_checkpoint_killed_while_writing_stays_loadable(tmp_path: Path, delay: float) -> None:
    path = tmp_path / "last.ckpt"
    proc = subprocess.Popen([sys.executable, "-c", _SAVER, str(path)], env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    proc.stdout.readline()  # one complete checkpoint on disk, the next being written
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    state = torch.load(path, weights_only=True)
    n = state["payload"].numel()
    assert n == 4_000_000 and float(state["payload"][-1]) == n - 1 + state["step"]
    AtomicCheckpointIO().save_checkpoint({"step": -1}, path)  # the next save cleans up
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


def test_failed_checkpoint_write_keeps_the_previous_one(tmp_path: Path) -> None:
    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("disk full")

    io, path = AtomicCheckpointIO(), tmp_path / "last.ckpt"
    io.save_checkpoint({"epoch": 3, "w": torch.ones(1000)}, path)
    with pytest.raises(RuntimeError, match="disk full"):
        io.save_checkpoint({"epoch": 4, "w": torch.ones(1000), "bad": Unpicklable()}, path)
    assert torch.load(path, weights_only=True)["epoch"] == 3
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]
