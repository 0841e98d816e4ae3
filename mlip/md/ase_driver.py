"""Molecular dynamics with ASE's integrators: setup, logging, progress, blow-up checks."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import ase
import numpy as np
from ase import units
from ase.md.velocitydistribution import Stationary, thermalize_momenta

from mlip.inference.errors import AtomsTooCloseError
from mlip.md.output import Progress, TextLog, TrajectoryWriter, md_columns, ns_per_day, pressure_GPa

# Ensembles: name -> (description, needs temperature, periodic only). Time constants:
# thermostats tau_T = 1/friction; barostats tau_P = 10 tau_T.
ENSEMBLES = {
    "nve": ("velocity Verlet, constant energy", False, False),
    "langevin": ("Langevin NVT (friction in 1/fs)", True, False),
    "langevin-baoab": ("Langevin NVT, BAOAB splitting (tau_T = 1/friction)", True, False),
    "andersen": ("Andersen NVT (collision probability per atom and step = friction * timestep)",
                 True, False),
    "bussi": ("Bussi stochastic velocity rescaling NVT (tau_T = 1/friction)", True, False),
    "nose-hoover": ("Nose-Hoover chain NVT (tau_T = 1/friction)", True, False),
    "berendsen": ("Berendsen NVT (tau_T = 1/friction; not canonical)", True, False),
    "npt-berendsen": ("Berendsen NPT, isotropic (--compressibility; not canonical)", True, True),
    "npt-berendsen-aniso": ("Berendsen NPT, cell lengths independently, angles fixed", True, True),
    "npt-mtk": ("Martyna-Tobias-Klein NPT with Nose-Hoover chains, isotropic", True, True),
    "npt-mtk-aniso": ("Martyna-Tobias-Klein NPT, fully flexible cell", True, True),
    "npt-langevin": ("Langevin-Hoover NPT (BAOAB), isotropic", True, True),
}


class UncertaintyWatch:
    """``max_uncertainty``: the frames whose largest per-atom force uncertainty exceeds the
    limit are appended to ``path`` (extended XYZ, with step, replica and the uncertainties
    in ``info``/``arrays``); with ``action="stop"`` the first one stops the run
    (:class:`UncertaintyExceededError`), with ``"warn"`` one warning is printed and the run
    goes on, writing at most one frame per ``log_every`` steps."""

    def __init__(self, limit: float | None, action: str, path: str | None, log_every: int) -> None:
        if action not in ("stop", "warn"):
            raise ValueError(f"uncertainty action must be 'stop' or 'warn', got {action!r}")
        if limit is not None and limit <= 0:
            raise ValueError(f"--max-uncertainty must be positive, got {limit}")
        self.limit, self.action, self.path, self.log_every = limit, action, path, log_every
        self.largest = 0.0
        self.exceeded = 0
        self._last_written: int | None = None
        self._writer: TrajectoryWriter | None = None

    def check(self, step: int, largest: float, snapshot) -> None:
        """Record ``largest`` (eV/Å) of step ``step``; ``snapshot()`` -> the Atoms to write."""
        self.largest = max(self.largest, largest)
        if self.limit is None or not largest > self.limit:
            return
        self.exceeded += 1
        due = self._last_written is None or step - self._last_written >= self.log_every
        if self.path and (self.action == "stop" or due):
            if self._writer is None:
                self._writer = TrajectoryWriter(self.path)
            self._writer.write(snapshot())
            self._last_written = step
        where = f"; frame written to {self.path}" if self.path else ""
        message = (f"step {step}: largest per-atom force uncertainty {largest:.3f} eV/Å is above "
                   f"--max-uncertainty {self.limit:g} eV/Å{where}")
        if self.action == "stop":
            raise UncertaintyExceededError(message)
        if self.exceeded == 1:
            print(f"mlip md: warning: {message} (warning once; continuing)", flush=True)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()

    def summary(self) -> dict[str, Any]:
        return {"max_forces_uncertainty": self.largest, "uncertain_steps": self.exceeded}


class MDInstabilityError(RuntimeError):
    """The simulation blew up (NaN, energy drift or temperature beyond the limits)."""


class UncertaintyExceededError(MDInstabilityError):
    """The model's force uncertainty passed ``max_uncertainty`` (the run left its data)."""


