"""An mlip model as a torch-sim model: batched MD and relaxation of many systems at once.

:class:`MLIPModel` wraps a :class:`~mlip.model.potential.Potential` in torch-sim's
``ModelInterface``, so torch-sim's integrators (``ts.nvt_langevin``, ``ts.npt_langevin``,
...), optimizers (``ts.optimizers.fire``, ``ts.unit_cell_fire``, ...) and runners
(``ts.integrate``, ``ts.optimize``, autobatching) drive it. One call takes a ``SimState``
holding any number of systems of any sizes and returns

* ``energy`` (n_systems,) [eV],
* ``forces`` (n_atoms, 3) [eV/Å] (with ``compute_forces``),
* ``stress`` (n_systems, 3, 3) [eV/Å^3] (with ``compute_stress``),
* ``energy_uncertainty`` (n_systems,) [eV] and ``forces_uncertainty`` (n_atoms,) [eV/Å] for
  a model with an uncertainty or a committee (:meth:`MLIPModel.max_forces_uncertainty`
  reports the largest per system to torch-sim's trajectory reporter).

The model's input comes from the one input path: each system's graph is built by
:class:`mlip.graph.skin.SkinNeighborList` (:func:`mlip.graph.build.structure_graph` +
:func:`~mlip.graph.build.collate`) at ``cutoff + skin`` and reused while every atom of that
system moved less than ``skin / 2``, exactly as the ASE calculator and the replica MD do.
A new set of systems (other atomic numbers or sizes, as when torch-sim's autobatcher swaps
systems in) or a changed cell (cell relaxation, NPT) rebuilds every graph.

Conventions (checked against torch-sim 0.3):

* Cells: torch-sim stores lattice vectors as *columns* (``state.cell``); mlip as rows.
  The adapter reads ``state.row_vector_cell``.
* Stress: torch-sim uses ASE's sign, (1/V) dE/dstrain, positive under tension (its
  optimizers and barostats take the cell force as ``-V (stress + P_ext)``); mlip's STRESS
  has the same sign, so it is passed through unchanged. Non-periodic systems get zero stress.
* Periodicity: a torch-sim 0.3 state has one ``pbc`` flag for all its systems. To batch a
  molecule with periodic cells, put the molecule in a box larger than its extent plus the
  cutoff (``atoms.center(vacuum=...)``, ``atoms.pbc = True``): no atom then sees an image,
  so energy and forces equal the free molecule's; its stress is the (small) virial over the
  box volume.
* dtype and device: the outputs are in the state's dtype, on the state's device. The model
  computes in its own dtype (``dtype`` argument, default the model's); a float32 state gets
  float32 total energies (~1 meV resolution at 10^4 eV: use float64 for total energies).
  A state on another device than the model is an error (copying every step is never wanted).

torch-sim is an optional dependency (``pip install mlip[torchsim]``); importing :mod:`mlip`
or any other module never imports it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from mlip.data import keys
from mlip.data.structure import Structure
from mlip.inference.engine import ForceField, TrackedSystems, as_engine
from mlip.model.potential import Potential

try:
    import torch_sim as ts
    from torch_sim.models.interface import ModelInterface
except ImportError as err:
    raise ImportError(
        "mlip.integrations.torchsim needs torch-sim, an optional dependency: pip install "
        f"'mlip[torchsim]' (or pip install torch-sim-atomistic) ({err})"
    ) from err

__all__ = ["MLIPModel"]


class MLIPModel(ModelInterface):
    """An mlip potential as a torch-sim model.

    A thin adapter over :class:`mlip.inference.engine.ForceField`: the state's systems are
    the engine's tracked systems (rebuilt when the set of systems or a cell changes).

    Args:
        model: a model file (``model.pt`` from ``mlip train``; loaded with
            ``weights_only=True``), a :class:`~mlip.model.potential.Potential` (used as
            is, in eval mode, when device and dtype already match; else a moved copy, and
            the caller's module keeps its device and dtype), or a
            :class:`~mlip.inference.engine.ForceField` (its settings apply; leave the
            options below at their defaults).
        device: where the model runs: "cpu", "cuda", "cuda:N", a ``torch.device``, or
            None / "auto" for CUDA when available.
        dtype: torch.float32 / torch.float64 (or their names); default the model's. torch-sim
            integrators and optimizers create their tensors in this dtype, so build the state
            in it too.
        compute_forces: return ``forces`` (n_atoms, 3) [eV/Å].
        compute_stress: return ``stress`` (n_systems, 3, 3) [eV/Å^3] (ASE / torch-sim sign).
        skin, min_distance, compile, cuda_graphs, fixed_shapes: as for
            :class:`~mlip.inference.engine.ForceField` (``min_distance``: one device sync
            per call; None disables).

    Attributes:
        engine: the :class:`~mlip.inference.engine.ForceField`.
        model: the engine's Potential (eval mode, weights frozen when it is a copy).
        tracked: the engine's tracked systems of the current state (None before a call).
        neighbors: their skin neighbour list (its ``builds`` counts per-system graph builds).
        graphs: the engine's :class:`~mlip.inference.graphed.GraphedForceField`, or None.
    """

    def __init__(
        self,
        model: str | Path | Potential | ForceField,
        *,
        device: str | torch.device | None = None,
        dtype: torch.dtype | str | None = None,
        compute_forces: bool = True,
        compute_stress: bool = True,
        skin: float = 0.5,
        min_distance: float | None = 0.5,
        compile: bool | str = False,
        cuda_graphs: bool = False,
        fixed_shapes: bool | None = None,
    ) -> None:
        super().__init__()
        self.engine = as_engine(model, "MLIPModel", device=device, dtype=dtype, compile=compile,
                                cuda_graphs=cuda_graphs, fixed_shapes=fixed_shapes, skin=skin,
                                min_distance=min_distance)
        self.model = self.engine.model
        self._device = self.engine.device
        self._dtype = self.engine.dtype
        self._compute_forces = bool(compute_forces)
        self._compute_stress = bool(compute_stress)
        self._memory_scales_with = "n_atoms_x_density"  # a radial cutoff
        self.cutoff = self.engine.cutoff
        self.min_distance = self.engine.min_distance
        self.tracked: TrackedSystems | None = None
        self._systems: tuple[torch.Tensor, ...] | None = None
        self.last_max_forces_uncertainty: torch.Tensor | None = None

    @property
    def graphs(self):
        """The engine's :class:`~mlip.inference.graphed.GraphedForceField`, or None."""
        return self.engine.graphs

    @property
    def neighbors(self):
        """The skin neighbour list of the current systems (its ``builds`` counts per-system
        graph builds), or None before the first call."""
        return None if self.tracked is None else self.tracked.neighbors

    # torch-sim's validator switches these on through setters; the base class refuses.
    @ModelInterface.compute_forces.setter
    def compute_forces(self, value: bool) -> None:
        self._compute_forces = bool(value)

    @ModelInterface.compute_stress.setter
    def compute_stress(self, value: bool) -> None:
        self._compute_stress = bool(value)

    def _pbc(self, state: ts.SimState) -> torch.Tensor:
        """(n_systems, 3) bool periodicity from the state's flag (one bool in torch-sim 0.3;
        a (3,) or (n_systems, 3) tensor is accepted too)."""
        pbc = torch.as_tensor(state.pbc, dtype=torch.bool).cpu()
        return (pbc.expand(3) if pbc.ndim == 0 else pbc).expand(state.n_systems, 3).clone()

    def _reset(self, state: ts.SimState, numbers: torch.Tensor, sizes: torch.Tensor,
               cells: torch.Tensor, pbc: torch.Tensor) -> None:
        """Track a new set of systems or cells (host side; the engine checks the elements
        and builds every system's graph)."""
        z = numbers.cpu().numpy()
        pos = state.positions.detach().cpu().double().numpy()
        cell = cells.detach().cpu().double().numpy()
        bounds = np.concatenate([[0], np.cumsum(sizes.cpu().numpy())])
        structures = []
        for s in range(len(sizes)):
            lo, hi = bounds[s], bounds[s + 1]
            box = cell[s] if bool(pbc[s].any()) else np.zeros((3, 3))
            structures.append(Structure(z[lo:hi], pos[lo:hi], box, pbc[s].numpy(),
                                        source="<torch-sim state>", frame=s))
        self._systems = None
        self.tracked = self.engine.track(structures, where="torch-sim system")
        self._systems = (numbers, sizes, cells.detach().clone(), pbc)

    def _same_systems(self, numbers: torch.Tensor, sizes: torch.Tensor, cells: torch.Tensor,
                      pbc: torch.Tensor) -> bool:
        if self._systems is None:
            return False
        old_numbers, old_sizes, old_cells, old_pbc = self._systems
        return (old_numbers.shape == numbers.shape and old_sizes.shape == sizes.shape
                and torch.equal(old_pbc, pbc) and torch.equal(old_sizes, sizes)
                and torch.equal(old_numbers, numbers) and torch.equal(old_cells, cells))

    def forward(self, state: ts.SimState | dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Energy, forces and stress of every system in ``state``.

        Args:
            state: a torch-sim ``SimState`` (or its fields as a dict: positions (n_atoms, 3)
                [Å], cell (n_systems, 3, 3) column vectors [Å], pbc, atomic_numbers
                (n_atoms,), system_idx (n_atoms,); masses may be left out), on the
                model's device.

        Returns:
            ``energy`` (n_systems,) [eV], and ``forces`` (n_atoms, 3) [eV/Å] /
            ``stress`` (n_systems, 3, 3) [eV/Å^3] as the flags ask, detached, in the
            state's dtype.

        Raises:
            UnknownElementError: elements the model was not trained on (names the system).
            AtomsTooCloseError: two atoms closer than ``min_distance`` (names the system and atoms).
            NonFiniteOutputError: NaN/inf energy or forces (names the systems).
            ValueError: the state is on another device than the model.
        """
        if isinstance(state, dict):
            masses = torch.ones_like(state["positions"][:, 0])
            state = ts.SimState(**{"masses": masses, **state})
        if state.device != self._device:
            raise ValueError(
                f"the torch-sim state is on {state.device} but the model on {self._device}: "
                f"create the state on {self._device} (ts.initialize_state(..., device=model.device,"
                f" dtype=model.dtype)) or the model with device={str(state.device)!r}"
            )
        numbers = state.atomic_numbers.long()
        sizes = state.n_atoms_per_system
        cells = state.row_vector_cell  # rows = lattice vectors, as mlip and ASE store them
        pbc = self._pbc(state)
        if not self._same_systems(numbers, sizes, cells, pbc):
            self._reset(state, numbers, sizes, cells, pbc)
        out = self.tracked.compute(state.positions.detach(), stress=self._compute_stress,
                                   forces=self._compute_forces)
        dtype = state.dtype
        result = {"energy": out[keys.ENERGY].detach().to(dtype)}
        if self._compute_forces:
            result["forces"] = out[keys.FORCES].detach().to(dtype)
        if self._compute_stress:
            result["stress"] = out[keys.STRESS].detach().to(dtype)
        if keys.ENERGY_UNCERTAINTY in out:  # a model with an uncertainty, or a committee
            result["energy_uncertainty"] = out[keys.ENERGY_UNCERTAINTY].detach().to(dtype)
            if keys.FORCES_UNCERTAINTY in out:
                per_atom = out[keys.FORCES_UNCERTAINTY].detach().to(dtype)
                result["forces_uncertainty"] = per_atom
                largest = torch.zeros_like(result["energy"]).scatter_reduce(
                    0, state.system_idx, per_atom, reduce="amax", include_self=False)
                self.last_max_forces_uncertainty = largest
        return result

    def max_forces_uncertainty(self, state: ts.SimState) -> torch.Tensor:
        """(n_systems,) largest per-atom force uncertainty [eV/Å] of the last call (a model
        with an uncertainty or a committee): a torch-sim property calculator that costs no
        model call, e.g. ``ts.TrajectoryReporter(..., prop_calculators={10:
        {"max_forces_uncertainty": model.max_forces_uncertainty}})``."""
        if self.last_max_forces_uncertainty is None:
            raise ValueError("the model has no uncertainty (training.uncertainty: llpr, or a committee)")
        return self.last_max_forces_uncertainty
