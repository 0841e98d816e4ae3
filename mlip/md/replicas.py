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

from mlip.calculator.calculator import (
    AtomsTooCloseError,
    MLIPCalculator,
    NonFiniteOutputError,
    too_close_message,
)
from mlip.data import keys
from mlip.data.readers import atoms_to_structure
from mlip.graph.skin import SkinNeighborList
from mlip.md.ase_driver import MDInstabilityError, MDSettings, check_stability, initial_velocities
from mlip.md.output import Progress, TextLog, TrajectoryWriter, md_columns, ns_per_day

SUPPORTED = ("nve", "langevin")
CHECK_EVERY = 10  # steps between blow-up checks (each one read from the device)


class ReplicaSystem:
    """K copies of ``atoms`` as one batch on the calculator's device, each with its own
    Verlet-skin list (:class:`mlip.graph.skin.SkinNeighborList`).

    Args:
        calc: supplies the model, device, dtype, cutoff, skin and min_distance.
        atoms: the system (numbers, cell, pbc are shared by the replicas).
        k: number of replicas.
    """

    def __init__(self, calc: MLIPCalculator, atoms: ase.Atoms, k: int) -> None:
        calc.model.check_elements(atoms.numbers)
        self.calc, self.k, self.n = calc, k, len(atoms)
        self.numbers = atoms.numbers.copy()
        self.periodic = bool(atoms.pbc.any())
        self.cell = atoms.cell.array.copy() if self.periodic else np.zeros((3, 3))
        self.neighbors = SkinNeighborList(calc.cutoff, calc.skin, calc.dtype, calc.device,
                                          fixed_shapes=calc.fixed_shapes)
        self.neighbors.reset([atoms_to_structure(atoms)] * k)

    @property
    def builds(self) -> int:
        """Replica neighbour-list builds so far (the first K included)."""
        return self.neighbors.builds

    def compute(self, pos: torch.Tensor, stress: bool = False) -> dict[str, torch.Tensor]:
        """Energies (K,) [eV], forces (K*n, 3) [eV/Å] (float64) and, with ``stress``, (K, 3, 3)
        stress [eV/Å^3] at positions (K*n, 3) [Å]; not checked for NaN/inf (see
        :meth:`finite`), which would read the device every step.

        Raises:
            AtomsTooCloseError: as the calculator does, naming the replica.
        """
        data = self.neighbors.batch(pos)
        pair = self.neighbors.closest_pair(self.calc.min_distance)
        if pair is not None:
            i, j, d = pair
            raise AtomsTooCloseError(f"replica {i // self.n}: " + too_close_message(
                self.numbers, i % self.n, j % self.n, d, self.calc.min_distance))
        out = self.neighbors.real(self.calc.evaluate(data, stress and self.periodic))
        result = {"energy": out[keys.ENERGY].detach().double(),
                  "forces": out[keys.FORCES].detach().double()}
        if stress and self.periodic:
            result["stress"] = out[keys.STRESS].detach().double()
        return result

    def finite(self, out: dict[str, torch.Tensor]) -> torch.Tensor:
        """(K,) bool: the replica's energy and forces are finite (on the device)."""
        return torch.isfinite(out["forces"]).view(self.k, -1).all(dim=1) & torch.isfinite(out["energy"])


def _replica_paths(path: str | None, k: int) -> list[str]:
    """``md.xyz`` -> ``md_r0.xyz``, ``md_r1.xyz``, ... (``.traj`` kept)."""
    if not path:
        return []
    p = Path(path)
    suffix = p.suffix or ".xyz"
    return [str(p.with_name(f"{p.stem}_r{r}{suffix}")) for r in range(k)]