def make_integrator(
    atoms: ase.Atoms, ensemble: str, timestep_fs: float, temperature_K: float,
    friction_per_fs: float, pressure_GPa: float, rng: np.random.Generator,
    compressibility_per_GPa: float = 0.457,
):
    """An ASE MolecularDynamics object for ``ensemble`` (see :data:`ENSEMBLES`).

    Args:
        atoms: the system, with its calculator.
        ensemble: a key of :data:`ENSEMBLES`.
        timestep_fs: [fs].
        temperature_K: thermostat target [K].
        friction_per_fs: Langevin friction [1/fs]; other thermostats use tau_T = 1/friction,
            barostats tau_P = 10 tau_T.
        pressure_GPa: barostat target [GPa].
        rng: the random stream of the stochastic integrators.
        compressibility_per_GPa: Berendsen barostat compressibility [1/GPa] (water: 0.457).
    """
    if ensemble not in ENSEMBLES:
        raise ValueError(f"unknown ensemble {ensemble!r}; choose from {', '.join(ENSEMBLES)}")
    if friction_per_fs <= 0 and ensemble != "nve":
        raise ValueError(f"ensemble {ensemble} needs a positive --friction (1/fs)")
    if ENSEMBLES[ensemble][2] and not atoms.pbc.all():
        raise ValueError(f"ensemble {ensemble} needs a cell periodic in all three directions")
    dt = timestep_fs * units.fs
    tau_t = units.fs / friction_per_fs if friction_per_fs > 0 else 0.0
    tau_p = 10 * tau_t
    pressure_au = pressure_GPa * units.GPa
    thermostat = {"temperature_K": temperature_K}
    if ensemble == "nve":
        from ase.md.verlet import VelocityVerlet

        return VelocityVerlet(atoms, dt)
    if ensemble == "langevin":
        from ase.md.langevin import Langevin

        return Langevin(atoms, dt, friction=friction_per_fs / units.fs, fixcm=False, rng=rng,
                        **thermostat)
    if ensemble in ("langevin-baoab", "npt-langevin"):
        from ase.md.langevinbaoab import LangevinBAOAB

        barostat = ({"externalstress": -pressure_au, "hydrostatic": True, "P_tau": tau_p}
                    if ensemble == "npt-langevin" else {})
        return LangevinBAOAB(atoms, dt, T_tau=tau_t, rng=rng, **thermostat, **barostat)
    if ensemble == "andersen":
        from ase.md.andersen import Andersen

        return Andersen(atoms, dt, andersen_prob=min(1.0, friction_per_fs * timestep_fs), rng=rng,
                        **thermostat)
    if ensemble == "bussi":
        from ase.md.bussi import Bussi

        return Bussi(atoms, dt, taut=tau_t, rng=rng, **thermostat)
    if ensemble == "nose-hoover":
        from ase.md.nose_hoover_chain import NoseHooverChainNVT

        return NoseHooverChainNVT(atoms, dt, tdamp=tau_t, **thermostat)
    if ensemble == "berendsen":
        from ase.md.nvtberendsen import NVTBerendsen

        return NVTBerendsen(atoms, dt, taut=tau_t, fixcm=True, **thermostat)
    if ensemble in ("npt-berendsen", "npt-berendsen-aniso"):
        from ase.md.nptberendsen import Inhomogeneous_NPTBerendsen, NPTBerendsen

        cls = NPTBerendsen if ensemble == "npt-berendsen" else Inhomogeneous_NPTBerendsen
        return cls(atoms, dt, pressure_au=pressure_au, taut=tau_t, taup=tau_p,
                   compressibility_au=compressibility_per_GPa / units.GPa, **thermostat)
    from ase.md.nose_hoover_chain import MTKNPT, IsotropicMTKNPT

    cls = IsotropicMTKNPT if ensemble == "npt-mtk" else MTKNPT
    return cls(atoms, dt, pressure_au=pressure_au, tdamp=tau_t, pdamp=tau_p, **thermostat)


