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
to the cutoff with one mask on the device.
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
    build_edges,
    closest_pair,
    edges_within,
)
from mlip.data import keys
from mlip.md.ase_driver import MDInstabilityError, MDSettings, initial_velocities
from mlip.md.output import Progress, TextLog, TrajectoryWriter, md_columns, ns_per_day

SUPPORTED = ("nve", "langevin")


class ReplicaSystem:
    """K copies of ``atoms`` as one batch on the calculator's device, with per-replica skins.

    Args:
        calc: supplies the model, device, dtype, cutoff, skin and min_distance.
        atoms: the system (numbers, cell, pbc are shared by the replicas).
        k: number of replicas.
    """

    def __init__(self, calc: MLIPCalculator, atoms: ase.Atoms, k: int) -> None:
        calc._check_elements(atoms.numbers)
        self.calc, self.k, self.n = calc, k, len(atoms)
        self.numbers = atoms.numbers.copy()
        dev, dt = calc.device, calc.dtype
        self.periodic = bool(atoms.pbc.any())
        self.cell = atoms.cell.array.copy() if self.periodic else np.zeros((3, 3))
        self.pbc = atoms.pbc.copy()
        self.static = {
            keys.ATOMIC_NUMBERS: torch.as_tensor(atoms.numbers, dtype=torch.long, device=dev).repeat(k),
            keys.BATCH: torch.arange(k, device=dev).repeat_interleave(self.n),
            keys.CELL: torch.as_tensor(self.cell, dtype=dt, device=dev).expand(k, 3, 3).contiguous(),
            keys.PBC: torch.as_tensor(self.pbc, device=dev).expand(k, 3).contiguous(),
            keys.NUM_ATOMS: torch.full((k,), self.n, dtype=torch.long, device=dev),
        }
        self._edges: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.ref: torch.Tensor | None = None  # (K, n, 3) positions at each replica's last build
        self.builds = 0  # replica neighbour-list builds

    def _rebuild(self, pos: torch.Tensor, which: list[int]) -> None:
        radius = self.calc.cutoff + max(self.calc.skin, 0.0)
        view = pos.detach().view(self.k, self.n, 3)
        if self.ref is None:
            self.ref = view.clone()
            self._edges = [None] * self.k  # type: ignore[list-item]
        for r in which:
            ei, shifts = build_edges(view[r], self.cell, self.pbc, radius, self.calc.device,
                                     self.calc.dtype)
            self._edges[r] = (ei.to(self.calc.device) + r * self.n, shifts.to(self.calc.device))
            self.ref[r] = view[r]
            self.builds += 1
        self.edge_index = torch.cat([e for e, _ in self._edges], dim=1)
        self.shifts = torch.cat([s for _, s in self._edges])

    def update_graph(self, pos: torch.Tensor) -> None:
        """Rebuild the lists of the replicas where an atom moved >= skin/2 (one host sync)."""
        if self.ref is None or self.calc.skin <= 0:
            self._rebuild(pos, list(range(self.k)))
            return
        moved = (pos.detach().view(self.k, self.n, 3) - self.ref).norm(dim=-1).amax(dim=1)
        stale = moved >= 0.5 * self.calc.skin
        if bool(stale.any()):
            self._rebuild(pos, stale.nonzero().flatten().tolist())

    def compute(self, pos: torch.Tensor, stress: bool = False) -> dict[str, torch.Tensor]:
        """Energies (K,) [eV], forces (K*n, 3) [eV/Å] (float64) and, with ``stress``, (K, 3, 3)
        stress [eV/Å^3] at positions (K*n, 3) [Å].

        Raises:
            AtomsTooCloseError / NonFiniteOutputError: as the calculator does, naming the replica.
        """
        self.update_graph(pos)
        x = pos.to(self.calc.dtype)
        ei, shifts, lengths = edges_within(x, self.edge_index, self.shifts, self.static[keys.CELL],
                                           self.static[keys.BATCH], self.calc.cutoff)
        pair = closest_pair(lengths, self.edge_index, self.calc.min_distance)
        if pair is not None:
            i, j, d = pair
            raise AtomsTooCloseError(f"replica {i // self.n}: " + self.calc.too_close_message(
                np.tile(self.numbers, self.k), i % self.n, j % self.n, d))
        data = dict(self.static)
        data.update({keys.POSITIONS: x, keys.EDGE_INDEX: ei, keys.CELL_SHIFTS: shifts})
        out = self.calc.model(data, compute_forces=True, compute_stress=stress and self.periodic)
        result = {"energy": out[keys.ENERGY].detach().double(),
                  "forces": out[keys.FORCES].detach().double()}
        if stress and self.periodic:
            result["stress"] = out[keys.STRESS].detach().double()
        finite = torch.isfinite(result["forces"]).view(self.k, -1).all(dim=1) & torch.isfinite(result["energy"])
        if not bool(finite.all()):
            bad = (~finite).nonzero().flatten().tolist()
            raise NonFiniteOutputError(f"the model returned NaN/inf for replica(s) {bad[:10]}: the "
                                       "structure left the training data (try a smaller --timestep)")
        return result


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
    periodic = bool(atoms.pbc.all())
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
    names, formats = md_columns(periodic, replicas=True)
    log = TextLog(settings.log, names)
    progress = Progress(settings.steps, settings.timestep_fs, f"md {settings.ensemble} x{k}",
                        settings.progress)
    t_limit = settings.temperature_limit()
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
                if periodic:  # ASE's ideal-gas term: sum(p p^T / m) / V
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
        if not bool(torch.isfinite(etot).all() & torch.isfinite(pos).all()):
            raise MDInstabilityError(f"step {step}: NaN/inf in the energies or positions")
        drift = float(((etot - etot0).abs() / n).max())
        if settings.ensemble == "nve" and drift > settings.max_energy_drift_per_atom:
            raise MDInstabilityError(f"step {step}: total energy moved {drift:.3f} eV/atom from the "
                                     f"start (limit {settings.max_energy_drift_per_atom}); try a smaller "
                                     "--timestep")
        t_max = float(temps.max())
        if t_max > t_limit:
            raise MDInstabilityError(f"step {step}: temperature {t_max:.0f} K is above {t_limit:.0f} K; "
                                     "try a smaller --timestep")
        return float(temps.mean())

    def forces_at(step: int) -> dict[str, torch.Tensor]:
        return system.compute(pos, stress=periodic and step % settings.log_every == 0)

    t0 = time.perf_counter()
    step = 0
    try:
        out = forces_at(0)
        progress.update(0, record(0, out))
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
            progress.update(step, record(step, out))
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
