"""The inference engine: one object that runs a trained model for every adapter.

:class:`ForceField` owns everything between a model file and energies, forces and stress:
loading (``weights_only``), device and dtype, a frozen inference copy, the eager /
compiled (AOTInductor, :mod:`mlip.inference.compiled`) / CUDA-graph
(:mod:`mlip.inference.graphed`) choice and its fallbacks, element checks, and through
:meth:`ForceField.track` the Verlet-skin neighbour list (:class:`mlip.graph.skin.SkinNeighborList`,
fixed shapes included) with the close-contact and NaN checks. The ASE calculator, the
torch-sim model, batched replicas, ``mlip md`` and ``mlip eval`` are thin adapters over it
(:mod:`mlip.integrations`, :mod:`mlip.md`, :mod:`mlip.inference.evaluate`); the errors and
their messages come from :mod:`mlip.inference.errors`.

Three ways in:

* :meth:`ForceField.evaluate`: a batch dict (from :func:`mlip.graph.build.collate`) in,
  outputs out: evaluation loops over a DataLoader.
* :meth:`ForceField.track` -> :class:`TrackedSystems`: a fixed set of structures whose atoms
  move (MD, relaxation); per call only positions go in.
* :meth:`ForceField.predict`: ASE Atoms or Structures in, numpy results out, one call.
"""

from __future__ import annotations

import copy
import inspect
import time
from collections.abc import Sequence
from pathlib import Path

import ase
import numpy as np
import torch

from mlip.data import keys
from mlip.data.readers import atoms_to_structure
from mlip.data.structure import Structure
from mlip.graph.build import structures_to_batch
from mlip.graph.skin import SkinNeighborList
from mlip.inference.compiled import CompiledModel
from mlip.inference.errors import (
    AtomsTooCloseError,
    NonFiniteOutputError,
    non_finite_message,
    non_finite_systems,
    too_close_message,
)
from mlip.inference.graphed import GraphedForceField
from mlip.model.io import is_committee_file, load_committee, load_model
from mlip.model.potential import Potential
from mlip.model.uncertainty import combine_committee

__all__ = ["ForceField", "TrackedSystems", "as_engine", "COMPILE_MODES", "compile_mode", "resolve_device",
           "resolve_dtype"]

COMPILE_MODES = ("none", "aot", "inductor")


def compile_mode(compile: bool | str | None) -> str:
    """Normalise a ``compile`` argument: False/None/"eager" -> "none", True -> "aot"."""
    mode = {False: "none", True: "aot", None: "none", "eager": "none"}.get(compile, compile)
    if mode not in COMPILE_MODES:
        raise ValueError(f"compile must be True/False or one of {COMPILE_MODES}, got {compile!r}")
    return mode


def resolve_device(device: str | torch.device | None) -> torch.device:
    """'auto' (or None) -> cuda when available, else cpu; "cuda" -> "cuda:0" (as tensors
    report it). A CUDA device without CUDA is an error."""
    if device is None or str(device) == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        resolved = torch.device(device)
    except RuntimeError as err:
        raise ValueError(f"unknown device {device!r}: use 'cpu', 'cuda', 'cuda:N' or 'auto'") from err
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} requested but CUDA is not available (torch "
                             f"{torch.__version__}, no GPU visible): use 'cpu' or 'auto'")
        if resolved.index is None:
            resolved = torch.device("cuda", torch.cuda.current_device())
    return resolved


