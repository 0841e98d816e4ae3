"""K independent replicas of one system in one batched model call per step.

Torch-native velocity Verlet (NVE) and Langevin (the discretisation of ASE's ``Langevin``,
fixcm=False) on the model's device, so a GPU is not idle on small molecules. Replica r
starts from Maxwell-Boltzmann velocities drawn with ``numpy.random.default_rng(seed + r)``
and, for Langevin, draws its noise from the same generator in ASE's order: with the same
seeds, replica r reproduces a separate ``mlip md`` run with ``--seed seed+r``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import ase
import ase.io
import numpy as np
import torch
from ase import units
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary
from tqdm.auto import tqdm

from mlip.calculator.calculator import MLIPCalculator
from mlip.data import keys
from mlip.graph.edges import edge_vectors
from mlip.graph.neighbors import neighbor_list
from mlip.md.ase_driver import MDInstabilityError, MDSettings

SUPPORTED = ("nve", "langevin")


class ReplicaBatch:
    """The K-replica graph with a shared Verlet skin, on the calculator's device."""

    def __init__(self, calc: MLIPCalculator, atoms: ase.Atoms, k: int) -> None:
        self.calc, self.k, self.n = calc, k, len(atoms)
        calc._check_elements(atoms.numbers)
        dev, dt = calc.device, calc.dtype
        self.periodic = bool(atoms.pbc.any())
        cell = atoms.cell.array if self.periodic else np.zeros((3, 3))
        self.cell_np, self.pbc_np = cell, atoms.pbc.copy()
        self.static = {
            keys.ATOMIC_NUMBERS: torch.as_tensor(atoms.numbers, device=dev).repeat(k),
            keys.BATCH: torch.arange(k, device=dev).repeat_interleave(self.n),
            keys.CELL: torch.as_tensor(cell, dtype=dt, device=dev).expand(k, 3, 3).contiguous(),
            keys.PBC: torch.as_tensor(atoms.pbc, device=dev).expand(k, 3).contiguous(),
            keys.NUM_ATOMS: torch.full((k,), self.n, device=dev),
        }
        self.ref: torch.Tensor | None = None
        self.builds = 0

    def _build(self, pos: torch.Tensor) -> None:
        radius = self.calc.cutoff + self.calc.skin
        edges, shifts = [], []
        for r in range(self.k):
            p = pos[r * self.n:(r + 1) * self.n]
            if p.device.type == "cpu":
                ei, s = neighbor_list(p.detach().double().numpy(), self.cell_np, self.pbc_np, radius)
                ei, s = torch.from_numpy(ei), torch.from_numpy(s)
            else:
                ei, s = neighbor_list(p.detach().double(), torch.as_tensor(self.cell_np, device=p.device),
                                      torch.as_tensor(self.pbc_np, device=p.device), radius)
            edges.append(ei.to(pos.device) + r * self.n)
            shifts.append(s.to(pos.device))
        self.edge_index = torch.cat(edges, dim=1)
        self.shifts = torch.cat(shifts).to(self.calc.dtype)
        self.ref = pos.detach().clone()
        self.builds += 1

    def energy_forces(self, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(K,) energies [eV] and (K*n, 3) forces [eV/Å] at positions (K*n, 3)."""
        if self.ref is None or self.calc.skin <= 0 or bool(
            ((pos - self.ref).norm(dim=1) >= 0.5 * self.calc.skin).any()
        ):
            self._build(pos)
        x = pos.to(self.calc.dtype)
        with torch.no_grad():
            inside = edge_vectors(x, self.edge_index, self.shifts, self.static[keys.CELL],
                                  self.static[keys.BATCH]).norm(dim=1) < self.calc.cutoff
        data = dict(self.static)
        data.update({keys.POSITIONS: x, keys.EDGE_INDEX: self.edge_index[:, inside],
                     keys.CELL_SHIFTS: self.shifts[inside]})
        out = self.calc.model(data, compute_forces=True)
        return out[keys.ENERGY].detach(), out[keys.FORCES].detach().to(pos.dtype)


def run_replicas(calc: MLIPCalculator, atoms: ase.Atoms, settings: MDSettings, k: int) -> dict[str, Any]:
    """Run K replicas; writes <out>_r<i><suffix> trajectories and one log with a replica
    column. Returns a summary like :func:`mlip.md.ase_driver.run_md`."""
    if settings.ensemble not in SUPPORTED:
        raise ValueError(f"--replicas supports {SUPPORTED}, not {settings.ensemble!r}")
    dev = calc.device
    n = len(atoms)
    rngs, starts = [], []
    for r in range(k):
        rng = np.random.default_rng(settings.seed + r)
        copy = atoms.copy()
        if settings.temperature_K > 0:
            MaxwellBoltzmannDistribution(copy, temperature_K=settings.temperature_K, rng=rng)
            Stationary(copy)
        rngs.append(rng)
        starts.append(copy)
    f64 = torch.float64
    pos = torch.as_tensor(np.concatenate([a.positions for a in starts]), dtype=f64, device=dev)
    vel = torch.as_tensor(np.concatenate([a.get_velocities() for a in starts]), dtype=f64, device=dev)
    masses = torch.as_tensor(np.tile(atoms.get_masses(), k), dtype=f64, device=dev)[:, None]
    dt = settings.timestep_fs * units.fs
    system = ReplicaBatch(calc, atoms, k)
    energy, forces = system.energy_forces(pos)
    if settings.ensemble == "langevin":
        fr, temp = settings.friction_per_fs / units.fs, units.kB * settings.temperature_K
        sigma = torch.sqrt(2 * temp * fr / masses)
        c1 = dt / 2.0 - dt * dt * fr / 8.0
        c2 = dt * fr / 2 - dt * dt * fr * fr / 8.0
        c3 = np.sqrt(dt) * sigma / 2.0 - dt**1.5 * fr * sigma / 8.0
        c5 = dt**1.5 * sigma / (2 * np.sqrt(3))
        c4 = fr / 2.0 * c5

    writers = _trajectory_paths(settings.trajectory, k)
    for path in writers:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text("")
    log = open(settings.log, "w") if settings.log else None  # noqa: SIM115
    if log:
        log.write("# replica time[ps] Epot[eV] Ekin[eV] Etot[eV] T[K]\n")
    e_start = None

    def record(step: int) -> None:
        nonlocal e_start
        ekin = (0.5 * masses * vel.square()).sum(1).view(k, n).sum(1)
        etot = energy.to(f64) + ekin
        if e_start is None:
            e_start = etot.clone()
        if not bool(torch.isfinite(etot).all()):
            raise MDInstabilityError(f"step {step}: NaN in energies")
        drift = ((etot - e_start).abs() / n).max()
        if settings.ensemble == "nve" and float(drift) > settings.max_energy_drift_per_atom:
            raise MDInstabilityError(f"step {step}: total energy moved {float(drift):.3f} eV/atom")
        if step % settings.log_every:
            return
        temps = ekin / (1.5 * units.kB * n)
        if log:
            for r in range(k):
                log.write(f"{r} {step * settings.timestep_fs / 1000:.5f} {float(energy[r]):.6f} "
                          f"{float(ekin[r]):.6f} {float(etot[r]):.6f} {float(temps[r]):.2f}\n")
        if writers:
            p = pos.cpu().numpy().reshape(k, n, 3)
            v = vel.cpu().numpy().reshape(k, n, 3)
            for r, path in enumerate(writers):
                snap = atoms.copy()
                snap.positions, snap.info["replica"] = p[r], r
                snap.set_velocities(v[r])
                ase.io.write(path, snap, append=True, format="extxyz")

    bar = tqdm(total=settings.steps, desc=f"md {settings.ensemble} x{k}", unit="step",
               disable=not settings.progress)
    t0 = time.perf_counter()
    step = 0
    try:
        record(0)
        for step in range(1, settings.steps + 1):
            if settings.ensemble == "nve":
                p = vel * masses + 0.5 * dt * forces
                pos = pos + dt * p / masses
                energy, forces = system.energy_forces(pos)
                vel = (p + 0.5 * dt * forces) / masses
            else:
                noise = [(g.standard_normal((n, 3)), g.standard_normal((n, 3))) for g in rngs]
                xi = torch.as_tensor(np.concatenate([a for a, _ in noise]), dtype=f64, device=dev)
                eta = torch.as_tensor(np.concatenate([b for _, b in noise]), dtype=f64, device=dev)
                rnd_pos = c5 * eta
                rnd_vel = c3 * xi - c4 * eta
                vel = vel + c1 * forces / masses - c2 * vel + rnd_vel
                x = pos
                pos = x + dt * vel + rnd_pos
                vel = (pos - x - rnd_pos) / dt
                energy, forces = system.energy_forces(pos)
                vel = vel + c1 * forces / masses - c2 * vel + rnd_vel
            record(step)
            bar.update(1)
            if step % 10 == 0:
                rate = step / (time.perf_counter() - t0)
                bar.set_postfix(steps_s=f"{rate:.1f}",
                                ns_day=f"{rate * settings.timestep_fs * 86400 / 1e6:.3f}")
    except MDInstabilityError as err:
        raise MDInstabilityError(f"{err} (stopped after {step} steps; trajectories so far kept)") from err
    finally:
        bar.close()
        if log:
            log.close()
    seconds = time.perf_counter() - t0
    ekin = (0.5 * masses * vel.square()).sum(1).view(k, n).sum(1)
    return {
        "steps": settings.steps, "seconds": seconds, "atoms": n, "replicas": k,
        "steps_per_second": settings.steps / seconds,
        "ns_per_day": settings.steps / seconds * settings.timestep_fs * 86400 / 1e6,
        "final_temperature_K": float((ekin / (1.5 * units.kB * n)).mean()),
        "positions": pos.cpu().numpy().reshape(k, n, 3),
        "velocities": vel.cpu().numpy().reshape(k, n, 3),
        "neighbor_builds": system.builds,
    }


def _trajectory_paths(path: str | None, k: int) -> list[str]:
    if not path:
        return []
    p = Path(path)
    suffix = p.suffix if p.suffix not in ("", ".traj") else ".xyz"
    return [str(p.with_name(f"{p.stem}_r{r}{suffix}")) for r in range(k)]