def run_replicas(calc: MLIPCalculator, atoms: ase.Atoms, settings: MDSettings, k: int) -> dict[str, Any]:
    """Run K independent replicas of ``atoms`` with one batched model call per step.

    Args:
        calc: the calculator whose model, device, dtype, skin and min_distance are used.
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
    dev, f64, n = calc.device, torch.float64, len(atoms)
    rngs, momenta = [], []
    for r in range(k):
        rng = np.random.default_rng(settings.seed + r)
        copy = atoms.copy()
        initial_velocities(copy, settings.temperature_K, rng)
        rngs.append(rng)
        momenta.append(copy.get_momenta())
    pos = torch.as_tensor(np.tile(atoms.positions, (k, 1)), dtype=f64, device=dev)
    mom = torch.as_tensor(np.concatenate(momenta), dtype=f64, device=dev)
    masses = torch.as_tensor(np.tile(atoms.get_masses(), k), dtype=f64, device=dev)[:, None]
    dt = settings.timestep_fs * units.fs
    system = ReplicaSystem(calc, atoms, k)
    bulk = bool(atoms.pbc.all())  # P and V are logged (and stress computed) for bulk cells
    if settings.ensemble == "langevin":  # ASE Langevin.updatevars
        fr, kt = settings.friction_per_fs / units.fs, units.kB * settings.temperature_K
        sigma = torch.sqrt(2 * kt * fr / masses)
        c1 = dt / 2.0 - dt * dt * fr / 8.0
        c2 = dt * fr / 2 - dt * dt * fr * fr / 8.0
        c3 = math.sqrt(dt) * sigma / 2.0 - dt**1.5 * fr * sigma / 8.0
        c5 = dt**1.5 * sigma / (2 * math.sqrt(3))
        c4 = fr / 2.0 * c5

    paths = _replica_paths(settings.trajectory, k)
    writers = [TrajectoryWriter(p) for p in paths]
    names, formats = md_columns(bulk, replicas=True)
    log = TextLog(settings.log, names)
    progress = Progress(settings.steps, settings.timestep_fs, f"md {settings.ensemble} x{k}",
                        settings.progress)
    etot0 = None

    def record(step: int, out: dict[str, torch.Tensor]) -> float:
        nonlocal etot0
        ekin = (0.5 * mom * mom / masses).sum(1).view(k, n).sum(1)
        etot = out["energy"] + ekin
        temps = 2 * ekin / (3 * n * units.kB)
        etot0 = etot.clone() if etot0 is None else etot0
        if step % settings.log_every == 0:
            host = {"etot": etot.cpu().numpy(), "ekin": ekin.cpu().numpy(), "t": temps.cpu().numpy(),
                    "e": out["energy"].cpu().numpy(), "pos": pos.view(k, n, 3).cpu().numpy(),
                    "mom": mom.view(k, n, 3).cpu().numpy(), "f": out["forces"].view(k, n, 3).cpu().numpy()}
            stress = out["stress"].cpu().numpy() if "stress" in out else None
            volume = abs(np.linalg.det(system.cell))
            for r in range(k):
                row = [r, step * settings.timestep_fs / 1000, host["e"][r], host["ekin"][r],
                       host["etot"][r], host["t"][r]]
                if bulk:  # ASE's ideal-gas term: sum(p p^T / m) / V
                    kinetic = np.einsum("ni,nj->ij", host["mom"][r] / atoms.get_masses()[:, None],
                                        host["mom"][r]) / volume
                    row += [float(np.trace(kinetic - stress[r])) / 3 / units.GPa, volume]
                log.row(row, formats)
            for r, writer in enumerate(writers):
                snap = atoms.copy()
                snap.positions = host["pos"][r]
                snap.set_momenta(host["mom"][r])
                snap.info["replica"] = r
                snap.calc = SinglePointCalculator(snap, energy=float(host["e"][r]), forces=host["f"][r])
                writer.write(snap)
        if step % CHECK_EVERY and step % settings.log_every and step != settings.steps:
            return None
        model_ok = system.finite(out)
        finite = (torch.isfinite(etot) & torch.isfinite(pos).view(k, -1).all(dim=1)).to(f64)
        host = torch.stack([model_ok.to(f64), finite, etot, etot0, temps]).cpu().numpy()  # one read
        if not host[0].all():
            bad = np.flatnonzero(host[0] == 0).tolist()
            raise NonFiniteOutputError(f"step {step}: the model returned NaN/inf for replica(s) "
                                       f"{bad[:10]}: the structure left the training data (try a "
                                       "smaller --timestep)")
        check_stability(step, settings, host[2], host[3], n, float(host[4].max()), bool(host[1].all()))
        return float(host[4].mean())

    def forces_at(step: int) -> dict[str, torch.Tensor]:
        return system.compute(pos, stress=bulk and step % settings.log_every == 0)

    t0 = time.perf_counter()
    step = 0
    temperature = settings.temperature_K  # the progress bar's, as of the last check

    def report(step: int, out: dict[str, torch.Tensor]) -> None:
        nonlocal temperature
        checked = record(step, out)
        temperature = temperature if checked is None else checked
        progress.update(step, temperature)

    try:
        out = forces_at(0)
        report(0, out)
        for step in range(1, settings.steps + 1):
            if settings.ensemble == "nve":  # ASE VelocityVerlet.step
                mom = mom + 0.5 * dt * out["forces"]
                pos = pos + dt * mom / masses
                out = forces_at(step)
                mom = mom + 0.5 * dt * out["forces"]
            else:  # ASE Langevin.step, fixcm=False
                noise = [(g.standard_normal(size=(n, 3)), g.standard_normal(size=(n, 3))) for g in rngs]
                xi = torch.as_tensor(np.concatenate([a for a, _ in noise]), dtype=f64, device=dev)
                eta = torch.as_tensor(np.concatenate([b for _, b in noise]), dtype=f64, device=dev)
                rnd_pos = c5 * eta
                rnd_vel = c3 * xi - c4 * eta
                v = mom / masses
                v = v + (c1 * out["forces"] / masses - c2 * v + rnd_vel)
                x = pos
                pos = x + dt * v + rnd_pos
                v = (pos - x - rnd_pos) / dt
                out = forces_at(step)
                v = v + (c1 * out["forces"] / masses - c2 * v + rnd_vel)
                mom = v * masses
            report(step, out)
    except (MDInstabilityError, FloatingPointError, AtomsTooCloseError) as err:
        kept = f"; trajectories so far kept in {', '.join(paths)}" if paths else ""
        raise MDInstabilityError(f"{err} (stopped after step {step} of {settings.steps}{kept})") from err
    finally:
        progress.close()
        log.close()
        for writer in writers:
            writer.close()
    seconds = time.perf_counter() - t0
    temps = (0.5 * mom * mom / masses).sum(1).view(k, n).sum(1) * 2 / (3 * n * units.kB)
    rate = settings.steps / seconds
    return {
        "steps": settings.steps, "seconds": seconds, "atoms": n, "replicas": k,
        "steps_per_second": rate, "ns_per_day": ns_per_day(rate, settings.timestep_fs),
        "final_temperature_K": float(temps.mean()),
        "positions": pos.view(k, n, 3).cpu().numpy(),
        "velocities": (mom / masses).view(k, n, 3).cpu().numpy(),
        "neighbor_builds": system.builds,
    }
