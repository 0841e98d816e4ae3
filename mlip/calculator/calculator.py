"""ASE calculator: the trained model as a first-class ASE citizen, on CPU or CUDA.

The graph is built with the training code (:mod:`mlip.graph`), at ``cutoff + skin``, and
reused while every atom moved less than ``skin / 2`` since the last build (Verlet skin);
each call filters the edges to ``|r_ij| < cutoff`` on the device, so results equal a fresh
build for any backbone. Static tensors stay on the device; per call only positions go in
and energy/forces(/stress) come out.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path

import ase
import numpy as np
import torch
from ase.calculators.calculator import Calculator, PropertyNotImplementedError, all_changes
from ase.data import chemical_symbols

from mlip.calculator.allocator import tune_glibc_malloc
from mlip.data import keys
from mlip.graph.edges import edge_vectors
from mlip.graph.neighbors import neighbor_list
from mlip.model.io import load_model
from mlip.model.potential import Potential


class UnknownElementError(ValueError):
    """The structure contains elements the model was not trained on."""


class AtomsTooCloseError(ValueError):
    """Two atoms are closer than the calculator's minimum distance."""


class NonFiniteOutputError(FloatingPointError):
    """The model returned NaN or inf."""


def resolve_device(device: str | torch.device) -> torch.device:
    """'auto' -> cuda when available, else cpu; a CUDA device without CUDA is an error."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as err:
        raise ValueError(f"unknown device {device!r}: use 'cpu', 'cuda', 'cuda:N' or 'auto'") from err
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available (torch "
                         f"{torch.__version__}, no GPU visible): use 'cpu' or 'auto'")
    return resolved


def build_edges(
    positions: np.ndarray | torch.Tensor,
    cell: np.ndarray,
    pbc: np.ndarray,
    radius: float,
    device: torch.device,
    dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The training neighbour list (:func:`mlip.graph.neighbors.neighbor_list`) on ``device``.

    vesin on the host for a CPU device; the pure-torch cell list on the device otherwise
    (positions stay there).

    Args:
        positions: (n, 3) [Å].
        cell: (3, 3) lattice vectors as rows [Å] (zeros when not periodic).
        pbc: (3,) bool.
        radius: neighbour radius [Å] (cutoff + skin).
        device: where the edges go.
        dtype: float dtype of the returned shifts (the model's).

    Returns:
        edge_index (2, E) int64 (sender, receiver) and cell shifts (E, 3) in ``dtype``.
    """
    if device.type == "cpu":
        if isinstance(positions, torch.Tensor):
            positions = positions.detach().cpu().double().numpy()
        ei, shifts = neighbor_list(np.asarray(positions, dtype=np.float64), cell, pbc, radius)
        return torch.from_numpy(ei), torch.from_numpy(shifts).to(dtype)
    pos = torch.as_tensor(positions, device=device).detach().double()
    ei, shifts = neighbor_list(pos, torch.as_tensor(cell, dtype=torch.float64, device=device),
                               torch.as_tensor(pbc, device=device), radius)
    return ei, shifts.to(dtype)


