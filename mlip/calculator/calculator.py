"""ASE calculator: the trained model as a first-class ASE citizen, on CPU or CUDA.

The input is built by the one input path through a Verlet-skin list
(:class:`mlip.graph.skin.SkinNeighborList`): the graph is built at ``cutoff + skin`` and
reused while every atom moved less than ``skin / 2``; each call filters the edges to the
cutoff on the device, so results equal a fresh build for any backbone. Per call only
positions go in and energy/forces(/stress) come out. On CUDA, ``cuda_graphs=True`` keeps
the list at fixed shapes instead (unfiltered and padded, the same results) and replays
each force call from a captured CUDA graph (:mod:`mlip.model.graphed`).
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

from mlip.data import keys
from mlip.data.readers import atoms_to_structure
from mlip.graph.skin import SkinNeighborList
from mlip.model.compiled import CompiledModel
from mlip.model.graphed import GraphedForceField
from mlip.model.io import load_model
from mlip.model.potential import Potential, UnknownElementError

__all__ = ["MLIPCalculator", "UnknownElementError", "AtomsTooCloseError", "NonFiniteOutputError",
           "resolve_device", "too_close_message"]


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


def too_close_message(numbers, i: int, j: int, distance: float, min_distance: float) -> str:
    """The one-line error for two atoms closer than ``min_distance`` [Å]."""
    return (f"atoms {i} ({chemical_symbols[int(numbers[i])]}) and {j} "
            f"({chemical_symbols[int(numbers[j])]}) are {distance:.3f} Å apart, closer than "
            f"min_distance={min_distance} Å (a broken geometry? "
            "MLIPCalculator(min_distance=None) disables the check)")


COMPILE_MODES = ("none", "aot", "inductor")


def compile_mode(compile: bool | str) -> str:
    """Normalise the ``compile`` argument: False -> "none", True -> "aot"."""
    mode = {False: "none", True: "aot", None: "none", "eager": "none"}.get(compile, compile)
    if mode not in COMPILE_MODES:
        raise ValueError(f"compile must be True/False or one of {COMPILE_MODES}, got {compile!r}")
    return mode


def inference_model(model: Potential | str | Path, device: torch.device,
                    dtype: torch.dtype | None, compile: bool) -> Potential:
    """The calculator's own model on ``device`` in ``dtype``, in eval mode, weights frozen.

    A model object is used as is when nothing changes, else a copy is moved/cast (the
    caller's module is never modified). With ``compile`` the copy's backbone is
    ``torch.compile``'d (dynamic shapes: edge counts change every step; the
    ``compile="inductor"`` mode).
    """
    if not isinstance(model, Potential):
        owned = load_model(model, device=device, dtype=dtype)
    else:
        current = next(model.parameters())
        same = current.device == device and dtype in (None, current.dtype)
        owned = model if same and not compile else copy.deepcopy(model).to(device=device, dtype=dtype)
    if owned is not model:
        for p in owned.parameters():
            p.requires_grad_(False)
    if compile:
        owned.backbone = torch.compile(owned.backbone, dynamic=True)
    return owned.eval()


class MLIPCalculator(Calculator):
    """ASE calculator for an mlip model.

    Args:
        model: a deployable model file (``model.pt`` from ``mlip train``; loaded with
            ``weights_only=True``) or a :class:`~mlip.model.potential.Potential`.
        device: "cpu", "cuda" or "auto".
        dtype: torch.float32/float64 (or their names); default the model's.
        skin: Verlet skin [Å]; 0 rebuilds the neighbour list every call.
        min_distance: raise when two atoms are closer than this [Å]; None disables.
        compile: ``"aot"`` (or True): energy + forces (+ stress) as one AOTInductor-
            compiled function (:mod:`mlip.model.compiled`), built at the first call (minutes
            on CPU) and cached in the user cache folder, so later calculators of the same
            model, torch, device and dtype load it in about a second; on failure a one-line
            warning and the eager model. ``"inductor"``: ``torch.compile`` of the backbone
            (dynamic shapes, recompiled in every process). False / ``"none"``: eager.
        cuda_graphs: replay each force call from a CUDA graph (:mod:`mlip.model.graphed`;
            CUDA devices only): the neighbour list keeps fixed shapes (``fixed_shapes``)
            and the eager or compiled call is captured once per shape. A failed capture
            warns once and runs without graphs.
        fixed_shapes: the ``cutoff + skin`` list unfiltered and padded, plus a ghost
            structure (see :class:`~mlip.graph.skin.SkinNeighborList`); the same results,
            about (1 + skin/cutoff)^3 times the edges. Default: as ``cuda_graphs``.

    Attributes:
        num_builds: neighbour-list builds so far.
        compiled: with ``compile="aot"`` a :class:`~mlip.model.compiled.CompiledModel`
            (its ``packages``: compile_seconds, load_seconds, from_cache); else None.
        graphs: with ``cuda_graphs`` a :class:`~mlip.model.graphed.GraphedForceField`
            (captures, failed); else None.
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
        compile: bool | str = False,
        cuda_graphs: bool = False,
        fixed_shapes: bool | None = None,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)  # changes no process-wide setting (see mlip.calculator.allocator)
        self.device = resolve_device(device)
        if isinstance(dtype, str):
            dtype = getattr(torch, dtype)
        self.compile_mode = compile_mode(compile)
        self.model = inference_model(model, self.device, dtype, self.compile_mode == "inductor")
        self.compiled = CompiledModel(self.model) if self.compile_mode == "aot" else None
        self.dtype = next(self.model.parameters()).dtype
        self.cutoff = self.model.cutoff
        self.skin = float(skin)
        self.min_distance = min_distance
        if cuda_graphs and self.device.type != "cuda":
            raise ValueError(f"cuda_graphs=True needs a CUDA device, not {self.device} "
                             "(fixed_shapes=True gives the same inputs without graphs)")
        self.fixed_shapes = bool(cuda_graphs) if fixed_shapes is None else bool(fixed_shapes)
        self.graphs = GraphedForceField(self._force_call) if cuda_graphs else None
        self.neighbors = SkinNeighborList(self.cutoff, self.skin, self.dtype, self.device,
                                          fixed_shapes=self.fixed_shapes)
        self.timings = {"neighbors": 0.0, "model": 0.0, "calls": 0}
        self._system: tuple | None = None

    @property
    def num_builds(self) -> int:
        """Neighbour-list builds so far (for tests and benchmarks)."""
        return self.neighbors.builds

    def batch_for(self, atoms: ase.Atoms) -> dict[str, torch.Tensor]:
        """The model's input for ``atoms`` (reusing the skin neighbour list when valid).

        Raises:
            UnknownElementError: elements the model was not trained on.
            AtomsTooCloseError: two atoms closer than ``min_distance``.
        """
        system = (atoms.numbers.tobytes(), atoms.cell.array.tobytes(), atoms.pbc.tobytes())
        if system != self._system:  # new atoms, or a new cell (NPT): start over
            self.model.check_elements(atoms.numbers)
            self.neighbors.reset([atoms_to_structure(atoms)])
            self._system = system
        pos = torch.as_tensor(atoms.positions, dtype=self.dtype, device=self.device)
        data = self.neighbors.batch(pos)
        pair = self.neighbors.closest_pair(self.min_distance)
        if pair is not None:
            raise AtomsTooCloseError(too_close_message(atoms.numbers, *pair, self.min_distance))
        return data

    def evaluate(self, data: dict[str, torch.Tensor], stress: bool) -> dict[str, torch.Tensor]:
        """Energy, forces (and stress) of a batch: the compiled function where there is one
        that accepts the batch, else the eager model; replayed from a CUDA graph with
        ``cuda_graphs``. A fixed-shape batch's outputs include its ghost structure (drop it
        with the neighbour list's ``real``)."""
        if self.graphs is not None:
            return self.graphs(data, stress)
        return self._force_call(data, stress)

    def _force_call(self, data: dict[str, torch.Tensor], stress: bool) -> dict[str, torch.Tensor]:
        if self.compiled is not None:
            return self.compiled(data, stress)
        return self.model(data, compute_forces=True, compute_stress=stress)

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
        start = time.perf_counter()
        data = self.batch_for(atoms)
        graph_done = time.perf_counter()
        out = self.neighbors.real(self.evaluate(data, periodic))
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
