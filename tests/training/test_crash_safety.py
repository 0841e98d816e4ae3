"""Crash safety, with real SIGKILLs of subprocesses at known points of the write path: a
killed conversion leaves nothing that looks like a dataset and the rerun succeeds; a training
run killed mid-epoch, or while it writes ``last.ckpt``, resumes to the same final state as an
uninterrupted run; a checkpoint write that is killed never leaves a corrupt ``last.ckpt``.

Each child process (:data:`_CHILD`) patches one point of the write path so that, when it gets
there, it writes a marker file and sleeps; the test waits for the marker, kills the child and
asserts what must hold at that point. No timing decides where the kill lands."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import lmdb
import pytest
import torch

from mlip.cli.main import main
from mlip.data.lmdb import LmdbDataset
from mlip.training.checkpoint_io import AtomicCheckpointIO

ENV = dict(os.environ, OMP_NUM_THREADS="1")

# `python -c _CHILD POINT WHEN TARGET MARKER mlip ARGS...` runs `mlip ARGS`;
# `python -c _CHILD POINT WHEN TARGET MARKER save PATH` saves checkpoints {"step": 0} and
# {"step": 1} (payload: _payload(step)) to PATH with AtomicCheckpointIO.
# At the WHEN-th passage of POINT on the file named TARGET the child writes MARKER and sleeps:
#   transaction  LmdbWriter: half of a write transaction's records put, not committed
#   commit       LmdbWriter: a write transaction just committed
#   write        torch.save into TARGET.tmp-<pid> (or, from a writer that is not atomic,
#                TARGET itself): half of the bytes written and flushed
#   rename       the finished TARGET.partial-<pid> / .tmp-<pid> about to be renamed to TARGET
#   renamed      ... just renamed
#   step         PotentialModule.training_step at WHEN = "epoch/batch" (0-based), not yet run
_CHILD = textwrap.dedent(
    """
    import io, os, sys, time
    point, when, target, marker = sys.argv[1:5]
    args = sys.argv[5:]
    seen = 0

    def reached():
        global seen
        seen += 1
        return str(seen) == when

    def stop():
        with open(marker, "w") as fh:
            fh.write(point)
        while True:
            time.sleep(3600)

    if point in ("transaction", "commit"):
        import mlip.data.lmdb_writer as module
        put_all = module._put_all

        class StopHalfway(list):
            def __iter__(self):
                for i, item in enumerate(list.__iter__(self)):
                    if i == len(self) // 2:
                        stop()
                    yield item

        def patched(env, items):
            hit = reached()
            put_all(env, StopHalfway(items) if hit and point == "transaction" else items)
            if hit:
                stop()
        module._put_all = patched
    elif point == "write":
        import torch
        save = torch.save

        def patched(obj, f, *a, **k):
            name = os.path.basename(getattr(f, "name", ""))
            if (name == target or name.startswith(target + ".tmp-")) and reached():
                buffer = io.BytesIO()
                save(obj, buffer, *a, **k)
                f.write(buffer.getvalue()[: buffer.tell() // 2])
                f.flush()
                stop()
            save(obj, f, *a, **k)
        torch.save = patched
    elif point in ("rename", "renamed"):
        replace = os.replace

        def patched(src, dst):
            hit = os.path.basename(dst) == target and reached()
            if hit and point == "rename":
                stop()
            replace(src, dst)
            if hit:
                stop()
        os.replace = patched
    elif point == "step":
        from mlip.training.module import PotentialModule
        training_step = PotentialModule.training_step

        def patched(self, data, batch_idx):
            if f"{self.current_epoch}/{batch_idx}" == when:
                stop()
            return training_step(self, data, batch_idx)
        PotentialModule.training_step = patched
    else:
        raise SystemExit(f"unknown point {point}")

    if args[0] == "mlip":
        from mlip.cli.main import main
        sys.exit(main(args[1:]))
    import torch
    from mlip.training.checkpoint_io import AtomicCheckpointIO
    for step in range(2):
        payload = torch.arange(100_000, dtype=torch.float64) + step
        AtomicCheckpointIO().save_checkpoint({"step": step, "payload": payload}, args[1])
    """
)


def _payload(step: int) -> torch.Tensor:
    return torch.arange(100_000, dtype=torch.float64) + step


def _kill_at(logs: Path, point: str, when: int | str, target: str, *args: str) -> int:
    """Run :data:`_CHILD` until it reaches ``point``, SIGKILL it there; returns its pid.

    Raises:
        AssertionError: the child ended, or did not get there within two minutes (its
            stderr is in the message).
    """
    marker, log = logs / f"{point}.reached", logs / f"{point}.log"
    with open(log, "wb") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-c", _CHILD, point, str(when), target, str(marker), *args],
            env=ENV, stdout=subprocess.DEVNULL, stderr=stderr,
        )
    try:
        end = time.monotonic() + 120.0
        while not marker.exists():
            if proc.poll() is not None or time.monotonic() > end:
                raise AssertionError(f"the child never reached {point} {when} of {target} "
                                     f"(exit {proc.poll()}):\n{log.read_text(errors='replace')[-3000:]}")
            time.sleep(0.005)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    return proc.pid


def _entries(path: Path) -> int:
    """Committed entries of an LMDB file (records, header, sizes, metadata)."""
    env = lmdb.open(str(path), readonly=True, lock=False, subdir=False)
    try:
        return env.stat()["entries"]
    finally:
        env.close()


@pytest.mark.parametrize(
    ("point", "committed"),
    [
        ("transaction", 0),  # records 0-499 of the first transaction put, not committed
        ("commit", 1000),  # the first 1,000 records committed, 200 still to come
        ("rename", 1202),  # 1,200 records, header and sizes committed and synced; not renamed
        ("renamed", None),  # out.lmdb in place
    ],
)
def test_killed_conversion_leaves_no_dataset_and_rerun_succeeds(
    tmp_path: Path, tiny: Path, point: str, committed: int | None
) -> None:
    folder = tmp_path / "data"
    folder.mkdir()
    source = folder / "big.xyz"
    # 1,200 frames: two write transactions (LmdbWriter commits every 1,000 records)
    source.write_text((tiny / "acac_20.xyz").read_text() * 60)
    out = folder / "out.lmdb"
    pid = _kill_at(tmp_path, point, 1, out.name,
                   "mlip", "data", "convert", str(source), "-o", str(out), "--no-progress")
    left = sorted(p.name for p in folder.iterdir() if p != source)
    if committed is None:  # killed after the rename: the dataset is complete
        assert left == ["out.lmdb"]
        dataset = LmdbDataset(out)
        assert len(dataset) == 1200
        dataset.close()
    else:  # before it: no out.lmdb, only this process's partial file
        assert left == [f"out.lmdb.partial-{pid}"]
        assert _entries(folder / left[0]) == committed
    assert main(["data", "convert", str(source), "-o", str(out), "--overwrite",
                 "--no-progress"]) == 0
    dataset = LmdbDataset(out)
    assert len(dataset) == 1200
    dataset.close()
    assert sorted(p.name for p in folder.iterdir()) == ["big.xyz", "out.lmdb"]  # partial gone


@pytest.fixture(scope="module")
def uninterrupted() -> dict[str, Any]:
    """``last`` (last.ckpt) and ``summary`` (summary.json) of the uninterrupted 5-epoch run,
    filled by the first test that needs them (a run's result does not depend on its folder)."""
    return {}


@pytest.mark.parametrize(
    ("point", "when"),
    [
        ("step", "2/1"),  # epoch 2: batch 0 trained, batch 1 about to be
        ("write", 3),  # half of the end-of-epoch-2 last.ckpt written to its temporary file
    ],
)
def test_training_killed_resumes_to_the_same_result(
    tiny_data: Path, write_config, uninterrupted: dict[str, Any], point: str, when: int | str,
    capsys,
) -> None:
    cfg = write_config(tiny_data, max_epochs=5)
    runs = tiny_data / "runs"
    if not uninterrupted:
        assert main(["train", "--config", str(cfg), "run_name=straight"]) == 0
        uninterrupted["last"] = torch.load(runs / "straight" / "checkpoints" / "last.ckpt",
                                           weights_only=True)
        uninterrupted["summary"] = json.loads((runs / "straight" / "summary.json").read_text())
    a = uninterrupted["last"]
    assert a["epoch"] == 4 and a["global_step"] % 5 == 0  # the 0-based index of the last epoch
    checkpoints = runs / "killed" / "checkpoints"
    last = checkpoints / "last.ckpt"
    pid = _kill_at(tiny_data, point, when, last.name,
                   "mlip", "train", "--config", str(cfg), "run_name=killed")
    state = torch.load(last, weights_only=True)  # the end of epoch 1, intact
    assert state["epoch"] == 1 and state["global_step"] == 2 * a["global_step"] // 5
    tmp = checkpoints / f"last.ckpt.tmp-{pid}"
    if point == "write":  # the interrupted write: a torn temporary file, never last.ckpt
        with pytest.raises(RuntimeError):
            torch.load(tmp, weights_only=True)
    else:
        assert not tmp.exists()
    assert not (runs / "killed" / "model.pt").exists()
    assert not (runs / "killed" / "summary.json").exists()
    capsys.readouterr()
    assert main(["train", "--config", str(cfg), "run_name=killed", "--resume"]) == 0
    # A real resume, not a seeded restart (which would end equal too): it trains epochs 3-5.
    epochs = [ln.split(",")[0] for ln in capsys.readouterr().out.splitlines()
              if ln.startswith("epoch ")]
    assert epochs == ["epoch 3/5", "epoch 4/5", "epoch 5/5"], epochs
    assert not any(".tmp-" in p.name for p in checkpoints.iterdir())  # cleaned by a later save
    b = torch.load(last, weights_only=True)
    assert (b["epoch"], b["global_step"]) == (a["epoch"], a["global_step"])
    for k, v in a["state_dict"].items():
        torch.testing.assert_close(b["state_dict"][k], v, rtol=1e-10, atol=1e-12)
    ma = uninterrupted["summary"]
    mb = json.loads((runs / "killed" / "summary.json").read_text())
    for ra, rb in zip(ma["test"], mb["test"], strict=True):
        for key in ("e_mae", "f_mae"):
            assert rb[key] == pytest.approx(ra[key], rel=1e-9)


@pytest.mark.parametrize(
    "point",
    [
        "write",  # half of checkpoint 1 written to the temporary file
        "rename",  # checkpoint 1 complete and synced in the temporary file, not renamed
    ],
)
def test_checkpoint_killed_while_writing_stays_loadable(tmp_path: Path, point: str) -> None:
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    path = folder / "last.ckpt"
    pid = _kill_at(tmp_path, point, 2, path.name, "save", str(path))
    state = torch.load(path, weights_only=True)  # checkpoint 0, exactly
    assert state["step"] == 0 and torch.equal(state["payload"], _payload(0))
    tmp = folder / f"last.ckpt.tmp-{pid}"
    if point == "write":  # torn: it would be a corrupt last.ckpt without the rename
        assert tmp.stat().st_size > 0
        with pytest.raises(RuntimeError):
            torch.load(tmp, weights_only=True)
    else:
        state = torch.load(tmp, weights_only=True)
        assert state["step"] == 1 and torch.equal(state["payload"], _payload(1))
    AtomicCheckpointIO().save_checkpoint({"step": -1}, path)  # the next save cleans up
    assert sorted(p.name for p in folder.iterdir()) == ["last.ckpt"]
    assert torch.load(path, weights_only=True) == {"step": -1}


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
