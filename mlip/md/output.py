"""MD output shared by the ASE driver and the batched replicas: trajectory files, the
text log, and the progress bar with steps/s and ns/day."""

from __future__ import annotations

import time
from pathlib import Path
from typing import IO

import ase
import ase.io
import numpy as np
from ase import units
from tqdm.auto import tqdm

# Seconds between progress-bar postfix updates (formatting every step costs more than a
# small molecule's step).
_POSTFIX_INTERVAL_S = 1.0


class TrajectoryWriter:
    """Append frames to ``path``: ASE's binary format for ``.traj``, extended XYZ otherwise.

    Each frame is flushed as it is written, so a run that stops early keeps every frame
    so far. Frames carry the calculator's results (energy, forces, stress where present).

    Args:
        path: output file; its folder is created; an existing file is overwritten.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._traj = None
        self._file: IO[str] | None = None
        if self.path.suffix == ".traj":
            from ase.io.trajectory import Trajectory

            self._traj = Trajectory(str(self.path), "w")
        else:
            self._file = open(self.path, "w")  # noqa: SIM115 - closed in close()
        self.frames = 0

    def write(self, atoms: ase.Atoms) -> None:
        if self._traj is not None:
            self._traj.write(atoms)
        else:
            ase.io.write(self._file, atoms, format="extxyz")
            self._file.flush()
        self.frames += 1

    def close(self) -> None:
        if self._traj is not None:
            self._traj.close()
        if self._file is not None:
            self._file.close()


class TextLog:
    """Whitespace-separated columns with a ``#`` header, flushed per row (np.loadtxt reads it).

    Args:
        path: output file, or None for no log.
        columns: column names with units, e.g. ``"Epot[eV]"``.
    """

    def __init__(self, path: str | Path | None, columns: list[str]) -> None:
        self._file: IO[str] | None = None
        if path:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            self._file = open(path, "w")  # noqa: SIM115 - closed in close()
            self._file.write("# " + " ".join(columns) + "\n")

    def row(self, values: list[float | int], formats: list[str]) -> None:
        if self._file is not None:
            self._file.write(" ".join(f"{v:{f}}" for v, f in zip(values, formats, strict=True)) + "\n")
            self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


def md_columns(periodic: bool, replicas: bool = False, uncertainty: bool = False
               ) -> tuple[list[str], list[str]]:
    """Log columns and their formats: time, energies, T (and P, V for periodic cells; the
    largest per-atom force uncertainty for a model with one)."""
    names = ["time[ps]", "Epot[eV]", "Ekin[eV]", "Etot[eV]", "T[K]"]
    formats = [".5f", ".6f", ".6f", ".6f", ".2f"]
    if periodic:
        names += ["P[GPa]", "V[A^3]"]
        formats += [".5f", ".3f"]
    if uncertainty:
        names += ["maxUF[eV/A]"]
        formats += [".5f"]
    if replicas:
        names, formats = ["replica", *names], ["d", *formats]
    return names, formats


def pressure_GPa(atoms: ase.Atoms) -> float:
    """Instantaneous pressure incl. the kinetic (ideal-gas) term [GPa]."""
    stress = atoms.get_stress(voigt=False, include_ideal_gas=True)
    return float(-np.trace(stress) / 3 / units.GPa)


def ns_per_day(steps_per_second: float, timestep_fs: float) -> float:
    return steps_per_second * timestep_fs * 86400 / 1e6


class Progress:
    """tqdm bar over MD steps showing steps/s, ns/day and the temperature.

    Args:
        steps: total steps.
        timestep_fs: [fs], for ns/day.
        description: bar label.
        enabled: False for no bar (tests, batch jobs).
    """

    def __init__(self, steps: int, timestep_fs: float, description: str, enabled: bool = True) -> None:
        self.bar = tqdm(total=steps, desc=description, unit="step", disable=not enabled,
                        dynamic_ncols=True)
        self.timestep_fs = timestep_fs
        self.start = time.perf_counter()
        self._last_postfix = self.start
        self.done = 0

    def update(self, step: int, temperature_K: float) -> None:
        """Advance the bar to ``step`` (absolute)."""
        if step > self.done:
            self.bar.update(step - self.done)
            self.done = step
        now = time.perf_counter()
        if now - self._last_postfix >= _POSTFIX_INTERVAL_S and self.done:
            rate = self.done / (now - self.start)
            self.bar.set_postfix(steps_s=f"{rate:.2f}",
                                 ns_day=f"{ns_per_day(rate, self.timestep_fs):.3f}",
                                 T=f"{temperature_K:.0f}K", refresh=False)
            self._last_postfix = now

    def close(self) -> None:
        self.bar.close()
