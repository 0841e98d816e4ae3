"""Two-process DDP (gloo, CPU) over a sharded dataset matches one process with the same
global batch, under each launcher the README documents (Lightning's own, torchrun, srun
simulated by its environment variables); a DDP checkpoint resumes in one process."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mlip.data.convert import convert


def _env(tmp: Path, **extra: str) -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS="1", MLIP_CACHE_DIR=str(tmp / "cache"), **extra)


def _train(cfg: Path, tmp: Path, *overrides: str, launcher: tuple[str, ...] = ()) -> None:
    cmd = [*(launcher or (sys.executable,)), "-m", "mlip", "train", "--config", str(cfg), *overrides]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(tmp), cwd=tmp, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _train_srun(cfg: Path, tmp: Path, *overrides: str, tasks: int = 2) -> None:
    """What ``srun --ntasks-per-node=2 mlip train ...`` starts on one node: the same command
    in every task, each told its place by SLURM's variables (Lightning reads them)."""
    port = str(_free_port())
    cmd = [sys.executable, "-m", "mlip", "train", "--config", str(cfg), *overrides]
    procs = []
    for task in range(tasks):
        slurm = {"SLURM_NTASKS": str(tasks), "SLURM_NTASKS_PER_NODE": str(tasks),
                 "SLURM_PROCID": str(task), "SLURM_LOCALID": str(task), "SLURM_NODEID": "0",
                 "SLURM_NODELIST": "localhost", "SLURM_JOB_ID": "4242",
                 "SLURM_JOB_NAME": "mlip-test", "MASTER_PORT": port}
        env = {k: v for k, v in _env(tmp, **slurm).items()
               if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE")}
        procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True, env=env, cwd=tmp))
    for task, proc in enumerate(procs):
        stdout, stderr = proc.communicate(timeout=600)
        assert proc.returncode == 0, stderr[-3000:]
        # each task is one rank (Lightning did not start processes of its own)
        ranks = [line for line in (stdout + stderr).splitlines() if "GLOBAL_RANK" in line]
        assert len(ranks) == 1 and f"GLOBAL_RANK: {task}," in ranks[0], ranks


def _weights(run: Path) -> dict[str, torch.Tensor]:
    state = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    return state["state_dict"], state["epoch"]


def _max_difference(a: dict, b: dict) -> float:
    return max(float((a[k] - b[k]).abs().max()) for k in a if a[k].is_floating_point())


@pytest.mark.slow
def test_two_gloo_processes_match_one(tiny_data, write_config, tiny) -> None:
    for name in ("train", "val"):
        convert([tiny / "acac_20.xyz"], tiny_data / name, shard_size=6, progress=False)
    cfg = write_config(tiny_data, max_epochs=3, accelerator="cpu")
    common = [f"data.train=[{tiny_data / 'train'}]", f"data.val=[{tiny_data / 'val'}]",
              "data.max_train=16", "data.test=[]", "data.val_batch_size=5"]
    # one process, 8 structures a step; two processes, 4 each: the same global batches
    _train(cfg, tiny_data, *common, "run_name=one", "data.batch_size=8")
    _train(cfg, tiny_data, *common, "run_name=two", "data.batch_size=4",
           "training.trainer.devices=2", "training.trainer.strategy=ddp")
    one, epoch_one = _weights(tiny_data / "runs" / "one")
    two, epoch_two = _weights(tiny_data / "runs" / "two")
    assert epoch_one == epoch_two == 2
    # measured: 4.4e-16 (float64; only the order of the gradient all-reduce differs)
    print(f"DDP vs one process: max |dw| = {_max_difference(one, two):.2e}")
    assert _max_difference(one, two) < 1e-9
    # metrics are reduced over both ranks (8 of the 16 training structures on each, all 20
    # validation structures counted once), and only rank 0 writes the model and summary
    run = tiny_data / "runs" / "two"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["last_metrics"]["train"]["structures"] == 16
    assert summary["last_metrics"]["val"]["structures"] == 20
    assert len(list((run / "checkpoints").glob("best*.ckpt"))) == 1
    assert (run / "model.pt").is_file()
    # the same two processes started by torchrun, and by srun
    ddp = [*common, "data.batch_size=4", "training.trainer.devices=2", "training.trainer.strategy=ddp"]
    torchrun = (sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc-per-node", "2")
    _train(cfg, tiny_data, *ddp, "run_name=torchrun", launcher=torchrun)
    _train_srun(cfg, tiny_data, *ddp, "run_name=srun")
    for name in ("torchrun", "srun"):
        weights, epoch = _weights(tiny_data / "runs" / name)
        print(f"{name} vs one process: max |dw| = {_max_difference(one, weights):.2e}")
        assert epoch == 2 and _max_difference(one, weights) < 1e-9
    # a 2-process checkpoint of 2 epochs resumes in 1 process to the 3-epoch result
    _train(cfg, tiny_data, *common, "run_name=resumed", "data.batch_size=4",
           "training.trainer.devices=2", "training.trainer.strategy=ddp", "training.schedule.max_epochs=2")
    _train(cfg, tiny_data, *common, "run_name=resumed", "data.batch_size=8", "--resume")
    resumed, epoch = _weights(tiny_data / "runs" / "resumed")
    print(f"DDP checkpoint resumed in one process: max |dw| = {_max_difference(one, resumed):.2e}")
    assert epoch == 2 and _max_difference(one, resumed) < 1e-9
