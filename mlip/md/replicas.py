"""K independent replicas of one system in one batched model call per step.

ASE drives one system at a time, which leaves a GPU idle on a small molecule. Here K copies
of the system are one K-graph batch on the model's device, advanced by torch-native
integrators with the discretisations of ASE 3.29's ``VelocityVerlet`` and ``Langevin``
(``fixcm=False``): operation for operation, on momenta kept in float64.

Replica r draws its Maxwell-Boltzmann velocities from ``numpy.random.default_rng(seed + r)``
exactly as :func:`mlip.md.ase_driver.run_md` does and, for Langevin, its noise from the
same generator in ASE's order (xi, then eta, each (n, 3), every step): replica r reproduces
a separate ASE run with seed ``seed + r`` (tested to float64 round-off for 30 steps; MD is
chaotic, so the trajectories part later at the rate round-off grows). The noise is drawn on
the host with numpy and copied to the device, 6n numbers per replica and step.

Each replica keeps its own Verlet-skin neighbour list (cutoff + skin, rebuilt only for the
replicas where an atom moved skin/2 or more); every step the concatenated list is filtered
to the cutoff with one mask on the device (or, with the calculator's ``fixed_shapes`` /
``cuda_graphs``, kept whole at fixed shapes, see :class:`~mlip.graph.skin.SkinNeighborList`).

Host round trips per step: one for the neighbour list's rebuild and closest-pair check
(two when a list is rebuilt), plus one for the cutoff filter without fixed shapes. The blow-up checks (NaN/inf forces, energies or positions, NVE
drift, temperature) and the progress bar's temperature read the device every
``CHECK_EVERY`` steps, at logged steps and at the last step, in one transfer; a blow-up in
between is reported at the next check.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import ase
import numpy as np
import torch
from ase import units
from ase.calculators.singlepoint import SinglePointCalculator

from mlip.data import keys
from mlip.data.readers import atoms_to_structure
from mlip.inference.engine import ForceField
from mlip.inference.errors import AtomsTooCloseError, NonFiniteOutputError
from mlip.md.ase_driver import (
    MDInstabilityError,
    MDSettings,
    UncertaintyExceededError,
    check_stability,
    initial_velocities,
)
from mlip.md.output import Progress, TextLog, TrajectoryWriter, md_columns, ns_per_day

SUPPORTED = ("nve", "langevin")
CHECK_EVERY = 10  # steps between blow-up checks (each one read from the device)


class ReplicaSystem:
    """K copies of ``atoms`` tracked by the engine as one batch, each with its own
    Verlet-skin list (:meth:`mlip.inference.engine.ForceField.track`).

    Args:
        engine: the inference engine (model, device, dtype, skin, min_distance).
        atoms: the system (numbers, cell, pbc are shared by the replicas).
        k: number of replicas.
    """

    def __init__(self, engine: ForceField, atoms: ase.Atoms, k: int) -> None:
        self.engine, self.k, self.n = engine, k, len(atoms)
        self.periodic = bool(atoms.pbc.any())
        self.cell = atoms.cell.array.copy() if self.periodic else np.zeros((3, 3))
        self.tracked = engine.track([atoms_to_structure(atoms)] * k, where="replica")

    @property
    def builds(self) -> int:
        """Replica neighbour-list builds so far (the first K included)."""
        return self.tracked.builds

    def compute(self, pos: torch.Tensor, stress: bool = False) -> dict[str, torch.Tensor]:
        """Energies (K,) [eV], forces (K*n, 3) [eV/Å] (float64) and, with ``stress``, (K, 3, 3)
        stress [eV/Å^3] at positions (K*n, 3) [Å]; not checked for NaN/inf (see
        :meth:`finite`), which would read the device every step.

        Raises:
            AtomsTooCloseError: naming the replica.
        """
        out = self.tracked.compute(pos, stress=stress and self.periodic, check_finite=False)
        result = {"energy": out[keys.ENERGY].detach().double(),
                  "forces": out[keys.FORCES].detach().double()}
        if keys.FORCES_UNCERTAINTY in out:
            result["forces_uncertainty"] = out[keys.FORCES_UNCERTAINTY].detach().double()
            result["energy_uncertainty"] = out[keys.ENERGY_UNCERTAINTY].detach().double()
        if stress and self.periodic:
            result["stress"] = out[keys.STRESS].detach().double()
        return result

    def finite(self, out: dict[str, torch.Tensor]) -> torch.Tensor:
        """(K,) bool: the replica's energy and forces are finite (on the device)."""
        return ~self.tracked.non_finite({keys.ENERGY: out["energy"], keys.FORCES: out["forces"]})


