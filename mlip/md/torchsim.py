"""An mlip model as a torch-sim model: batched MD and relaxation of many systems at once.

:class:`MLIPModel` wraps a :class:`~mlip.model.potential.Potential` in torch-sim's
``ModelInterface``, so torch-sim's integrators (``ts.nvt_langevin``, ``ts.npt_langevin``,
...), optimizers (``ts.optimizers.fire``, ``ts.unit_cell_fire``, ...) and runners
(``ts.integrate``, ``ts.optimize``, autobatching) drive it. One call takes a ``SimState``
holding any number of systems of any sizes and returns

* ``energy`` (n_systems,) [eV],
* ``forces`` (n_atoms, 3) [eV/Å] (with ``compute_forces``),
* ``stress`` (n_systems, 3, 3) [eV/Å^3] (with ``compute_stress``).

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

from mlip.calculator.calculator import (
    AtomsTooCloseError,
    NonFiniteOutputError,
    inference_model,
    resolve_device,
    too_close_message,
)
from mlip.data import keys
from mlip.data.structure import Structure
from mlip.graph.skin import SkinNeighborList
from mlip.model.graphed import GraphedForceField
from mlip.model.potential import Potential

try:
    import torch_sim as ts
    from torch_sim.models.interface import ModelInterface
except ImportError as err:
    raise ImportError(
        "mlip.md.torchsim needs torch-sim, an optional dependency: pip install 'mlip[torchsim]' "
        f"(or pip install torch-sim-atomistic) ({err})"
    ) from err

__all__ = ["MLIPModel"]


class MLIPModel(ModelInterface):
    """An mlip potential as a torch-sim model.

    Args:
        model: a model file (``model.pt`` from ``mlip train``; loaded with
            ``weights_only=True``) or a :class:`~mlip.model.potential.Potential` (used as
            is, in eval mode, when device and dtype already match; else a moved copy, and
            the caller's module keeps its device and dtype).
        device: where the model runs: "cpu", "cuda", "cuda:N", a ``torch.device``, or
            None / "auto" for CUDA when available.
        dtype: torch.float32 / torch.float64 (or their names); default the model's. torch-sim
            integrators and optimizers create their tensors in this dtype, so build the state
            in it too.
        compute_forces: return ``forces`` (n_atoms, 3) [eV/Å].
        compute_stress: return ``stress`` (n_systems, 3, 3) [eV/Å^3] (ASE / torch-sim sign).
        skin: Verlet skin [Å]; 0 rebuilds the neighbour lists every call.
        min_distance: raise :class:`~mlip.calculator.calculator.AtomsTooCloseError` when two
            atoms are closer than this [Å] (one device sync per call); None disables.
        cuda_graphs: replay each force call from a CUDA graph (CUDA devices only; see
            :class:`~mlip.calculator.calculator.MLIPCalculator`); implies ``fixed_shapes``.
        fixed_shapes: the unfiltered, padded neighbour list of CUDA graphs (same results).

    Attributes:
        model: the wrapped Potential (eval mode, weights frozen when it is a copy).
        neighbors: the skin neighbour list of the current systems (its ``builds`` counts
            per-system graph builds).
        graphs: with ``cuda_graphs`` a :class:`~mlip.model.graphed.GraphedForceField`; else None.
    """

    def __init__(
        self,
        model: str | Path | Potential,
        *,
        device: str | torch.device | None = None,
        dtype: torch.dtype | str | None = None,
        compute_forces: bool = True,
        compute_stress: bool = True,
        skin: float = 0.5,
        min_distance: float | None = 0.5,
        cuda_graphs: bool = False,
        fixed_shapes: bool | None = None,
    ) -> None:
        super().__init__()
        device = resolve_device("auto" if device is None else device)
        device = torch.empty(0, device=device).device  # "cuda" -> "cuda:0", as states report it
        if isinstance(dtype, str):
            dtype = getattr(torch, dtype)
        self.model = inference_model(model, device, dtype, compile=False)
        self._device = device
        self._dtype = next(self.model.parameters()).dtype
        self._compute_forces = bool(compute_forces)
        self._compute_stress = bool(compute_stress)
        self._memory_scales_with = "n_atoms_x_density"  # a radial cutoff
        self.cutoff = self.model.cutoff
        self.min_distance = min_distance
        if cuda_graphs and device.type != "cuda":
            raise ValueError(f"cuda_graphs=True needs a CUDA device, not {device}")
        fixed = bool(cuda_graphs) if fixed_shapes is None else bool(fixed_shapes)
        self.graphs = GraphedForceField(self._force_call) if cuda_graphs else None
        self._graphs_forces = self._compute_forces  # the flag the graphs were captured with
        self.neighbors = SkinNeighborList(self.cutoff, skin, self._dtype, self._device, fixed_shapes=fixed)
        self._systems: tuple[torch.Tensor, ...] | None = None

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
        """Check the elements and build every system's graph (host side, once per new set
        of systems or cells)."""
        z = numbers.cpu().numpy()
        pos = state.positions.detach().cpu().double().numpy()
        cell = cells.detach().cpu().double().numpy()
        bounds = np.concatenate([[0], np.cumsum(sizes.cpu().numpy())])
        structures = []
        for s in range(len(sizes)):
            lo, hi = bounds[s], bounds[s + 1]
            self.model.check_elements(z[lo:hi], where=f"torch-sim system {s}")
            box = cell[s] if bool(pbc[s].any()) else np.zeros((3, 3))
            structures.append(Structure(z[lo:hi], pos[lo:hi], box, pbc[s].numpy(),
                                        source="<torch-sim state>", frame=s))
        self.neighbors.reset(structures)
        self._systems = (numbers, sizes, cells.detach().clone(), pbc)

    def _same_systems(self, numbers: torch.Tensor, sizes: torch.Tensor, cells: torch.Tensor,
                      pbc: torch.Tensor) -> bool:
        if self._systems is None:
            return False
        old_numbers, old_sizes, old_cells, old_pbc = self._systems
        return (old_numbers.shape == numbers.shape and old_sizes.shape == sizes.shape
                and torch.equal(old_pbc, pbc) and torch.equal(old_sizes, sizes)
                and torch.equal(old_numbers, numbers) and torch.equal(old_cells, cells))

    def _check_distances(self, numbers: torch.Tensor, system_idx: torch.Tensor,
                         sizes: torch.Tensor) -> None:
        pair = self.neighbors.closest_pair(self.min_distance)
        if pair is None:
            return
        i, j, distance = pair
        s = int(system_idx[i])
        offset = int(sizes[:s].sum())
        local = numbers[offset:offset + int(sizes[s])].cpu().numpy()
        message = too_close_message(local, i - offset, j - offset, distance, self.min_distance)
        # the shared message names the calculator's switch; here it is this class's
        raise AtomsTooCloseError(f"torch-sim system {s}: "
                                 + message.replace("MLIPCalculator(", "MLIPModel("))

    def _check_finite(self, out: dict[str, torch.Tensor], system_idx: torch.Tensor) -> None:
        energy = out[keys.ENERGY]
        bad = ~torch.isfinite(energy)
        if keys.FORCES in out:
            atoms = (~torch.isfinite(out[keys.FORCES]).all(dim=1)).to(energy.dtype)
            bad = bad | (torch.zeros_like(energy).index_add(0, system_idx, atoms) > 0)
        if bool(bad.any()):  # one device sync
            raise NonFiniteOutputError(
                f"the model returned NaN/inf for torch-sim system(s) "
                f"{bad.nonzero().flatten().tolist()[:10]}: far outside the training data "
                "(check the geometry; in MD, a smaller timestep)")

    def _force_call(self, data: dict[str, torch.Tensor], stress: bool) -> dict[str, torch.Tensor]:
        return self.model(data, compute_forces=self._compute_forces, compute_stress=stress)

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
            AtomsTooCloseError: two atoms closer than ``min_distance`` (names the system).
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
        data = self.neighbors.batch(state.positions.detach())
        self._check_distances(numbers, state.system_idx, sizes)
        if self.graphs is not None and self._graphs_forces != self._compute_forces:
            self.graphs = GraphedForceField(self._force_call)  # captured for the other flag
            self._graphs_forces = self._compute_forces
        with torch.enable_grad():
            call = self._force_call if self.graphs is None else self.graphs
            out = self.neighbors.real(call(data, self._compute_stress))
        self._check_finite(out, state.system_idx)
        dtype = state.dtype
        result = {"energy": out[keys.ENERGY].detach().to(dtype)}
        if self._compute_forces:
            result["forces"] = out[keys.FORCES].detach().to(dtype)
        if self._compute_stress:
            result["stress"] = out[keys.STRESS].detach().to(dtype)
        return result
