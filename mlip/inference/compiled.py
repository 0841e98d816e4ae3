"""Compiled force path: a model's energy, forces (and stress) as one ahead-of-time
compiled function (torch.export + AOTInductor), built locally and cached.

The model file never holds compiled code: it stays config + tensors, loaded with
``weights_only=True``. This module turns a loaded :class:`~mlip.model.potential.Potential`
into a graph that already contains the backward pass (the forces are -dE/dr by autograd,
traced once with ``make_fx`` so the derivative becomes ordinary operations), exports it
with a dynamic number of atoms and edges (float32 models with their radial networks
tabulated, :meth:`~mlip.model.potential.Potential.tabulate_radial`, exact to float32's
epsilon), compiles it with AOTInductor and writes the
package into the user cache folder (:func:`mlip.cache.cache_dir` ``("compiled")``), keyed
by a fingerprint of the weights and architecture, the torch version, device, dtype, the
number of structures per call and whether stress is computed. The next load of the same
model reuses the package (no compilation). Anything that goes wrong while building or
loading it (an unsupported operation, no C++ compiler) ends in :class:`CompileError`;
the calculator then warns in one line and runs eager.

Inputs of the compiled function (one call = B structures; B is fixed per package):
positions (N, 3), atomic numbers (N,), edge index (2, E), cell shifts (E, 3), cell
(B, 3, 3), pbc (B, 3), batch (N,). Outputs: energy (B,) float64, atomic energies (N,)
float64, forces (N, 3) [and stress (B, 3, 3)].
"""

from __future__ import annotations

import copy
import hashlib
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path

import torch

from mlip.cache import cache_dir
from mlip.data import keys

__all__ = ["CompileError", "CompiledForceField", "CompiledModel", "fingerprint", "INPUT_KEYS"]

INPUT_KEYS = (keys.POSITIONS, keys.ATOMIC_NUMBERS, keys.EDGE_INDEX, keys.CELL_SHIFTS, keys.CELL,
              keys.PBC, keys.BATCH)
# Bump when the traced function changes meaning or its graph or build changes (3, 4: the
# unrolled shared product and row-folded matmuls; 5: no index bounds checks;
# 6: tabulated radial networks, copied operands of the degree-wise linear maps; 7: tables
# exactly 0 beyond the cutoff, one-hot species without a range check; 8: mirrored edges an
# invariant, no marker input; 9: serial CPU kernels; 10: uncertainty outputs), so old packages are not reused.
_FORMAT = 10
# Smallest sizes a package accepts (export specialises sizes 0 and 1); smaller inputs
# (a lone atom, a structure with a single edge) take the eager path.
_MIN_ATOMS, _MIN_EDGES = 2, 2
# Inductor settings of the build, applied only inside it (inductor.config.patch). Without
# the bounds check of every indirect load (the per-edge gathers and scatters), a compiled
# force call takes 6 % less on the 960-atom acac box and 9 % less on one molecule
# (docs/history.md, Speed). Indices then must be in range: the package
# is fed only batches that mlip's neighbour lists built, for elements the model checked.
# CPU kernels are written as serial loops (cpp.threads = 1) whatever the thread count at
# build time: a kernel written for several threads adds its scatters atomically, and on the
# 960-atom box (2-core CPU) a package built that way took 0.87 s per call on 1 thread and
# 0.44 s on 2, a serial one 0.34 s on either (the matrix products still use every torch
# thread). It also makes a cached package independent of the thread count it was built at.
_INDUCTOR_OPTIONS = {"assert_indirect_indexing": False, "cpp.threads": 1}


class CompileError(RuntimeError):
    """The compiled path could not be built or loaded (the caller falls back to eager)."""


def fingerprint(potential: torch.nn.Module) -> str:
    """sha256 of a model's architecture (its module tree) and of every tensor in its state
    dict (names, dtypes, shapes, bytes): equal fingerprints compute the same function."""
    h = hashlib.sha256(repr(potential).encode())
    h.update(repr((potential.baseline, potential.cutoff, potential.atomic_numbers)).encode())
    for name, value in sorted(potential.state_dict().items()):
        t = value.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