def resolve_dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    """torch.float32/float64, their names, or None (the model's own)."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in ("float32", "float64"):
        raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
    return getattr(torch, dtype)


def committee_of(model, device: torch.device, dtype: torch.dtype | None
                 ) -> tuple[list[Potential | str | Path] | None, tuple[float, float]]:
    """The members and calibration of a committee (a committee file, or a list/tuple of
    model files or Potentials: alpha 1), or (None, (1, 1)) for one model."""
    if isinstance(model, (list, tuple)):
        if len(model) < 2:
            raise ValueError(f"a committee needs at least two members, got {len(model)}")
        return list(model), (1.0, 1.0)
    if isinstance(model, (str, Path)) and Path(model).is_file() and is_committee_file(model):
        members, alpha = load_committee(model, device=device, dtype=dtype)
        for m in members:  # ours: frozen in place
            for p in m.parameters():
                p.requires_grad_(False)
        return members, alpha
    return None, (1.0, 1.0)


def inference_model(model: Potential | str | Path, device: torch.device,
                    dtype: torch.dtype | None, compile_backbone: bool = False) -> Potential:
    """The engine's own model on ``device`` in ``dtype``, in eval mode, weights frozen.

    A model object in eval mode is used as is when nothing changes, else a copy is
    moved/cast/put in eval mode (the caller's module is never modified). With ``compile_backbone`` the copy's backbone is
    ``torch.compile``'d (dynamic shapes: edge counts change every step).
    """
    if not isinstance(model, Potential):
        owned = load_model(model, device=device, dtype=dtype)
        if owned.heads:
            raise ValueError(f"{model} has the heads {owned.heads}: the engine takes one; write it "
                             f"with `mlip export head {model} --head NAME -o OUT.pt`")
    else:
        if model.heads:
            raise ValueError(f"the model has the heads {model.heads}: the engine takes one "
                             "(mlip.model.heads.select_head)")
        current = next(model.parameters())
        same = current.device == device and dtype in (None, current.dtype) and not model.training
        owned = model if same and not compile_backbone else copy.deepcopy(model).to(device=device, dtype=dtype)
    if owned is not model:
        for p in owned.parameters():
            p.requires_grad_(False)
    if compile_backbone:
        owned.backbone = torch.compile(owned.backbone, dynamic=True)
    return owned.eval()


class ForceField:
    """A trained model ready to compute energies, forces and stress.

    Uncertainty: a model file with a fitted last-layer estimate (:mod:`mlip.model.uncertainty`)
    returns ENERGY_UNCERTAINTY (B,) [eV] and FORCES_UNCERTAINTY (N,) [eV/Å] with every call;
    a committee (a committee file, or a list of model files or Potentials) returns the
    members' mean energy, forces and stress and, as uncertainties, the members' calibrated
    standard deviations (:func:`~mlip.model.uncertainty.combine_committee`).

    Args:
        model: a model file (``model.pt`` from ``mlip train``, loaded with
            ``weights_only=True``) or a :class:`~mlip.model.potential.Potential` (used as is
            when it is in eval mode, device and dtype match and nothing is compiled, else a
            moved copy; the caller's module is never modified); or a committee: a committee
            file (``mlip train --committee K``) or a list of model files / Potentials
            (uncalibrated: alpha = 1).
        device: "cpu", "cuda", "cuda:N" or "auto" (CUDA when available).
        dtype: torch.float32/float64 or their names; default the model's.
        compile: ``"aot"`` (or True): energy + forces (+ stress) as one AOTInductor-compiled
            function (:mod:`mlip.inference.compiled`), built at the first call of each batch
            size (minutes on CPU) and cached in the user cache folder; on failure one warning
            and eager. ``"inductor"``: ``torch.compile`` of the backbone (dynamic shapes,
            recompiled in every process). False / ``"none"``: eager.
        cuda_graphs: replay each force call from a CUDA graph (:mod:`mlip.inference.graphed`;
            CUDA devices only; implies ``fixed_shapes`` for tracked systems). A failed
            capture warns once and runs without graphs.
        fixed_shapes: tracked systems keep the ``cutoff + skin`` list unfiltered and padded,
            plus a ghost structure (:class:`~mlip.graph.skin.SkinNeighborList`): the same
            results at about (1 + skin/cutoff)^3 times the edges. Default: as ``cuda_graphs``.
        skin: Verlet skin of tracked systems [Å]; 0 rebuilds the neighbour list every call.
        min_distance: tracked systems raise :class:`~mlip.inference.errors.AtomsTooCloseError`
            when two atoms are closer than this [Å]; None disables.

    Attributes:
        model: the engine's Potential (eval mode).
        device, dtype, cutoff: where and in what it runs; the model's cutoff [Å].
        compiled: with ``compile="aot"`` a :class:`~mlip.inference.compiled.CompiledModel`
            (its ``packages``: compile_seconds, load_seconds, from_cache); else None.
        graphs: with ``cuda_graphs`` a :class:`~mlip.inference.graphed.GraphedForceField`
            (captures, failed); else None.
        timings: seconds in graph work ("neighbors": rebuilds, position upload, cutoff mask,
            distance check) and in the model ("model"), and the number of tracked "calls".
    """

    def __init__(
        self,
        model: str | Path | Potential,
        *,
        device: str | torch.device | None = "auto",
        dtype: torch.dtype | str | None = None,
        compile: bool | str = False,
        cuda_graphs: bool = False,
        fixed_shapes: bool | None = None,
        skin: float = 0.5,
        min_distance: float | None = 0.5,
    ) -> None:
        self.device = resolve_device(device)
        self.compile_mode = compile_mode(compile)
        self.members, self.committee_alpha = committee_of(model, self.device, resolve_dtype(dtype))
        if self.members is not None:
            self.members = [inference_model(m, self.device, resolve_dtype(dtype),
                                            self.compile_mode == "inductor") for m in self.members]
            self.model = self.members[0]
            for k, m in enumerate(self.members[1:], start=1):
                if m.atomic_numbers != self.model.atomic_numbers or m.cutoff != self.model.cutoff:
                    raise ValueError(f"committee member {k}: elements {m.atomic_numbers} / cutoff "
                                     f"{m.cutoff} differ from member 0's: members share them")
        else:
            self.model = inference_model(model, self.device, resolve_dtype(dtype),
                                         self.compile_mode == "inductor")
        self.dtype = next(self.model.parameters()).dtype
        self.cutoff = self.model.cutoff
        self.compiled = CompiledModel(self.model) if self.compile_mode == "aot" else None
        self._compiled_members = ([self.compiled] + [CompiledModel(m) for m in self.members[1:]]
                                  if self.compiled is not None and self.members else None)
        if cuda_graphs and self.device.type != "cuda":
            raise ValueError(f"cuda_graphs=True needs a CUDA device, not {self.device} "
                             "(fixed_shapes=True gives the same inputs without graphs)")
        self.graphs = GraphedForceField(self._force_call) if cuda_graphs else None
        self.fixed_shapes = bool(cuda_graphs) if fixed_shapes is None else bool(fixed_shapes)
        if skin < 0:
            raise ValueError(f"skin must be >= 0 Å, got {skin}")
        self.skin = float(skin)
        if min_distance is not None and min_distance < 0:
            raise ValueError(f"min_distance must be >= 0 Å or None, got {min_distance}")
        self.min_distance = min_distance
        self.timings = {"neighbors": 0.0, "model": 0.0, "calls": 0}

    @property
    def atomic_numbers(self) -> list[int]:
        """The elements the model knows."""
        return list(self.model.atomic_numbers)

    def check_elements(self, numbers, where: str = "") -> None:
        """Raise :class:`~mlip.model.potential.UnknownElementError` naming the elements
        of ``numbers`` the model does not know (``where``: what the atoms are)."""
        self.model.check_elements(numbers, where=where)

    # -- batches --------------------------------------------------------------------------
    def evaluate(self, data: dict[str, torch.Tensor], stress: bool = False,
                 forces: bool = True) -> dict[str, torch.Tensor]:
        """Energy, forces (and stress) of a batch dict on the engine's device: the compiled
        function where one accepts the batch, else the eager model; replayed from a CUDA
        graph with ``cuda_graphs``. Without ``forces`` always the eager model. A
        fixed-shape batch's outputs include its ghost structure (tracked systems drop it)."""
        if not forces:
            with torch.enable_grad():
                if self.members is not None:
                    return combine_committee([m(data, compute_forces=False, compute_stress=stress)
                                              for m in self.members], self.committee_alpha)
                return self.model(data, compute_forces=False, compute_stress=stress)
        if self.graphs is not None:
            return self.graphs(data, stress)
        return self._force_call(data, stress)

    @property
    def has_uncertainty(self) -> bool:
        """Whether every call returns ENERGY_UNCERTAINTY and FORCES_UNCERTAINTY."""
        return self.members is not None or self.model.uncertainty is not None

    def _force_call(self, data: dict[str, torch.Tensor], stress: bool) -> dict[str, torch.Tensor]:
        if self.members is not None:
            outs = []
            for k, member in enumerate(self.members):
                if self._compiled_members is not None:
                    outs.append(self._compiled_members[k](data, stress))
                else:
                    with torch.enable_grad():
                        outs.append(member(data, compute_forces=True, compute_stress=stress))
            return combine_committee(outs, self.committee_alpha)
        if self.compiled is not None:
            return self.compiled(data, stress)
        with torch.enable_grad():  # forces are -dE/dr, also under a caller's no_grad
            return self.model(data, compute_forces=True, compute_stress=stress)

    def track(self, structures: Sequence[Structure], where: str | None = None) -> TrackedSystems:
        """A fixed set of structures (numbers, cells, pbc) whose positions will change.

        Args:
            structures: the structures at their starting positions.
            where: how errors name a system: ``"replica"`` -> "replica 2: ...", ``None``
                (one system) -> no prefix.
        """
        return TrackedSystems(self, structures, where)

    def predict(self, structures: Sequence[ase.Atoms | Structure] | ase.Atoms,
                stress: bool | None = None) -> list[dict[str, np.ndarray | float]]:
        """Energy [eV], forces [eV/Å], per-atom energies [eV] (and stress [eV/Å^3], 3x3,
        ASE's sign; energy_uncertainty [eV] and forces_uncertainty (N,) [eV/Å] for a model
        with an uncertainty or a committee) of each structure, in one batched call.

        Args:
            structures: ASE Atoms or :class:`~mlip.data.structure.Structure` objects.
            stress: compute stress; default when every structure is periodic.

        Raises:
            UnknownElementError, NonFiniteOutputError: as for tracked systems.
        """
        if isinstance(structures, ase.Atoms):
            structures = [structures]
        records = [s if isinstance(s, Structure) else atoms_to_structure(s, source="<atoms>", frame=k)
                   for k, s in enumerate(structures)]
        for k, s in enumerate(records):
            self.check_elements(s.numbers, where=f"structure {k}" if len(records) > 1 else "")
        if stress is None:
            stress = all(s.periodic for s in records)
        data = structures_to_batch(records, self.cutoff, self.dtype, self.device, labels=False)
        out = self.evaluate(data, stress)
        bad = non_finite_systems(out, data[keys.BATCH])
        if bool(bad.any()):
            raise NonFiniteOutputError(non_finite_message(f"structure(s) {bad.nonzero().flatten().tolist()[:10]}"))
        sizes = data[keys.NUM_ATOMS].tolist()
        energies = out[keys.ENERGY].detach().cpu().tolist()
        forces = out[keys.FORCES].detach().cpu().double().numpy()
        atomic = out[keys.ATOMIC_ENERGIES].detach().cpu().double().numpy()
        bounds = np.concatenate([[0], np.cumsum(sizes)])
        results = []
        for k, s in enumerate(records):
            lo, hi = bounds[k], bounds[k + 1]
            r = {"energy": energies[k], "forces": forces[lo:hi], "energies": atomic[lo:hi]}
            if stress:
                r["stress"] = out[keys.STRESS][k].detach().cpu().double().numpy() if s.periodic else np.zeros((3, 3))
            if keys.ENERGY_UNCERTAINTY in out:
                r["energy_uncertainty"] = float(out[keys.ENERGY_UNCERTAINTY][k])
                r["forces_uncertainty"] = out[keys.FORCES_UNCERTAINTY][lo:hi].detach().cpu().double().numpy()
            results.append(r)
        return results


def as_engine(model: str | Path | Potential | ForceField, adapter: str, **options) -> ForceField:
    """The engine an adapter drives: ``model`` itself when it is a :class:`ForceField`
    (then ``options`` must be left at their defaults: the engine's settings apply), else a
    new ``ForceField(model, **options)``.

    Args:
        adapter: the adapter's name, for the error message.
    """
    if not isinstance(model, ForceField):
        return ForceField(model, **options)
    defaults = {k: p.default for k, p in inspect.signature(ForceField.__init__).parameters.items()}
    changed = [k for k, v in options.items()
               if v != defaults[k] and not (k == "device" and v in (None, "auto"))]
    if changed:
        raise ValueError(f"{adapter}(ForceField, ...): set {changed} on the ForceField, not here")
    return model


class TrackedSystems:
    """Structures whose atoms move, evaluated through a Verlet-skin neighbour list.

    Built by :meth:`ForceField.track`. Each :meth:`compute` takes all positions of all
    structures and returns their energies, forces (and stress) with the ghost rows of a
    fixed-shape list removed; two atoms closer than the engine's ``min_distance`` raise
    :class:`~mlip.inference.errors.AtomsTooCloseError` naming the system and atoms.

    Attributes:
        neighbors: the :class:`~mlip.graph.skin.SkinNeighborList`.
        batch: (N,) structure index of each atom, on the device.
    """

    def __init__(self, engine: ForceField, structures: Sequence[Structure], where: str | None) -> None:
        self.engine = engine
        self.where = where
        for k, s in enumerate(structures):
            engine.check_elements(s.numbers, where=self._name(k))
        self.numbers = [np.asarray(s.numbers) for s in structures]
        self._offsets = np.concatenate([[0], np.cumsum([len(z) for z in self.numbers])])
        self.neighbors = SkinNeighborList(engine.cutoff, engine.skin, engine.dtype, engine.device,
                                          fixed_shapes=engine.fixed_shapes)
        self.neighbors.reset(structures)
        sizes = torch.tensor([len(z) for z in self.numbers], device=engine.device)
        self.batch = torch.arange(len(self.numbers), device=engine.device).repeat_interleave(sizes)

    @property
    def builds(self) -> int:
        """Per-structure neighbour-list builds so far (the first ones included)."""
        return self.neighbors.builds

    def _name(self, system: int) -> str:
        return f"{self.where} {system}" if self.where else ""

    def compute(self, positions: torch.Tensor, stress: bool = False, forces: bool = True,
                check_finite: bool = True) -> dict[str, torch.Tensor]:
        """Outputs at ``positions`` (N, 3) [Å] of all atoms, structure after structure.

        Args:
            stress: also STRESS/VIRIAL (zero for non-periodic structures).
            forces: compute FORCES.
            check_finite: raise :class:`~mlip.inference.errors.NonFiniteOutputError` for
                NaN/inf outputs (one host read; :meth:`non_finite` checks later instead).

        Returns:
            the model's outputs (ENERGY (B,), ATOMIC_ENERGIES (N,), FORCES (N, 3), ...),
            not detached, on the device.
        """
        timings = self.engine.timings
        start = time.perf_counter()
        data = self.neighbors.batch(positions)
        pair = self.neighbors.closest_pair(self.engine.min_distance)
        if pair is not None:
            i, j, distance = pair
            s = int(np.searchsorted(self._offsets, i, side="right") - 1)
            lo = self._offsets[s]
            raise AtomsTooCloseError(too_close_message(self.numbers[s], i - lo, j - lo, distance,
                                                       self.engine.min_distance, self._name(s)))
        ready = time.perf_counter()
        out = self.neighbors.real(self.engine.evaluate(data, stress, forces))
        if check_finite:
            self.check_finite(out)
        timings["neighbors"] += ready - start
        timings["model"] += time.perf_counter() - ready
        timings["calls"] += 1
        return out

    def non_finite(self, out: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B,) bool on the device: the structures with NaN/inf outputs (no host read)."""
        return non_finite_systems(out, self.batch)

    def check_finite(self, out: dict[str, torch.Tensor]) -> None:
        """Raise :class:`~mlip.inference.errors.NonFiniteOutputError` when an output of
        ``out`` is NaN/inf, naming the structure(s) and atoms (one host read)."""
        total = out[keys.ENERGY].sum()
        for k in (keys.FORCES, keys.ATOMIC_ENERGIES, keys.STRESS):
            if k in out:
                total = total + out[k].sum()
        if bool(torch.isfinite(total)):
            return
        bad = self.non_finite(out).nonzero().flatten().tolist()
        if not bad:  # finite values whose sum overflowed
            return
        if len(self.numbers) == 1 and not self.where:
            what = ase.Atoms(numbers=self.numbers[0]).get_chemical_formula()
        else:
            what = f"{self.where or 'system'}(s) {bad[:10]}"
        atoms = None
        if keys.FORCES in out and len(bad) == 1:
            lo, hi = self._offsets[bad[0]], self._offsets[bad[0] + 1]
            rows = ~torch.isfinite(out[keys.FORCES][lo:hi]).all(dim=1)
            if keys.ATOMIC_ENERGIES in out:
                rows = rows | ~torch.isfinite(out[keys.ATOMIC_ENERGIES][lo:hi])
            atoms = rows.nonzero().flatten().tolist()
        raise NonFiniteOutputError(non_finite_message(what, atoms))