def _replica_paths(path: str | None, k: int) -> list[str]:
    """``md.xyz`` -> ``md_r0.xyz``, ``md_r1.xyz``, ... (``.traj`` kept)."""
    if not path:
        return []
    p = Path(path)
    suffix = p.suffix or ".xyz"
    return [str(p.with_name(f"{p.stem}_r{r}{suffix}")) for r in range(k)]


class _Integrator:
    """Momenta and positions of K replicas (float64 on the device), advanced by ASE 3.29's
    ``VelocityVerlet`` or ``Langevin`` (``fixcm=False``) step, operation for operation."""

    def __init__(self, atoms: ase.Atoms, settings: MDSettings, k: int, device: torch.device) -> None:
        f64, self.n, self.k = torch.float64, len(atoms), k
        self.ensemble, self.dt = settings.ensemble, settings.timestep_fs * units.fs
        self.rngs, momenta = [], []
        for r in range(k):  # replica r draws exactly as run_md with seed + r
            rng = np.random.default_rng(settings.seed + r)
            copy = atoms.copy()
            initial_velocities(copy, settings.temperature_K, rng)
            self.rngs.append(rng)
            momenta.append(copy.get_momenta())
        self.pos = torch.as_tensor(np.tile(atoms.positions, (k, 1)), dtype=f64, device=device)
        self.mom = torch.as_tensor(np.concatenate(momenta), dtype=f64, device=device)
        self.masses = torch.as_tensor(np.tile(atoms.get_masses(), k), dtype=f64, device=device)[:, None]
        if self.ensemble == "langevin":  # ASE Langevin.updatevars
            dt = self.dt
            fr, kt = settings.friction_per_fs / units.fs, units.kB * settings.temperature_K
            sigma = torch.sqrt(2 * kt * fr / self.masses)
            self.c1 = dt / 2.0 - dt * dt * fr / 8.0
            self.c2 = dt * fr / 2 - dt * dt * fr * fr / 8.0
            self.c3 = math.sqrt(dt) * sigma / 2.0 - dt**1.5 * fr * sigma / 8.0
            self.c5 = dt**1.5 * sigma / (2 * math.sqrt(3))
            self.c4 = fr / 2.0 * self.c5

    def kinetic(self) -> torch.Tensor:
        """(K,) kinetic energies [eV]."""
        return (0.5 * self.mom * self.mom / self.masses).sum(1).view(self.k, self.n).sum(1)

    def temperatures(self) -> torch.Tensor:
        """(K,) temperatures [K]."""
        return 2 * self.kinetic() / (3 * self.n * units.kB)

    def step(self, forces: torch.Tensor, forces_at) -> torch.Tensor:
        """One step from the current forces; ``forces_at()`` evaluates the new positions'
        outputs (returned)."""
        dt, m = self.dt, self.masses
        if self.ensemble == "nve":  # ASE VelocityVerlet.step
            self.mom = self.mom + 0.5 * dt * forces
            self.pos = self.pos + dt * self.mom / m
            out = forces_at()
            self.mom = self.mom + 0.5 * dt * out["forces"]
            return out
        # ASE Langevin.step, fixcm=False: noise xi then eta per replica, in ASE's order
        noise = [(g.standard_normal(size=(self.n, 3)), g.standard_normal(size=(self.n, 3))) for g in self.rngs]
        xi = torch.as_tensor(np.concatenate([a for a, _ in noise]), dtype=m.dtype, device=m.device)
        eta = torch.as_tensor(np.concatenate([b for _, b in noise]), dtype=m.dtype, device=m.device)
        rnd_pos = self.c5 * eta
        rnd_vel = self.c3 * xi - self.c4 * eta
        v = self.mom / m
        v = v + (self.c1 * forces / m - self.c2 * v + rnd_vel)
        x = self.pos
        self.pos = x + dt * v + rnd_pos
        v = (self.pos - x - rnd_pos) / dt
        out = forces_at()
        v = v + (self.c1 * out["forces"] / m - self.c2 * v + rnd_vel)
        self.mom = v * m
        return out


