"""ASE calculator: the trained model as a first-class ASE citizen, on CPU or CUDA.

A thin adapter over the inference engine (:class:`mlip.inference.engine.ForceField`): the
atoms become one tracked system (Verlet-skin neighbour list, close-contact and NaN checks,
compiled path and CUDA graphs as the engine was built); per call only positions go in and
energy/forces(/stress) come out.
"""

from __future__ import annotations

from pathlib import Path

import ase
import numpy as np
import torch
from ase.calculators.calculator import Calculator, PropertyNotImplementedError, all_changes

from mlip.data import keys
from mlip.data.readers import atoms_to_structure
from mlip.inference.engine import ForceField, TrackedSystems, as_engine
from mlip.inference.errors import AtomsTooCloseError, NonFiniteOutputError, UnknownElementError
from mlip.model.potential import Potential

__all__ = ["MLIPCalculator", "UnknownElementError", "AtomsTooCloseError", "NonFiniteOutputError"]


class MLIPCalculator(Calculator):
    """ASE calculator for an mlip model.

    Args:
        model: a model file (``model.pt`` from ``mlip train``; loaded with
            ``weights_only=True``), a :class:`~mlip.model.potential.Potential`, or a
            :class:`~mlip.inference.engine.ForceField` (then the engine's settings apply
            and the keyword arguments below must be left at their defaults).
        device, dtype, skin, min_distance, compile, cuda_graphs, fixed_shapes: as for
            :class:`~mlip.inference.engine.ForceField` (``compile="aot"`` or True: the
            AOTInductor-compiled force function, built at the first call and cached).

    Attributes:
        engine: the :class:`~mlip.inference.engine.ForceField`.
        num_builds: neighbour-list builds so far.
        model, device, dtype, cutoff, skin, min_distance, compiled, graphs, timings: the
            engine's.
    """

    implemented_properties = ["energy", "free_energy", "forces", "stress", "energies",
                              "energy_uncertainty", "forces_uncertainty"]

    def __init__(
        self,
        model: str | Path | Potential | ForceField,
        device: str = "auto",
        dtype: torch.dtype | str | None = None,
        skin: float = 0.5,
        min_distance: float | None = 0.5,
        compile: bool | str = False,
        cuda_graphs: bool = False,
        fixed_shapes: bool | None = None,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)  # changes no process-wide setting (see mlip.cli.allocator)
        self.engine = as_engine(model, "MLIPCalculator", device=device, dtype=dtype, compile=compile,
                                cuda_graphs=cuda_graphs, fixed_shapes=fixed_shapes, skin=skin,
                                min_distance=min_distance)
        self._tracked: TrackedSystems | None = None
        self._system: tuple | None = None
        self._previous_builds = 0  # builds of systems tracked before the current one

    # the engine's settings, for scripts and benchmarks
    model = property(lambda self: self.engine.model)
    device = property(lambda self: self.engine.device)
    dtype = property(lambda self: self.engine.dtype)
    cutoff = property(lambda self: self.engine.cutoff)
    skin = property(lambda self: self.engine.skin)
    min_distance = property(lambda self: self.engine.min_distance)
    compiled = property(lambda self: self.engine.compiled)
    graphs = property(lambda self: self.engine.graphs)
    timings = property(lambda self: self.engine.timings)
    fixed_shapes = property(lambda self: self.engine.fixed_shapes)

    @property
    def num_builds(self) -> int:
        """Neighbour-list builds so far (for tests and benchmarks)."""
        return 0 if self._tracked is None else self._tracked.builds + self._previous_builds

    def _track(self, atoms: ase.Atoms) -> TrackedSystems:
        """The tracked system for ``atoms``; new atoms or a new cell (NPT) start over."""
        system = (atoms.numbers.tobytes(), atoms.cell.array.tobytes(), atoms.pbc.tobytes())
        if system != self._system:
            if self._tracked is not None:
                self._previous_builds += self._tracked.builds
            self._tracked = None  # a refused structure leaves nothing half-set
            self._tracked = self.engine.track([atoms_to_structure(atoms)])
            self._system = system
        return self._tracked

    # -- ASE protocol -----------------------------------------------------------------------------
    def check_state(self, atoms: ase.Atoms, tol: float = 1e-15) -> list[str]:
        """The system changes since the last calculation, as ASE's ``compare_atoms``
        reports them (cell, pbc and the atoms arrays of ``all_changes``, less
        ``ignored_changes``), compared exactly with ``np.array_equal``: ASE's ``isclose``
        check took 0.9 ms of each 5.4 ms MD step of one molecule (three calls per step).
        A difference below ``tol`` counts as a change here (one more recomputation)."""
        old = self.atoms
        if old is None:
            return list(all_changes)
        wanted = set(all_changes) - set(self.ignored_changes)
        changes = [name for name in ("cell", "pbc") if name in wanted
                   and not np.array_equal(np.asarray(getattr(old, name)), np.asarray(getattr(atoms, name)))]
        for name in sorted(wanted - {"cell", "pbc"}):
            a, b = old.arrays.get(name), atoms.arrays.get(name)
            if (a is None) != (b is None) or (a is not None and not np.array_equal(a, b)):
                changes.append(name)
        return changes

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes) -> None:
        super().calculate(atoms, properties, system_changes)
        atoms = self.atoms
        periodic = bool(atoms.pbc.any())
        if "stress" in properties and not periodic:
            raise PropertyNotImplementedError("stress is only defined for periodic systems")
        tracked = self._track(atoms)
        pos = torch.as_tensor(atoms.positions, dtype=self.engine.dtype, device=self.engine.device)
        out = tracked.compute(pos, stress=periodic)
        energy = float(out[keys.ENERGY].detach()[0])
        self.results = {"energy": energy, "free_energy": energy,
                        "forces": out[keys.FORCES].detach().cpu().double().numpy(),
                        "energies": out[keys.ATOMIC_ENERGIES].detach().cpu().double().numpy()}
        if periodic:
            s = out[keys.STRESS].detach()[0].cpu().double().numpy()
            self.results["stress"] = np.array([s[0, 0], s[1, 1], s[2, 2], s[1, 2], s[0, 2], s[0, 1]])
        if keys.ENERGY_UNCERTAINTY in out:  # a model with an uncertainty, or a committee
            self.results["energy_uncertainty"] = float(out[keys.ENERGY_UNCERTAINTY].detach()[0])
            self.results["forces_uncertainty"] = out[keys.FORCES_UNCERTAINTY].detach().cpu().double().numpy()
