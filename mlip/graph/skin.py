"""Verlet-skin neighbour lists: the model's input for structures whose atoms move.

MD calls the model thousands of times on the same atoms at slightly different positions.
:class:`SkinNeighborList` builds each structure's graph once at ``cutoff + skin`` with the
one input path (:func:`mlip.graph.build.structure_graph` + :func:`~mlip.graph.build.collate`)
and reuses it while every atom of that structure moved less than ``skin / 2`` since its
last build (then no pair can have crossed the cutoff unseen); each call filters the edges
to ``|r_ij| < cutoff`` with one mask on the device, so results equal a fresh build. It
serves the ASE calculator (one structure) and the batched replicas (K structures, each
rebuilt only when its own atoms moved).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mlip.data import keys
from mlip.data.structure import Structure
from mlip.graph.build import collate, structure_graph
from mlip.graph.edges import edge_vectors
from mlip.graph.neighbors import neighbor_list


class SkinNeighborList:
    """Skin-list batches of a fixed set of structures (numbers, cells and pbc fixed).

    Args:
        cutoff: the model's cutoff [Å].
        skin: Verlet skin [Å]; 0 rebuilds every call.
        dtype: float dtype of positions, cells and shifts (the model's).
        device: where the batch lives.

    Attributes:
        builds: structure neighbour-list builds so far.
    """

    def __init__(self, cutoff: float, skin: float, dtype: torch.dtype,
                 device: str | torch.device = "cpu") -> None:
        self.cutoff, self.skin = float(cutoff), max(float(skin), 0.0)
        self.dtype, self.device = dtype, torch.device(device)
        self.builds = 0
        self._graphs: list[dict[str, torch.Tensor]] = []
        self._batch: dict[str, torch.Tensor] | None = None
        self._ref: torch.Tensor | None = None
        self._lengths: torch.Tensor | None = None

    @property
    def radius(self) -> float:
        return self.cutoff + self.skin

    def reset(self, structures: Sequence[Structure]) -> None:
        """Build every structure's graph at ``cutoff + skin`` (positions as given)."""
        self._graphs = [{k: v.to(self.device) for k, v in
                         structure_graph(s, self.radius, self.dtype, labels=False).items()}
                        for s in structures]
        self.builds += len(structures)
        self._batch = collate(self._graphs)
        self._ref = self._batch[keys.POSITIONS].clone()

    def _rebuild(self, positions: torch.Tensor, stale: list[int]) -> None:
        starts = torch.cumsum(self._batch[keys.NUM_ATOMS], 0).tolist()
        for r in stale:
            g = self._graphs[r]
            lo, hi = (starts[r - 1] if r else 0), starts[r]
            pos = positions[lo:hi].detach()
            ei, shifts = neighbor_list(pos.double(), g[keys.CELL][0], g[keys.PBC][0], self.radius)
            self._graphs[r] = {**g, keys.POSITIONS: pos.to(self.dtype),
                               keys.EDGE_INDEX: ei.to(self.device),
                               keys.CELL_SHIFTS: shifts.to(self.device, self.dtype)}
            self._ref[lo:hi] = pos
        self.builds += len(stale)
        self._batch = collate(self._graphs)

    def batch(self, positions: torch.Tensor) -> dict[str, torch.Tensor]:
        """The model's input at ``positions`` (N, 3) [Å] (on the device).

        Rebuilds the lists of the structures where an atom moved >= skin / 2 (one host
        sync), then keeps the edges inside the cutoff.
        """
        if self._batch is None:
            raise RuntimeError("SkinNeighborList.batch before reset()")
        b = self._batch[keys.BATCH]
        num = self._batch[keys.NUM_ATOMS].shape[0]
        positions = positions.to(self.device, self.dtype)
        with torch.no_grad():
            moved = (positions - self._ref).norm(dim=1)
            if num == 1:  # one structure (the ASE calculator): no per-structure reduction
                worst = moved.max().reshape(1) if moved.numel() else moved.new_zeros(1)
            else:
                worst = moved.new_zeros(num).scatter_reduce(0, b, moved, reduce="amax")
            stale = (worst >= 0.5 * self.skin) if self.skin > 0 else torch.ones_like(worst, dtype=torch.bool)
            if bool(stale.any()):
                self._rebuild(positions, stale.nonzero().flatten().tolist())
            g = self._batch
            lengths = edge_vectors(positions, g[keys.EDGE_INDEX], g[keys.CELL_SHIFTS], g[keys.CELL],
                                   b).norm(dim=1)
            inside = lengths < self.cutoff
            if keys.EDGE_MIRRORED in g:  # one decision per pair keeps the order mirrored
                half = inside[: inside.shape[0] // 2]
                inside = torch.cat([half, half])
        self._lengths = lengths
        data = dict(g)
        keep = inside.nonzero().squeeze(1)  # one mask-to-index for both edge tensors
        data.update({keys.POSITIONS: positions, keys.EDGE_INDEX: g[keys.EDGE_INDEX].index_select(1, keep),
                     keys.CELL_SHIFTS: g[keys.CELL_SHIFTS].index_select(0, keep)})
        return data

    def closest_pair(self, min_distance: float | None) -> tuple[int, int, float] | None:
        """(i, j, distance) of the closest pair of the last :meth:`batch` when it is closer
        than ``min_distance`` [Å], else None (one device-to-host sync)."""
        lengths = self._lengths
        if min_distance is None or lengths is None or lengths.numel() == 0:
            return None
        k = torch.argmin(lengths)
        closest = float(lengths[k])
        if closest >= min_distance:
            return None
        j, i = (int(x) for x in self._batch[keys.EDGE_INDEX][:, k])
        return i, j, closest
