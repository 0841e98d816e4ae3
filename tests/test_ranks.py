"""Rank detection under the launchers the README documents (torchrun, srun, none)."""

from __future__ import annotations

import pytest

from mlip.ranks import global_rank, local_rank

_NAMES = ("RANK", "LOCAL_RANK", "SLURM_PROCID", "SLURM_LOCALID")


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, (0, 0)),
        ({"RANK": "5", "LOCAL_RANK": "1"}, (5, 1)),  # torchrun / Lightning's launcher
        ({"SLURM_PROCID": "6", "SLURM_LOCALID": "2"}, (6, 2)),  # srun
        ({"RANK": "3", "LOCAL_RANK": "3", "SLURM_PROCID": "0", "SLURM_LOCALID": "0"}, (3, 3)),
    ],
)
def test_ranks_from_launcher_environment(monkeypatch, env, expected) -> None:
    for name in _NAMES:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert (global_rank(), local_rank()) == expected