@dataclass
class MDSettings:
    """What to simulate and how to report it.

    Attributes:
        ensemble: a key of :data:`ENSEMBLES`.
        temperature_K: initial Maxwell-Boltzmann velocities and thermostat target [K]
            (0: start at rest).
        timestep_fs: [fs].
        steps: MD steps.
        friction_per_fs: Langevin friction [1/fs]; tau_T = 1/friction, tau_P = 10 tau_T.
        pressure_GPa: barostat target [GPa].
        compressibility_per_GPa: Berendsen barostat compressibility [1/GPa].
        seed: seeds the velocities and the stochastic thermostats (numpy default_rng).
        log_every: write a log row and a trajectory frame every this many steps.
        trajectory: output trajectory (.traj, or extended XYZ for any other extension).
        log: text log (time, Epot, Ekin, Etot, T; P and V for periodic cells).
        max_energy_drift_per_atom: NVE stops when |Etot - Etot(0)| / N exceeds this [eV].
        max_temperature_K: every ensemble stops above this [K]; None: max(5000, 10 T).
        progress: show a progress bar.
        max_uncertainty: with a model that has an uncertainty (or a committee): the largest
            per-atom force uncertainty allowed [eV/Å]; None: only logged.
        uncertainty_action: "stop" (default) or "warn" when it is exceeded.
        uncertain_frames: extended-XYZ file the offending frames are appended to.
    """

    ensemble: str = "nve"
    temperature_K: float = 300.0
    timestep_fs: float = 0.5
    steps: int = 1000
    friction_per_fs: float = 0.01
    pressure_GPa: float = 0.0
    compressibility_per_GPa: float = 0.457
    seed: int = 0
    log_every: int = 10
    trajectory: str | None = None
    log: str | None = None
    max_energy_drift_per_atom: float = 1.0
    max_temperature_K: float | None = None
    progress: bool = True
    max_uncertainty: float | None = None
    uncertainty_action: str = "stop"
    uncertain_frames: str | None = None

    def uncertainty_watch(self) -> UncertaintyWatch:
        return UncertaintyWatch(self.max_uncertainty, self.uncertainty_action, self.uncertain_frames,
                                self.log_every)

    def temperature_limit(self) -> float:
        if self.max_temperature_K is not None:
            return self.max_temperature_K
        return max(5000.0, 10.0 * self.temperature_K)


def check_stability(step: int, settings: MDSettings, etot: np.ndarray, etot0: np.ndarray,
                    num_atoms: int, temperature_K: float, finite: bool) -> None:
    """The blow-up check of every MD driver (one system or K replicas).

    Args:
        step: the step just taken.
        settings: limits (``max_energy_drift_per_atom`` for NVE, the temperature limit).
        etot, etot0: total energies now and at the start [eV], one per system.
        num_atoms: atoms per system.
        temperature_K: the highest temperature of the systems [K].
        finite: energies and positions are all finite.

    Raises:
        MDInstabilityError: NaN/inf, NVE drift or temperature beyond the limits.
    """
    if not finite:
        raise MDInstabilityError(f"step {step}: NaN/inf in the energies or positions")
    drift = float(np.max(np.abs(np.asarray(etot) - np.asarray(etot0)))) / num_atoms
    if settings.ensemble == "nve" and drift > settings.max_energy_drift_per_atom:
        raise MDInstabilityError(
            f"step {step}: total energy moved {drift:.3f} eV/atom from the start "
            f"(limit {settings.max_energy_drift_per_atom} eV/atom); try a smaller --timestep")
    limit = settings.temperature_limit()
    if temperature_K > limit:
        raise MDInstabilityError(f"step {step}: temperature {temperature_K:.0f} K is above "
                                 f"{limit:.0f} K; try a smaller --timestep")


def initial_velocities(atoms: ase.Atoms, temperature_K: float, rng: np.random.Generator) -> None:
    """Maxwell-Boltzmann momenta at ``temperature_K`` from ``rng``, zero total momentum
    (rescaled back to the drawn temperature, as ASE's ``Stationary`` does)."""
    if temperature_K > 0:
        thermalize_momenta(atoms, temperature_K, rng=rng)
        Stationary(atoms)


def _uncertain_frame(atoms: ase.Atoms, step: int, largest: float, replica: int | None = None) -> ase.Atoms:
    """A copy of ``atoms`` with its energy, forces and uncertainties for the uncertain-frames file."""
    from ase.calculators.singlepoint import SinglePointCalculator

    snap = atoms.copy()
    results = atoms.calc.results
    snap.info.update(md_step=step, max_forces_uncertainty=largest,
                     energy_uncertainty=float(results.get("energy_uncertainty", np.nan)))
    if replica is not None:
        snap.info["replica"] = replica
    snap.arrays["forces_uncertainty"] = np.asarray(results["forces_uncertainty"], dtype=np.float64)
    snap.calc = SinglePointCalculator(snap, energy=results["energy"], forces=results["forces"])
    return snap


