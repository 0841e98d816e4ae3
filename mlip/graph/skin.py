"""Verlet-skin neighbour lists: the model's input for structures whose atoms move.

MD calls the model thousands of times on the same atoms at slightly different positions.
:class:`SkinNeighborList` builds each structure's graph once at ``cutoff + skin`` with the
one input path (:func:`mlip.graph.build.structure_graph` + :func:`~mlip.graph.build.collate`)
and reuses it while every atom of that structure moved less than ``skin / 2`` since its
last build (then no pair can have crossed the cutoff unseen); each call filters the edges
to ``|r_ij| < cutoff`` with one mask on the device, so results equal a fresh build. It
serves the ASE calculator (one structure) and the batched replicas (K structures, each
rebuilt only when its own atoms moved).

With ``fixed_shapes`` the edges are not filtered: every model of mlip gives an edge at or
beyond its cutoff exactly zero weight (bias-free radial networks on an envelope that is 0
there), so the ``cutoff + skin`` list gives the same energies, forces and stress. The list
is then padded to a capacity that only grows, with edges of one ghost atom to its own
periodic image, in a ghost structure of its own appended to the batch (cell
``2 (cutoff + skin) + 1`` Å, so its edges lie beyond the cutoff and touch no real atom).
Between rebuilds, and across rebuilds while the list fits the capacity, every input tensor
keeps its shape and only the positions change: what a CUDA graph needs
(:mod:`mlip.inference.graphed`). :meth:`SkinNeighborList.real` drops the ghost's outputs.

Each :meth:`SkinNeighborList.batch` reads one small tensor back to the host (whether a
rebuild is due, and the closest pair for :meth:`SkinNeighborList.closest_pair`), plus
one more on the calls that rebuild; without ``fixed_shapes`` the cutoff filter adds one.
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
        fixed_shapes: unfiltered edges padded to a fixed capacity, plus a ghost structure
            (see the module docstring): input shapes change only when the capacity grows.

    Attributes:
        builds: structure neighbour-list builds so far.
        capacity: edges per batch with ``fixed_shapes`` (real + ghost); 0 before reset().
    """

    # Capacity: the list's edges plus this fraction, rounded up to a multiple of _ROUND.
    _HEADROOM, _ROUND = 0.1, 64

    def __init__(self, cutoff: float, skin: float, dtype: torch.dtype,
                 device: str | torch.device = "cpu", fixed_shapes: bool = False) -> None:
        self.cutoff, self.skin = float(cutoff), max(float(skin), 0.0)
        self.dtype, self.device = dtype, torch.device(device)
        self.fixed_shapes = bool(fixed_shapes)
        self.capacity = 0
        self._padded: dict[str, torch.Tensor] | None = None
        self._closest: float | None = None  # shortest edge of the last batch() [Å]
        self._lengths: torch.Tensor | None = None
        self.builds = 0
        self._graphs: list[dict[str, torch.Tensor]] = []
        self._batch: dict[str, torch.Tensor] | None = None
        self._ref: torch.Tensor | None = None

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
        self.capacity = 0
        self._pad()

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
        self._pad()

    def _pad(self) -> None:
        """With ``fixed_shapes``: the batch plus the ghost structure, edges padded to the
        capacity (grown when the list outgrew it); mirrored list stays mirrored."""
        if not self.fixed_shapes:
            return
        g = self._batch
        edges = g[keys.EDGE_INDEX].shape[1]
        if edges > self.capacity:
            self.capacity = self._ROUND * -(-int(edges * (1 + self._HEADROOM) + 1) // self._ROUND)
        ghost = g[keys.POSITIONS].shape[0]  # index of the ghost atom
        pad = self.capacity - edges
        ghost_edges = torch.full((2, pad), ghost, dtype=torch.long, device=self.device)
        shift = torch.zeros(pad, 3, dtype=self.dtype, device=self.device)
        shift[:, 0] = 1.0
        # ghost pairs keep the order mirrored: (+x, -x) images in the two halves
        shift[pad // 2:, 0] = -1.0
        h, p = edges // 2, pad // 2
        index = torch.cat([g[keys.EDGE_INDEX][:, :h], ghost_edges[:, :p],
                           g[keys.EDGE_INDEX][:, h:], ghost_edges[:, p:]], dim=1)
        shifts = torch.cat([g[keys.CELL_SHIFTS][:h], shift[:p], g[keys.CELL_SHIFTS][h:], shift[p:]])
        num = g[keys.CELL].shape[0]
        side = 2.0 * self.radius + 1.0
        padded = {
            keys.ATOMIC_NUMBERS: torch.cat([g[keys.ATOMIC_NUMBERS], g[keys.ATOMIC_NUMBERS][:1]]),
            keys.CELL: torch.cat([g[keys.CELL], side * torch.eye(3, dtype=self.dtype, device=self.device)[None]]),
            keys.PBC: torch.cat([g[keys.PBC], g[keys.PBC].new_ones(1, 3)]),
            keys.NUM_ATOMS: torch.cat([g[keys.NUM_ATOMS], g[keys.NUM_ATOMS].new_ones(1)]),
            keys.BATCH: torch.cat([g[keys.BATCH], g[keys.BATCH].new_full((1,), num)]),
            keys.EDGE_INDEX: index, keys.CELL_SHIFTS: shifts,
        }
        self._padded = padded
        self._ghost_position = torch.zeros(1, 3, dtype=self.dtype, device=self.device)

    def real(self, out: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The model's outputs for a :meth:`batch` without the ghost's (views; unchanged
        without ``fixed_shapes``): node keys lose their last atom, graph keys their last
        structure (by :func:`mlip.data.keys.kind`; edge keys are returned as they are)."""
        if not self.fixed_shapes:
            return out
        rows = {"node": self._batch[keys.POSITIONS].shape[0], "graph": self._batch[keys.CELL].shape[0]}
        result = {}
        for k, v in out.items():
            size = rows.get(keys.kind(k))
            result[k] = v[:size] if size is not None else v
        return result

    def batch(self, positions: torch.Tensor) -> dict[str, torch.Tensor]:
        """The model's input at ``positions`` (N, 3) [Å] (on the device).

        Rebuilds the lists of the structures where an atom moved >= skin / 2, then keeps
        the edges inside the cutoff (or, with ``fixed_shapes``, returns the padded batch
        with the ghost structure; see :meth:`real`). One small read back to the host per
        call (two when a list is rebuilt).
        """
        if self._batch is None:
            raise RuntimeError("SkinNeighborList.batch before reset()")
        num = self._batch[keys.NUM_ATOMS].shape[0]
        positions = positions.to(self.device, self.dtype)
        with torch.no_grad():
            if self.skin > 0 and positions.shape[0]:
                moved = (positions - self._ref).norm(dim=1)
                if num == 1:  # one structure (the ASE calculator): no per-structure reduction
                    worst = farthest = moved.max()
                else:
                    worst = moved.new_zeros(num).scatter_reduce(0, self._batch[keys.BATCH], moved,
                                                                reduce="amax")
                    farthest = worst.max()
                lengths, shortest = self._shortest(positions)
                # the largest move and the shortest edge in one read (the latter is valid
                # when no list is stale)
                farthest, closest = torch.stack([farthest, shortest]).tolist()
                if farthest >= 0.5 * self.skin:
                    stale = [0] if num == 1 else (worst >= 0.5 * self.skin).nonzero().flatten().tolist()
                    self._rebuild(positions, stale)
                    lengths, shortest = self._shortest(positions)
                    closest = float(shortest)
            else:
                if self.skin == 0:
                    self._rebuild(positions, list(range(num)))
                lengths, shortest = self._shortest(positions)
                closest = float(shortest)
            self._closest = closest
            self._lengths = lengths
        if self.fixed_shapes:
            data = dict(self._padded)
            data[keys.POSITIONS] = torch.cat([positions, self._ghost_position])
            return data
        g = self._batch
        with torch.no_grad():  # one decision per pair keeps the order mirrored
            half = lengths[: lengths.shape[0] // 2] < self.cutoff
            inside = torch.cat([half, half])
        data = dict(g)
        keep = inside.nonzero().squeeze(1)  # one mask-to-index for both edge tensors
        data.update({keys.POSITIONS: positions, keys.EDGE_INDEX: g[keys.EDGE_INDEX].index_select(1, keep),
                     keys.CELL_SHIFTS: g[keys.CELL_SHIFTS].index_select(0, keep)})
        return data

    def _shortest(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Edge lengths (E,) of the list at ``positions`` and the shortest one (inf without
        edges), on the device."""
        g = self._batch
        lengths = edge_vectors(positions, g[keys.EDGE_INDEX], g[keys.CELL_SHIFTS], g[keys.CELL],
                               g[keys.BATCH]).norm(dim=1)
        shortest = lengths.min() if lengths.numel() else lengths.new_full((), float("inf"))
        return lengths, shortest

    def closest_pair(self, min_distance: float | None) -> tuple[int, int, float] | None:
        """(i, j, distance) of the closest pair of the last :meth:`batch` when it is closer
        than ``min_distance`` [Å], else None (a host read only when it is)."""
        if min_distance is None or self._closest is None or self._closest >= min_distance:
            return None
        k = int(torch.argmin(self._lengths))
        j, i = (int(x) for x in self._batch[keys.EDGE_INDEX][:, k])
        return i, j, self._closest
