"""A model as an AOTInductor package for the LAMMPS pair style ``mlip``.

The pair style (C++, ``mlip/integrations/lammps/plugin``) owns the neighbour list and the
domain decomposition; the package computes, for one graph of atoms and edges, the
per-atom energies and the derivative of the local energy with respect to every edge
vector. The plugin turns those into forces on local and ghost atoms (pairwise, so the
ghosts' share is reverse-communicated by LAMMPS) and the global and per-atom virial.

Every message-passing layer computes only the atoms the rank owns. Between layers the
package calls the pair style's ghost exchange (:mod:`mlip.integrations.lammps.exchange`):
the ghosts' features come from their owners, and in the gradient go back to them. So the
ghost shell is one cutoff plus the skin, whatever the number of layers, and no rank
computes another rank's atoms.

Inputs of the package's function, in this order (the plugin's graph,
:mod:`mlip.integrations.lammps.graph`, one hop deep):
    vectors (E, 3) model dtype: edge vectors, sender minus receiver [Å], in mirrored
        order (edge H + k is edge k reversed, H = E / 2; see :mod:`mlip.data.keys`);
    species (N,) int64: species index of each graph node (the model's element order);
    edge_index (2, E) int64: (sender, receiver) node indices;
    local (N,) float64: 1 for nodes whose energy this rank owns, 0 otherwise;
    nodes (n,) int64: ``arange(n)``, the nodes every layer computes (the padding and the
        owned atoms, first);
    edges (E_0,) int64: the edges into those nodes (the ones every layer uses).
Outputs:
    energy (1,) float64: sum of the local nodes' energies [eV];
    atomic energies (N,) float64 [eV] (meaningful for the local nodes);
    dE/dvectors (E, 3) model dtype [eV/Å]: of the energy of all ranks together;
    for a model with a fitted uncertainty (metadata ``uncertainty: llpr``) also the per-node
    force uncertainty (N,) model dtype [eV/Å] (meaningful for the local nodes), which the
    plugin exposes to ``fix pair`` as the per-atom quantity ``uncertainty``.

Sizes are dynamic (every count >= 2): the plugin puts two padding nodes joined by one
padding pair first in every call, so a lone atom, an atom without neighbours or a rank
without atoms needs no special path. The package carries its metadata
(:data:`METADATA_KEYS`): the elements in species order, the cutoff, the message-passing
layers, the widest feature row exchanged, dtype and device, which the plugin reads to map
LAMMPS types to species and to size its communication buffers.

The model file stays weights-only; the package is compiled locally from it and holds
compiled code, so it is only ever loaded from a path the user chose to write.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mlip import __version__
from mlip.data import keys
from mlip.inference.compiled import _INDUCTOR_OPTIONS, frozen_copy
from mlip.integrations.lammps.exchange import ghost_exchange
from mlip.integrations.lammps.graph import plugin_graph

__all__ = ["PACKAGE_FORMAT", "METADATA_KEYS", "ExportError", "ExportReport", "LammpsFunction",
           "export_lammps"]

# Version of the package's calling convention; the plugin refuses any other.
PACKAGE_FORMAT = 3
METADATA_KEYS = ("mlip_lammps_format", "mlip_version", "elements", "cutoff", "hops",
                 "exchange_width", "dtype", "device", "uncertainty")


class ExportError(RuntimeError):
    """Tracing or compiling the package failed (the message says which, in one line)."""


def _first(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:300] if text else ""


class LammpsFunction(nn.Module):
    """Per-atom energies and dE/d(edge vectors) of one graph (see the module docstring).

    Args:
        potential: a frozen inference copy (:func:`~mlip.inference.compiled.frozen_copy`).
        active: compute only ``nodes`` from ``edges`` in every layer (the package's "model").
            False: every layer computes every node from every edge (its "full" twin, which
            the plugin runs where a rank has no ghost nodes, as a periodic box on one rank:
            there the index selections of the active sets would only cost time, about 9 %
            on the 960-atom acac box). Both make the same ghost exchanges.

    Attributes:
        widths: the width (features per node) of every exchange the last call made.
    """

    def __init__(self, potential: nn.Module, active: bool = True) -> None:
        super().__init__()
        backbone = potential.backbone
        if backbone.outputs.direct_forces:
            raise ValueError("a model with direct (non-conservative) forces cannot be exported "
                             "for LAMMPS: its forces are not -dE/dr")
        if backbone.message_passing_hops > 1 and not hasattr(backbone, "exchange"):
            raise ValueError(f"{type(backbone).__name__} has {backbone.message_passing_hops} "
                             "message-passing layers but no ghost-exchange hook (attribute "
                             "'exchange'): it cannot run in LAMMPS")
        self.potential = potential
        self.active = active
        self.widths: list[int] = []

    def forward(self, vectors: torch.Tensor, species: torch.Tensor, edge_index: torch.Tensor,
                local: torch.Tensor, nodes: torch.Tensor, edges: torch.Tensor
                ) -> tuple[torch.Tensor, ...]:
        vectors = vectors.detach().requires_grad_(True)
        data = {keys.EDGE_INDEX: edge_index, keys.BATCH: torch.zeros_like(species)}
        backbone = self.potential.backbone
        hops = int(backbone.message_passing_hops)
        self.widths = []

        def exchange(h: torch.Tensor) -> torch.Tensor:
            self.widths.append(math.prod(int(s) for s in h.shape[1:]))
            # the full twin computes every node: all N rows are its own
            return ghost_exchange(h, nodes if self.active else species, species)

        if hops > 1:
            backbone.exchange = exchange
        try:
            sets = [(nodes, edges)] * hops if self.active else None
            out, atomic = self.potential.atomic_energies(data, species, vectors, sets)
        finally:
            if hops > 1:
                backbone.exchange = None
        energy = (atomic * local).sum().reshape(1)
        (grad,) = torch.autograd.grad(energy, [vectors])
        if self.potential.uncertainty is None:
            return energy, atomic, grad
        _, forces_uncertainty = self.potential.uncertainty(
            out[keys.READOUT_FEATURES].detach(), species, data[keys.BATCH], 1, self.potential.scale)
        return energy, atomic, grad, forces_uncertainty


def example_graph(potential: nn.Module, dtype: torch.dtype, device: torch.device
                  ) -> tuple[torch.Tensor, ...]:
    """The inputs the package is traced on: the plugin's graph (one hop deep) of a random
    slab of the model's elements, owned atoms at one end. Their values do not matter, but
    every dynamic size must differ from the others (equal sizes would be traced as one
    symbol). The sizes are those of real work (about 600 owned atoms, 24 neighbours each),
    as the traced sizes are inductor's hints."""
    cutoff = float(potential.cutoff)
    for seed in range(100):
        rng = np.random.default_rng(seed)
        # ~24 neighbours per atom (a condensed phase) in a slab 2.5 cutoffs long
        m = 1000
        length = 2.5 * cutoff
        side = np.sqrt(m * (4 / 3) * np.pi * cutoff ** 3 / 24 / length)
        positions = rng.uniform(0, 1, (m, 3)) * [length, side, side]
        owned = positions[:, 0] < 1.5 * cutoff
        species = np.arange(m) % len(potential.atomic_numbers)
        graph = plugin_graph(positions, species, owned, cutoff, 1, dtype, device)
        sizes = [graph.species.shape[0], graph.vectors.shape[0]]
        sizes += [len(t) for t in graph.active[0]]
        if min(sizes) > 2 and len(set(sizes)) == len(sizes) and owned.sum() >= 2:
            return graph.inputs()
    raise ExportError("no example graph with distinct sizes (report this as a bug)")


@dataclass
class ExportReport:
    """What :func:`export_lammps` wrote."""

    path: Path
    metadata: dict[str, str]
    seconds: float


def package_metadata(potential: nn.Module, dtype: torch.dtype, device: torch.device,
                     exchange_width: int) -> dict[str, str]:
    """The strings the plugin reads from the package (all values are str);
    ``exchange_width``: the most features per node one ghost exchange carries."""
    from ase.data import chemical_symbols

    return {
        "mlip_lammps_format": str(PACKAGE_FORMAT),
        "mlip_version": __version__,
        "elements": " ".join(chemical_symbols[z] for z in potential.atomic_numbers),
        "cutoff": repr(float(potential.cutoff)),
        "hops": str(int(potential.backbone.message_passing_hops)),
        "exchange_width": str(int(exchange_width)),
        "dtype": {torch.float32: "float32", torch.float64: "float64"}[dtype],
        "device": device.type,
        "uncertainty": "none" if potential.uncertainty is None else "llpr",
    }


def export_lammps(model: str | Path | nn.Module, output: str | Path,
                  dtype: torch.dtype | None = None, device: str | torch.device = "cpu",
                  kernel_threads: int = 1) -> ExportReport:
    """Compile a model for the LAMMPS pair style ``mlip`` (AOTInductor, locally).

    Args:
        model: a model file (loaded with ``weights_only=True``) or a Potential.
        output: the package to write (``.pt2``); written under a temporary name and
            renamed, so a failure leaves nothing behind.
        dtype: float32 or float64, a torch dtype or its name (default: the model's).
        device: where the package runs ("cpu" or "cuda"; the plugin's libtorch must match).
        kernel_threads: OpenMP threads the generated CPU kernels are written for. 1 (the
            default) writes serial loops: a scatter then needs no atomic adds, and the
            matrix products still use every thread LAMMPS gives a rank (OMP_NUM_THREADS).
            On the 960-atom acac box (2-core CPU) a serial-kernel package took 0.37 s per
            call on 1 thread and 0.31 s on 2, one written for 2 threads 0.93 s and 0.48 s
            (docs/benchmarks.md, LAMMPS). 0: as many as torch uses while exporting.

    Returns:
        an :class:`ExportReport`.

    Raises:
        ExportError: tracing or compiling failed; ValueError / FileNotFoundError: the
            model file cannot be read, or the model cannot run in LAMMPS.
    """
    from torch._inductor.package import package_aoti
    from torch.export import Dim
    from torch.fx.experimental.proxy_tensor import make_fx

    from mlip.inference.engine import inference_model, resolve_device, resolve_dtype

    start = time.perf_counter()
    device = resolve_device(device)
    potential = inference_model(model, device, resolve_dtype(dtype))
    dtype = next(potential.parameters()).dtype
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"LAMMPS packages are float32 or float64, not {dtype}")
    frozen = frozen_copy(potential, radial_table=True)
    args = example_graph(potential, dtype, device)
    programs, widths = {}, []
    for name, active in (("model", True), ("full", False)):
        fn = LammpsFunction(frozen, active)
        try:
            graph = make_fx(fn, tracing_mode="symbolic", _allow_non_fake_inputs=True)(*args)
            nodes, edges = Dim("num_nodes", min=2), 2 * Dim("num_pairs", min=1)
            shapes = ({0: edges}, {0: nodes}, {1: edges}, {0: nodes},
                      {0: Dim("computed_nodes", min=2)}, {0: Dim("computed_edges", min=2)})
            programs[name] = torch.export.export(graph, args, dynamic_shapes=shapes, strict=False)
        except Exception as err:  # noqa: BLE001 - reported as one line
            raise ExportError(f"tracing the model failed: {type(err).__name__}: "
                              f"{_first(err)}") from err
        widths += fn.widths
    metadata = package_metadata(potential, dtype, device, max(widths, default=0))
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.parent / f".{output.name}.{os.getpid()}.tmp.pt2"  # the user's file mode
    try:
        options = dict(_INDUCTOR_OPTIONS)
        options["aot_inductor.metadata"] = metadata
        options["aot_inductor.package"] = True
        options["cpp.threads"] = kernel_threads if kernel_threads > 0 else -1  # -1: all
        try:
            files = {}
            for name, program in programs.items():
                example, kwargs = program.example_inputs
                files[name] = torch._inductor.aot_compile(program.module(check_guards=False),
                                                          example, kwargs, options=dict(options))
            package_aoti(str(tmp), files)
        except Exception as err:  # noqa: BLE001 - e.g. no C++ compiler
            raise ExportError(f"compiling the package failed: {type(err).__name__}: "
                              f"{_first(err)}") from err
        os.replace(tmp, output)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return ExportReport(output, metadata, time.perf_counter() - start)