class _Recorder:
    """Log rows, trajectory frames and the blow-up checks of K replicas."""

    def __init__(self, atoms: ase.Atoms, settings: MDSettings, system: ReplicaSystem,
                 state: _Integrator) -> None:
        self.atoms, self.settings, self.system, self.state = atoms, settings, system, state
        self.bulk = bool(atoms.pbc.all())  # P and V are logged (and stress computed) for bulk cells
        self.paths = _replica_paths(settings.trajectory, system.k)
        self.writers = [TrajectoryWriter(p) for p in self.paths]
        self.uncertain = system.engine.has_uncertainty
        if settings.max_uncertainty is not None and not self.uncertain:
            raise ValueError("--max-uncertainty needs a model with an uncertainty (training.uncertainty: "
                             "llpr) or a committee file")
        self.watch = settings.uncertainty_watch()
        self.names, self.formats = md_columns(self.bulk, replicas=True, uncertainty=self.uncertain)
        self.log = TextLog(settings.log, self.names)
        self.etot0: torch.Tensor | None = None
        self.temperature = settings.temperature_K  # the progress bar's, as of the last check

    def close(self) -> None:
        self.log.close()
        self.watch.close()
        for writer in self.writers:
            writer.close()

    def wants_stress(self, step: int) -> bool:
        return self.bulk and step % self.settings.log_every == 0

    def record(self, step: int, out: dict[str, torch.Tensor]) -> None:
        """Log and write the logged steps; check for blow-ups every CHECK_EVERY steps, at
        logged steps and at the last (one read from the device)."""
        settings, state = self.settings, self.state
        ekin = state.kinetic()
        etot = out["energy"] + ekin
        temps = 2 * ekin / (3 * state.n * units.kB)
        self.etot0 = etot.clone() if self.etot0 is None else self.etot0
        largest = None
        logged = step % settings.log_every == 0
        if self.uncertain and (logged or settings.max_uncertainty is not None):
            # (K,) largest per-atom force uncertainty of each replica, only when it is used
            largest = out["forces_uncertainty"].view(state.k, state.n).amax(dim=1)
        if logged:
            self._write(step, out, ekin, etot, temps, largest)
        if largest is not None and settings.max_uncertainty is not None:
            worst = largest.max()
            if bool(worst > settings.max_uncertainty):  # one read per step with a limit
                r = int(largest.argmax())
                self.watch.check(step, float(worst), lambda: self._snapshot(r, out, float(worst), step))
        if step % CHECK_EVERY and step % settings.log_every and step != settings.steps:
            return
        model_ok = self.system.finite(out)
        finite = (torch.isfinite(etot) & torch.isfinite(state.pos).view(state.k, -1).all(dim=1)).to(torch.float64)
        host = torch.stack([model_ok.to(torch.float64), finite, etot, self.etot0, temps]).cpu().numpy()
        if not host[0].all():
            bad = np.flatnonzero(host[0] == 0).tolist()
            raise NonFiniteOutputError(f"step {step}: the model returned NaN/inf for replica(s) "
                                       f"{bad[:10]}: the structure left the training data (try a "
                                       "smaller --timestep)")
        check_stability(step, settings, host[2], host[3], state.n, float(host[4].max()), bool(host[1].all()))
        self.temperature = float(host[4].mean())

    def _snapshot(self, r: int, out: dict[str, torch.Tensor], largest: float, step: int) -> ase.Atoms:
        """Replica r now, with its energy, forces and uncertainties (the uncertain-frames file)."""
        k, n = self.state.k, self.state.n
        snap = self.atoms.copy()
        snap.positions = self.state.pos.view(k, n, 3)[r].cpu().numpy()
        snap.set_momenta(self.state.mom.view(k, n, 3)[r].cpu().numpy())
        snap.info.update(replica=r, md_step=step, max_forces_uncertainty=largest,
                         energy_uncertainty=float(out["energy_uncertainty"][r]))
        snap.arrays["forces_uncertainty"] = out["forces_uncertainty"].view(k, n)[r].cpu().numpy()
        snap.calc = SinglePointCalculator(snap, energy=float(out["energy"][r]),
                                          forces=out["forces"].view(k, n, 3)[r].cpu().numpy())
        return snap

    def _write(self, step: int, out: dict[str, torch.Tensor], ekin: torch.Tensor, etot: torch.Tensor,
               temps: torch.Tensor, largest: torch.Tensor | None = None) -> None:
        state, k, n = self.state, self.state.k, self.state.n
        host = {"etot": etot.cpu().numpy(), "ekin": ekin.cpu().numpy(), "t": temps.cpu().numpy(),
                "e": out["energy"].cpu().numpy(), "pos": state.pos.view(k, n, 3).cpu().numpy(),
                "mom": state.mom.view(k, n, 3).cpu().numpy(), "f": out["forces"].view(k, n, 3).cpu().numpy()}
        stress = out["stress"].cpu().numpy() if "stress" in out else None
        worst = largest.cpu().numpy() if largest is not None else None
        if worst is not None:
            self.watch.largest = max(self.watch.largest, float(worst.max()))
        volume = abs(np.linalg.det(self.system.cell))
        masses = self.atoms.get_masses()[:, None]
        for r in range(k):
            row = [r, step * self.settings.timestep_fs / 1000, host["e"][r], host["ekin"][r],
                   host["etot"][r], host["t"][r]]
            if self.bulk:  # ASE's ideal-gas term: sum(p p^T / m) / V
                kinetic = np.einsum("ni,nj->ij", host["mom"][r] / masses, host["mom"][r]) / volume
                row += [float(np.trace(kinetic - stress[r])) / 3 / units.GPa, volume]
            if worst is not None:
                row.append(float(worst[r]))
            self.log.row(row, self.formats)
        for r, writer in enumerate(self.writers):
            snap = self.atoms.copy()
            snap.positions = host["pos"][r]
            snap.set_momenta(host["mom"][r])
            snap.info["replica"] = r
            snap.calc = SinglePointCalculator(snap, energy=float(host["e"][r]), forces=host["f"][r])
            writer.write(snap)


