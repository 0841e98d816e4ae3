"""Molecular dynamics with ASE's integrators: setup, logging, progress, blow-up checks."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ase
import ase.io
import numpy as np
from ase import units
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary
from tqdm.auto import tqdm

# Ensembles: name -> (description, needs temperature, periodic only).
ENSEMBLES = {
    "nve": ("velocity Verlet, constant energy", False, False),
    "langevin": ("Langevin NVT (friction in 1/fs)", True, False),
    "andersen": ("Andersen NVT (collision probability per step = friction * timestep)", True, False),
    "bussi": ("Bussi stochastic velocity rescaling NVT (tau = 1/friction fs)", True, False),
    "nose-hoover": ("Nose-Hoover chain NVT (tdamp = 1/friction fs)", True, False),
    "berendsen": ("Berendsen NVT (taut = 1/friction fs; not canonical)", True, False),
    "npt-berendsen": ("Berendsen NPT, isotropic (taut, taup = 1/friction fs)", True, True),
    "npt-mtk": ("isotropic MTK NPT with Nose-Hoover chains (tdamp, pdamp)", True, True),
}


class MDInstabilityError(RuntimeError):
    """The simulation blew up (NaN, energy drift or temperature beyond the limits)."""


def make_integrator(
    atoms: ase.Atoms, ensemble: str, timestep_fs: float, temperature_K: float,
    friction_per_fs: float, pressure_GPa: float, rng: np.random.Generator,
):
    """An ASE MolecularDynamics object for ``ensemble``."""
    dt = timestep_fs * units.fs
    tau = (1.0 / friction_per_fs) * units.fs
    if ensemble not in ENSEMBLES:
        raise ValueError(f"unknown ensemble {ensemble!r}; choose from {', '.join(ENSEMBLES)}")
    if ENSEMBLES[ensemble][2] and not atoms.pbc.all():
        raise ValueError(f"ensemble {ensemble} needs a fully periodic cell")
    if ensemble == "nve":
        from ase.md.verlet import VelocityVerlet

        return VelocityVerlet(atoms, dt)
    if ensemble == "langevin":
        from ase.md.langevin import Langevin

        return Langevin(atoms, dt, temperature_K=temperature_K,
                        friction=friction_per_fs / units.fs, fixcm=False, rng=rng)
    if ensemble == "andersen":
        from ase.md.andersen import Andersen

        return Andersen(atoms, dt, temperature_K=temperature_K,
                        andersen_prob=min(1.0, friction_per_fs * timestep_fs), rng=rng)
    if ensemble == "bussi":
        from ase.md.bussi import Bussi

        return Bussi(atoms, dt, temperature_K=temperature_K, taut=tau, rng=rng)
    if ensemble == "nose-hoover":
        from ase.md.nose_hoover_chain import NoseHooverChainNVT

        return NoseHooverChainNVT(atoms, dt, temperature_K=temperature_K, tdamp=tau)
    if ensemble == "berendsen":
        from ase.md.nvtberendsen import NVTBerendsen

        return NVTBerendsen(atoms, dt, temperature_K=temperature_K, taut=tau)
    pressure_au = pressure_GPa * units.GPa
    if ensemble == "npt-berendsen":
        from ase.md.nptberendsen import NPTBerendsen

        return NPTBerendsen(atoms, dt, temperature_K=temperature_K, pressure_au=pressure_au,
                            taut=tau, taup=10 * tau, compressibility_au=4.57e-5 / units.bar)
    from ase.md.nose_hoover_chain import IsotropicMTKNPT

    return IsotropicMTKNPT(atoms, dt, temperature_K=temperature_K, pressure_au=pressure_au,
                           tdamp=tau, pdamp=10 * tau)


@dataclass
class MDSettings:
    ensemble: str = "nve"
    temperature_K: float = 300.0
    timestep_fs: float = 0.5
    steps: int = 1000
    friction_per_fs: float = 0.01
    pressure_GPa: float = 0.0
    seed: int = 0
    log_every: int = 10
    trajectory: str | None = None
    log: str | None = None
    max_energy_drift_per_atom: float = 1.0  # eV/atom away from the start: a blow-up
    max_temperature_K: float = 1e5
    progress: bool = True
    extra: dict[str, Any] = field(default_factory=dict)


def _writer(path: str | None, atoms: ase.Atoms):
    """Trajectory writer by extension: .traj (ASE) or anything ase.io writes (extxyz)."""
    if not path:
        return None, None
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    if path.endswith(".traj"):
        from ase.io.trajectory import Trajectory

        traj = Trajectory(path, "w", atoms)
        return traj.write, traj.close
    Path(path).write_text("")

    def write() -> None:
        ase.io.write(path, atoms, append=True, format="extxyz")

    return write, None


def run_md(atoms: ase.Atoms, settings: MDSettings) -> dict[str, Any]:
    """Run MD on ``atoms`` (with a calculator attached); returns a summary dict.

    Raises:
        MDInstabilityError: after writing what was simulated so far.
    """
    rng = np.random.default_rng(settings.seed)
    if settings.temperature_K > 0:
        MaxwellBoltzmannDistribution(atoms, temperature_K=settings.temperature_K, rng=rng)
        Stationary(atoms)  # zero total momentum
    dyn = make_integrator(atoms, settings.ensemble, settings.timestep_fs, settings.temperature_K,
                          settings.friction_per_fs, settings.pressure_GPa, rng)
    n = len(atoms)
    periodic = bool(atoms.pbc.all())
    e0 = atoms.get_potential_energy() + atoms.get_kinetic_energy()
    write, close = _writer(settings.trajectory, atoms)
    log = open(settings.log, "w") if settings.log else None  # noqa: SIM115
    if log:
        log.write("# time[ps] Epot[eV] Ekin[eV] Etot[eV] T[K]" + (" P[GPa]" if periodic else "") + "\n")
    bar = tqdm(total=settings.steps, desc=f"md {settings.ensemble}", unit="step",
               disable=not settings.progress)
    state = {"t0": time.perf_counter(), "step": 0}

    def observe() -> None:
        epot = atoms.get_potential_energy()
        ekin = atoms.get_kinetic_energy()
        temp = ekin / (1.5 * units.kB * n)
        etot = epot + ekin
        step = dyn.nsteps
        if step % settings.log_every == 0:
            if write:
                write()
            if log:
                row = f"{step * settings.timestep_fs / 1000:.5f} {epot:.6f} {ekin:.6f} {etot:.6f} {temp:.2f}"
                if periodic:
                    p = -np.trace(atoms.get_stress(voigt=False, include_ideal_gas=True)) / 3
                    row += f" {p / units.GPa:.4f}"
                log.write(row + "\n")
        if not np.isfinite(etot) or not np.isfinite(atoms.positions).all():
            raise MDInstabilityError(f"step {step}: NaN in energies or positions")
        drift = abs(etot - e0) / n
        if settings.ensemble == "nve" and drift > settings.max_energy_drift_per_atom:
            raise MDInstabilityError(
                f"step {step}: total energy moved {drift:.3f} eV/atom from the start "
                f"(limit {settings.max_energy_drift_per_atom}); try a smaller --timestep"
            )
        if temp > settings.max_temperature_K:
            raise MDInstabilityError(f"step {step}: temperature {temp:.0f} K exceeds "
                                     f"{settings.max_temperature_K:.0f} K: the simulation blew up")
        done = step - state["step"]
        state["step"] = step
        bar.update(done)
        elapsed = time.perf_counter() - state["t0"]
        if elapsed > 0 and step:
            rate = step / elapsed
            bar.set_postfix(steps_s=f"{rate:.1f}", ns_day=f"{rate * settings.timestep_fs * 86400 / 1e6:.3f}",
                            T=f"{temp:.0f}K")

    dyn.attach(observe, interval=1)
    error = None
    t0 = time.perf_counter()
    try:
        dyn.run(settings.steps)  # ASE calls the observers at step 0 too
    except (MDInstabilityError, FloatingPointError) as err:
        error = err
    finally:
        bar.close()
        if close:
            close()
        if log:
            log.close()
    seconds = time.perf_counter() - t0
    steps = dyn.nsteps
    summary = {
        "steps": steps, "seconds": seconds, "atoms": n,
        "steps_per_second": steps / seconds if seconds > 0 else float("nan"),
        "ns_per_day": steps / seconds * settings.timestep_fs * 86400 / 1e6 if seconds > 0 else float("nan"),
        "final_temperature_K": atoms.get_kinetic_energy() / (1.5 * units.kB * n),
    }
    if error is not None:
        raise MDInstabilityError(f"{error} (stopped after {steps} steps; trajectory so far kept)") from error
    return summary