class _ForceFunction(torch.nn.Module):
    """The traced function: flat tensors in, flat tensors out (a frozen model copy)."""

    def __init__(self, potential: torch.nn.Module, stress: bool) -> None:
        super().__init__()
        self.potential = potential
        self.stress = stress

    def forward(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        data = dict(zip(INPUT_KEYS, tensors, strict=True))
        # One empty structure more (zero cell, no pbc, no atoms): with B = 1 the per-structure
        # sums would scatter into a one-element buffer, which torch 2.13's C++ vectoriser
        # cannot store to (an assertion in inductor's cpp codegen); with B + 1 it can.
        data[keys.CELL] = torch.cat([data[keys.CELL], data[keys.CELL].new_zeros(1, 3, 3)])
        data[keys.PBC] = torch.cat([data[keys.PBC], data[keys.PBC].new_zeros(1, 3)])
        out = self.potential(data, compute_forces=True, compute_stress=self.stress)
        result = (out[keys.ENERGY][:-1], out[keys.ATOMIC_ENERGIES], out[keys.FORCES])
        result = result + ((out[keys.STRESS][:-1],) if self.stress else ())
        if keys.ENERGY_UNCERTAINTY in out:  # a model with a fitted last-layer uncertainty
            result = result + (out[keys.ENERGY_UNCERTAINTY][:-1], out[keys.FORCES_UNCERTAINTY])
        return result


def frozen_copy(potential: torch.nn.Module, radial_table: bool) -> torch.nn.Module:
    """A private eval-mode copy whose lone-atom reference is a fixed tensor (traced as a
    constant instead of a backbone pass per call), with tabulated radial networks where
    ``radial_table`` and the table is exact to the model dtype's epsilon (see
    :meth:`Potential.tabulate_radial`; in practice float32 models, at 0.01-0.02 Å)."""
    model = copy.deepcopy(potential).eval()
    for p in model.parameters():
        p.grad = None  # a trained model's leftover gradients would be traced as constants
        p.requires_grad_(False)
    model.freeze_reference()
    dtype = next(model.parameters()).dtype
    # float64's epsilon is out of reach of every spacing tried (8.5e-10 at 0.005 Å on the
    # model of tests/model/test_tabulated.py, measured): build no tables to discard.
    if radial_table and dtype != torch.float64:
        model.tabulate_radial(torch.finfo(dtype).eps)
    return model


def _example_inputs(data: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
    return tuple(data[k] for k in INPUT_KEYS)


def export_force_function(potential: torch.nn.Module, data: dict[str, torch.Tensor],
                          stress: bool, radial_table: bool = True) -> torch.export.ExportedProgram:
    """Trace energy + autograd forces (+ stress) of ``potential`` on the example batch
    ``data`` into one graph and export it with dynamic atom and edge counts (radial
    networks tabulated where ``radial_table`` and exact enough, see :func:`frozen_copy`)."""
    from torch.export import Dim
    from torch.fx.experimental.proxy_tensor import make_fx

    fn = _ForceFunction(frozen_copy(potential, radial_table), stress)
    args = _example_inputs(data)
    graph = make_fx(fn, tracing_mode="symbolic", _allow_non_fake_inputs=True)(*args)
    atoms = Dim("num_atoms", min=_MIN_ATOMS)
    # Edges come in mirrored pairs (mlip.data.keys): an even count, which the traced halves assume.
    edges = 2 * Dim("num_pairs", min=_MIN_EDGES // 2)
    shapes = ({0: atoms}, {0: atoms}, {1: edges}, {0: edges}, None, None, {0: atoms})
    return torch.export.export(graph, args, dynamic_shapes=shapes, strict=False)


class CompiledForceField:
    """A model's compiled force function, built (or loaded from the cache) at construction.

    Args:
        potential: the model (not modified; a frozen copy is traced).
        example: an input batch on the target device and dtype (its sizes do not matter
            beyond the minimum of 2 atoms and 2 edges; the number of structures B does).
            Every batch the package evaluates must be a valid mlip batch: the compiled
            code does not check that edge indices and species lie in range.
        stress: also return the stress.
        cache: read and write packages in the cache folder (False: compile into a
            temporary folder, removed once the package is loaded).

    Attributes:
        path: the package file.
        compile_seconds: time spent tracing and compiling (0 when loaded from the cache).
        load_seconds: time spent loading the package.
        from_cache: whether the package was reused.

    Raises:
        CompileError: tracing, export, compilation or loading failed.
    """

    def __init__(self, potential: torch.nn.Module, example: dict[str, torch.Tensor],
                 stress: bool, cache: bool = True) -> None:
        dtype = example[keys.POSITIONS].dtype
        device = example[keys.POSITIONS].device
        self.num_graphs = int(example[keys.CELL].shape[0])
        self.stress = stress
        key = hashlib.sha256("|".join(map(str, (
            fingerprint(potential), torch.__version__, device, dtype, self.num_graphs, stress,
            _FORMAT,
        ))).encode()).hexdigest()[:32]
        folder = cache_dir("compiled") if cache else Path(tempfile.mkdtemp(prefix="mlip-aoti-"))
        self.path = folder / f"{key}.pt2"
        self.compile_seconds = 0.0
        self.from_cache = self.path.exists()
        try:
            if not self.from_cache:
                start = time.perf_counter()
                self._build(potential, example)
                self.compile_seconds = time.perf_counter() - start
            start = time.perf_counter()
            self._runner = torch._inductor.aoti_load_package(str(self.path))
            self.load_seconds = time.perf_counter() - start
        except Exception as err:  # noqa: BLE001 - every failure means: fall back to eager
            first = str(err).strip().splitlines()[0] if str(err).strip() else ""
            raise CompileError(f"{type(err).__name__}: {first[:200]}") from err
        finally:
            if not cache:  # the loader keeps its own extracted copy: leave no folder behind
                shutil.rmtree(folder, ignore_errors=True)

    def _build(self, potential: torch.nn.Module, example: dict[str, torch.Tensor]) -> None:
        program = export_force_function(potential, example, self.stress)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Compile into a temporary name and rename: a crash leaves no half-written package.
        fd, tmp = tempfile.mkstemp(suffix=".pt2", dir=self.path.parent)
        os.close(fd)
        try:
            with torch._inductor.config.patch(_INDUCTOR_OPTIONS):
                torch._inductor.aoti_compile_and_package(program, package_path=tmp)
            os.replace(tmp, self.path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def accepts(self, data: dict[str, torch.Tensor]) -> bool:
        """Whether the package can evaluate this batch (else use the eager model)."""
        return (data[keys.POSITIONS].shape[0] >= _MIN_ATOMS
                and data[keys.EDGE_INDEX].shape[1] >= _MIN_EDGES
                and data[keys.CELL].shape[0] == self.num_graphs)

    def __call__(self, data: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """ENERGY, ATOMIC_ENERGIES, FORCES (and STRESS; and ENERGY_UNCERTAINTY,
        FORCES_UNCERTAINTY for a model with a fitted uncertainty) of the batch, as the eager
        model."""
        out = self._runner(*_example_inputs(data))
        result = {keys.ENERGY: out[0], keys.ATOMIC_ENERGIES: out[1], keys.FORCES: out[2]}
        if self.stress:
            result[keys.STRESS] = out[3]
        if len(out) > 3 + self.stress:
            result[keys.ENERGY_UNCERTAINTY], result[keys.FORCES_UNCERTAINTY] = out[3 + self.stress:]
        return result


class CompiledModel:
    """Energy, forces (and stress) of batches through compiled packages where they apply,
    the eager model elsewhere: one package per (structures per call, stress) built on first
    use, and after a failure one warning and eager for that kind of call from then on.

    Args:
        potential: the (inference) model; also the eager fallback.
        cache: keep packages in the user cache folder (see :class:`CompiledForceField`).

    Attributes:
        packages: (num_graphs, stress) -> CompiledForceField, or None after a failure.
    """

    def __init__(self, potential: torch.nn.Module, cache: bool = True) -> None:
        self.potential = potential
        self.cache = cache
        self.packages: dict[tuple[int, bool], CompiledForceField | None] = {}

    def __call__(self, data: dict[str, torch.Tensor], stress: bool) -> dict[str, torch.Tensor]:
        key = (int(data[keys.CELL].shape[0]), bool(stress))
        if key not in self.packages:
            try:
                self.packages[key] = CompiledForceField(self.potential, data, stress, self.cache)
            except CompileError as err:
                warnings.warn(f"mlip: compiling the model failed, running eager ({err})",
                              RuntimeWarning, stacklevel=3)
                self.packages[key] = None
        package = self.packages[key]
        if package is not None and package.accepts(data):
            return package(data)
        return self.potential(data, compute_forces=True, compute_stress=stress)