def run_replicas(engine: ForceField, atoms: ase.Atoms, settings: MDSettings, k: int) -> dict[str, Any]:
    """Run K independent replicas of ``atoms`` with one batched model call per step.

    Args:
        engine: the inference engine (its model, device, dtype, skin and min_distance).
        atoms: the starting structure (not modified).
        settings: as for :func:`mlip.md.ase_driver.run_md`; ensemble "nve" or "langevin".
            ``trajectory`` ``out.xyz`` becomes ``out_r0.xyz``, ``out_r1.xyz``, ...; the log
            has a leading replica column.
        k: number of replicas (seeds ``settings.seed + r``).

    Returns:
        summary as :func:`run_md`'s (steps_per_second counts batched steps) plus replicas,
        neighbor_builds, and the final positions [Å] and velocities [Å/ASE time] (K, n, 3).

    Raises:
        MDInstabilityError: a replica blew up; trajectories and log so far are kept.
    """
    if settings.ensemble not in SUPPORTED:
        raise ValueError(f"--replicas supports the ensembles {', '.join(SUPPORTED)}, "
                         f"not {settings.ensemble!r}; run it without --replicas")
    n = len(atoms)
    state = _Integrator(atoms, settings, k, engine.device)
    system = ReplicaSystem(engine, atoms, k)
    recorder = _Recorder(atoms, settings, system, state)
    progress = Progress(settings.steps, settings.timestep_fs, f"md {settings.ensemble} x{k}",
                        settings.progress)
    t0 = time.perf_counter()
    step = 0
    try:
        out = system.compute(state.pos, stress=recorder.wants_stress(0))
        recorder.record(0, out)
        progress.update(0, recorder.temperature)
        for step in range(1, settings.steps + 1):
            out = state.step(out["forces"], lambda: system.compute(state.pos, stress=recorder.wants_stress(step)))  # noqa: B023
            recorder.record(step, out)
            progress.update(step, recorder.temperature)
    except (MDInstabilityError, FloatingPointError, AtomsTooCloseError) as err:
        kept = f"; trajectories so far kept in {', '.join(recorder.paths)}" if recorder.paths else ""
        cls = UncertaintyExceededError if isinstance(err, UncertaintyExceededError) else MDInstabilityError
        raise cls(f"{err} (stopped after step {step} of {settings.steps}{kept})") from err
    finally:
        progress.close()
        recorder.close()
    seconds = time.perf_counter() - t0
    rate = settings.steps / seconds
    return {
        "steps": settings.steps, "seconds": seconds, "atoms": n, "replicas": k,
        "steps_per_second": rate, "ns_per_day": ns_per_day(rate, settings.timestep_fs),
        "final_temperature_K": float(state.temperatures().mean()),
        "positions": state.pos.view(k, n, 3).cpu().numpy(),
        "velocities": (state.mom / state.masses).view(k, n, 3).cpu().numpy(),
        "neighbor_builds": system.builds,
        **(recorder.watch.summary() if recorder.uncertain else {}),
    }