def edges_within(
    pos: torch.Tensor,
    edge_index: torch.Tensor,
    shifts: torch.Tensor,
    cell: torch.Tensor,
    batch: torch.Tensor,
    cutoff: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Keep the skin list's edges with |r_ij| < cutoff (one mask on the device).

    Args:
        pos: (N, 3) positions [Å]; edge_index (2, E); shifts (E, 3); cell (B, 3, 3);
        batch: (N,) as in :mod:`mlip.data.keys`.
        cutoff: the model's cutoff [Å].

    Returns:
        edge_index (2, E') and shifts (E', 3) inside the cutoff, and the lengths (E,) of
        all skin-list edges [Å].
    """
    with torch.no_grad():
        lengths = edge_vectors(pos, edge_index, shifts, cell, batch).norm(dim=1)
        inside = lengths < cutoff
    return edge_index[:, inside], shifts[inside], lengths


def closest_pair(
    lengths: torch.Tensor, edge_index: torch.Tensor, min_distance: float | None
) -> tuple[int, int, float] | None:
    """(i, j, distance) of the closest pair when it is closer than ``min_distance``, else None.

    One device-to-host sync; edges beyond the cutoff never win (min_distance < cutoff).
    """
    if min_distance is None or lengths.numel() == 0:
        return None
    k = torch.argmin(lengths)
    closest = float(lengths[k])
    if closest >= min_distance:
        return None
    j, i = (int(x) for x in edge_index[:, k])
    return i, j, closest


def inference_view(model: Potential, compile: bool = False) -> Potential:
    """A shallow copy of ``model`` for inference, sharing its parameters and buffers.

    The lone-atom backbone energies (:meth:`Potential.isolated_backbone_energies`) do not
    depend on positions, so they are computed once here instead of by a backbone pass in
    every call (2.5 of 15 ms per step on one acac molecule). With ``compile`` the backbone
    is ``torch.compile``'d instead (dynamic shapes: edge counts change every step). The
    caller's module is left as it was.
    """
    view = copy.copy(model)
    view._modules = dict(model._modules)
    with torch.no_grad():
        lone = model.isolated_backbone_energies(model.scale).detach()
    view.isolated_backbone_energies = lambda like: lone
    if compile:
        # Compile a private copy whose lazily built constants (tensor-product path
        # tensors) are empty, so they are traced into the graph. Compiling a backbone whose
        # constant caches were already filled by an eager pass made inductor's generated
        # CPU backward abort with "double free or corruption" (torch 2.13).
        backbone = copy.deepcopy(model.backbone)
        for module in backbone.modules():
            if isinstance(getattr(module, "_constants", None), dict):
                module._constants.clear()
        view._modules["backbone"] = torch.compile(backbone, dynamic=True)
    return view


class MLIPCalculator(Calculator):
    """ASE calculator for an mlip model.

    Args:
        model: a deployable model file (``model.pt`` from ``mlip train``; loaded with
            ``weights_only=True``) or a :class:`~mlip.model.potential.Potential`.
        device: "cpu", "cuda" or "auto".
        dtype: torch.float32/float64 (or their names); default the model's.
        skin: Verlet skin [Å]; 0 rebuilds the neighbour list every call.
        min_distance: raise when two atoms are closer than this [Å]; None disables.
        compile: torch.compile the backbone for inference (dynamic shapes; the first
            calls compile, 1-3 minutes on CPU).

    Attributes:
        num_builds: neighbour-list builds so far.
        timings: seconds in graph work ("neighbors": rebuilds, position upload, cutoff
            mask) and in the model ("model": energy, forces, stress, download), and the
            number of "calls", summed since construction.
    """

    implemented_properties = ["energy", "free_energy", "forces", "stress", "energies"]

    def __init__(
        self,
        model: str | Path | Potential,
        device: str = "auto",
        dtype: torch.dtype | str | None = None,
        skin: float = 0.5,
        min_distance: float | None = 0.5,
        compile: bool = False,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        tune_glibc_malloc()  # see mlip.calculator.allocator: up to 2.5x on large systems
        self.device = resolve_device(device)
        if isinstance(dtype, str):
            dtype = getattr(torch, dtype)
        if isinstance(model, Potential):
            current = next(model.parameters())
            if current.device != self.device or dtype not in (None, current.dtype):
                # Move/cast a copy: Module.to works in place and would change the caller's model.
                model = copy.deepcopy(model).to(device=self.device, dtype=dtype)
            self.model = model
        else:
            self.model = load_model(model, device=self.device, dtype=dtype)
            for p in self.model.parameters():
                p.requires_grad_(False)
        self.model.eval()
        self.dtype = next(self.model.parameters()).dtype
        self.cutoff = self.model.cutoff
        self.skin = float(skin)
        self.min_distance = min_distance
        self.model = inference_view(self.model, compile)
        self.num_builds = 0  # neighbour-list builds so far (for tests and benchmarks)
        # Seconds spent in graph work (rebuilds, position upload, cutoff filter) and in the
        # model (energy, forces, stress, download), summed over calls.
        self.timings = {"neighbors": 0.0, "model": 0.0, "calls": 0}
        self._graph: dict[str, torch.Tensor] | None = None
        self._ref_positions: np.ndarray | None = None
        self._ref_key: tuple | None = None

    # -- graph ------------------------------------------------------------------------------
    def _check_elements(self, numbers: np.ndarray) -> None:
        known = set(self.model.atomic_numbers)
        bad = [i for i, z in enumerate(numbers) if int(z) not in known]
        if bad:
            names = sorted({chemical_symbols[int(numbers[i])] for i in bad})
            trained = [chemical_symbols[z] for z in self.model.atomic_numbers]
            raise UnknownElementError(
                f"element(s) {names} at atom indices {bad[:10]}{' ...' if len(bad) > 10 else ''} "
                f"are not in the model (trained on {trained})"
            )

    def _needs_rebuild(self, atoms: ase.Atoms) -> bool:
        key = (atoms.numbers.tobytes(), atoms.cell.array.tobytes(), atoms.pbc.tobytes())
        if self._graph is None or key != self._ref_key or self.skin <= 0:
            return True
        moved = np.linalg.norm(atoms.positions - self._ref_positions, axis=1).max()
        return bool(moved >= 0.5 * self.skin)

    def _build(self, atoms: ase.Atoms) -> None:
        self._check_elements(atoms.numbers)
        periodic = bool(atoms.pbc.any())
        cell = atoms.cell.array if periodic else np.zeros((3, 3))
        dev, dt = self.device, self.dtype
        ei, shifts = build_edges(atoms.positions, cell, atoms.pbc, self.cutoff + max(self.skin, 0.0),
                                 dev, dt)
        n = len(atoms)
        self._graph = {
            keys.ATOMIC_NUMBERS: torch.as_tensor(atoms.numbers, dtype=torch.long, device=dev),
            keys.CELL: torch.as_tensor(cell, dtype=dt, device=dev).unsqueeze(0),
            keys.PBC: torch.as_tensor(atoms.pbc, device=dev).unsqueeze(0),
            keys.NUM_ATOMS: torch.tensor([n], device=dev),
            keys.BATCH: torch.zeros(n, dtype=torch.long, device=dev),
            "full_edge_index": ei.to(dev),
            "full_shifts": shifts.to(dev),
        }
        self._ref_positions = atoms.positions.copy()
        self._ref_key = (atoms.numbers.tobytes(), atoms.cell.array.tobytes(), atoms.pbc.tobytes())
        self.num_builds += 1

    def batch_for(self, atoms: ase.Atoms) -> dict[str, torch.Tensor]:
        """The model's input for ``atoms`` (reusing the skin neighbour list when valid).

        Raises:
            UnknownElementError: elements the model was not trained on.
            AtomsTooCloseError: two atoms closer than ``min_distance``.
        """
        if self._needs_rebuild(atoms):
            self._build(atoms)
        g = self._graph
        pos = torch.as_tensor(atoms.positions, dtype=self.dtype, device=self.device)
        ei, shifts, lengths = edges_within(pos, g["full_edge_index"], g["full_shifts"], g[keys.CELL],
                                           g[keys.BATCH], self.cutoff)
        data = {k: v for k, v in g.items() if not k.startswith("full_")}
        data.update({keys.POSITIONS: pos, keys.EDGE_INDEX: ei, keys.CELL_SHIFTS: shifts})
        pair = closest_pair(lengths, g["full_edge_index"], self.min_distance)
        if pair is not None:
            raise AtomsTooCloseError(self.too_close_message(atoms.numbers, *pair))
        return data

    def too_close_message(self, numbers: np.ndarray, i: int, j: int, distance: float) -> str:
        return (f"atoms {i} ({chemical_symbols[int(numbers[i])]}) and {j} "
                f"({chemical_symbols[int(numbers[j])]}) are {distance:.3f} Å apart, closer than "
                f"min_distance={self.min_distance} Å (a broken geometry? "
                "MLIPCalculator(min_distance=None) disables the check)")

    # -- ASE protocol -----------------------------------------------------------------------------
    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes) -> None:
        super().calculate(atoms, properties, system_changes)
        atoms = self.atoms
        periodic = bool(atoms.pbc.any())
        if "stress" in properties and not periodic:
            raise PropertyNotImplementedError("stress is only defined for periodic systems")
        start = time.perf_counter()
        data = self.batch_for(atoms)
        graph_done = time.perf_counter()
        out = self.model(data, compute_forces=True, compute_stress=periodic)
        # One transfer per output; the finiteness checks then run on the host copies.
        energy = float(out[keys.ENERGY].detach()[0])
        forces = out[keys.FORCES].detach().cpu().double().numpy()
        energies = out[keys.ATOMIC_ENERGIES].detach().cpu().double().numpy()
        stress = out[keys.STRESS].detach()[0].cpu().double().numpy() if periodic else None
        self.timings["neighbors"] += graph_done - start
        self.timings["model"] += time.perf_counter() - graph_done
        self.timings["calls"] += 1
        bad = ~(np.isfinite(forces).all(axis=1) & np.isfinite(energies))
        if not np.isfinite(energy) or bad.any() or (stress is not None and not np.isfinite(stress).all()):
            where = f" (non-finite at atom indices {np.flatnonzero(bad)[:10].tolist()})" if bad.any() else ""
            raise NonFiniteOutputError(
                f"the model returned NaN/inf for {atoms.get_chemical_formula()}{where}: the "
                "structure is probably far outside the training data (check the geometry; in MD, "
                "a smaller timestep)"
            )
        self.results = {"energy": energy, "free_energy": energy, "forces": forces, "energies": energies}
        if stress is not None:
            self.results["stress"] = np.array([stress[0, 0], stress[1, 1], stress[2, 2],
                                               stress[1, 2], stress[0, 2], stress[0, 1]])