def run_md(atoms: ase.Atoms, settings: MDSettings) -> dict[str, Any]:
    """Run MD on ``atoms`` (with a calculator attached) with ASE's integrators.

    Args:
        atoms: the system; its positions and momenta are advanced in place.
        settings: see :class:`MDSettings`.

    Returns:
        summary: steps, seconds, atoms, steps_per_second, ns_per_day, final_temperature_K
        (and max_forces_uncertainty [eV/Å], uncertain_steps for a model with an uncertainty).

    Raises:
        MDInstabilityError: NaN, energy drift or temperature beyond the limits, or the
            calculator refusing the geometry; the trajectory and log so far are kept.
        UncertaintyExceededError: ``max_uncertainty`` passed with ``uncertainty_action="stop"``.
    """
    rng = np.random.default_rng(settings.seed)
    initial_velocities(atoms, settings.temperature_K, rng)
    dyn = make_integrator(atoms, settings.ensemble, settings.timestep_fs, settings.temperature_K,
                          settings.friction_per_fs, settings.pressure_GPa, rng,
                          settings.compressibility_per_GPa)
    n = len(atoms)
    bulk = bool(atoms.pbc.all())  # pressure and volume are logged for fully periodic cells
    atoms.get_potential_energy()
    uncertain = "forces_uncertainty" in atoms.calc.results
    if settings.max_uncertainty is not None and not uncertain:
        raise ValueError("--max-uncertainty needs a model with an uncertainty (training.uncertainty: "
                         "llpr) or a committee file")
    watch = settings.uncertainty_watch()
    names, formats = md_columns(bulk, uncertainty=uncertain)
    log = TextLog(settings.log, names)
    traj = TrajectoryWriter(settings.trajectory) if settings.trajectory else None
    progress = Progress(settings.steps, settings.timestep_fs, f"md {settings.ensemble}",
                        settings.progress)
    start: dict[str, float] = {}

    def observe() -> None:
        step = dyn.nsteps
        epot = atoms.get_potential_energy()
        ekin = atoms.get_kinetic_energy()
        temp = atoms.get_temperature()
        etot = epot + ekin
        start.setdefault("etot", etot)
        largest = float(np.max(atoms.calc.results["forces_uncertainty"])) if uncertain else 0.0
        if step % settings.log_every == 0:
            if traj:
                traj.write(atoms)
            row = [step * settings.timestep_fs / 1000, epot, ekin, etot, temp]
            if bulk:
                row += [pressure_GPa(atoms), atoms.get_volume()]
            log.row(row + ([largest] if uncertain else []), formats)
        if uncertain:
            watch.check(step, largest, lambda: _uncertain_frame(atoms, step, largest))
        finite = bool(np.isfinite(etot) and np.isfinite(atoms.positions).all())
        check_stability(step, settings, np.array([etot]), np.array([start["etot"]]), n, temp, finite)
        progress.update(step, temp)

    dyn.attach(observe, interval=1)  # ASE also calls it before the first step
    error: Exception | None = None
    t0 = time.perf_counter()
    try:
        dyn.run(settings.steps)
    except (MDInstabilityError, FloatingPointError, AtomsTooCloseError) as err:
        error = err
    finally:
        progress.close()
        log.close()
        watch.close()
        if traj:
            traj.close()
    seconds = time.perf_counter() - t0
    steps = dyn.nsteps
    if error is not None:
        kept = f"; trajectory so far kept in {settings.trajectory}" if settings.trajectory else ""
        cls = UncertaintyExceededError if isinstance(error, UncertaintyExceededError) else MDInstabilityError
        raise cls(f"{error} (stopped after {steps} of {settings.steps} steps{kept})") from error
    rate = steps / seconds if seconds > 0 else float("nan")
    return {
        "steps": steps, "seconds": seconds, "atoms": n, "steps_per_second": rate,
        "ns_per_day": ns_per_day(rate, settings.timestep_fs),
        "final_temperature_K": atoms.get_temperature(),
        **(watch.summary() if uncertain else {}),
    }
