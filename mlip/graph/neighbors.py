"""Neighbour lists for molecules and periodic cells (any triclinic cell, any pbc).

Convention: directed edges (sender j, receiver i) for every pair with
|pos[j] - pos[i] + S @ cell| < cutoff, S an integer shift (3,), excluding only i == j with
S == 0 (an atom sees its own periodic images). Both directions appear.

Two backends with identical results:
- ``vesin`` (CPU, numpy): the fast default for the data pipeline;
- ``torch``: pure torch on the inputs' device (CUDA included), a cell list over the
  periodic images near the system, O(N) time and memory; a dense path for small systems.
"""

from __future__ import annotations

import itertools

import numpy as np
import torch
import vesin

# Below this many (image, atom) pairs the torch backend uses one dense distance matrix.
DENSE_PAIR_LIMIT = 2_000_000
# Largest extent of a structure, in cutoffs, that is handed to vesin (see neighbor_list_vesin).
VESIN_MAX_EXTENT_RATIO = 2.0e4
_NEIGHBOR_BIN_OFFSETS = torch.tensor(list(itertools.product((-1, 0, 1), repeat=3)))


def _as_pbc(pbc) -> np.ndarray:
    out = np.asarray(pbc, dtype=bool).reshape(-1)
    if out.shape == (1,):
        out = np.repeat(out, 3)
    if out.shape != (3,):
        raise ValueError(f"pbc must be one bool or three, got {pbc!r}")
    return out


def neighbor_list_vesin(
    positions: np.ndarray, cell: np.ndarray, pbc, cutoff: float
) -> tuple[np.ndarray, np.ndarray]:
    """Neighbour list with vesin.

    Args:
        positions: (n, 3) float64 [Å] (need not be wrapped into the cell).
        cell: (3, 3) lattice vectors as rows [Å]; ignored along non-periodic directions.
        pbc: (3,) bool.
        cutoff: radius [Å].

    Returns:
        edge_index (2, E) int64 as (sender j, receiver i) and shifts (E, 3) int64.
    """
    pbc = _as_pbc(pbc)
    positions = np.ascontiguousarray(positions, dtype=np.float64)
    box = np.asarray(cell, dtype=np.float64) if pbc.any() else np.zeros((3, 3))
    if pbc.any() and not pbc.all():
        # Lattice vectors along non-periodic directions play no role: zero them.
        box = np.where(pbc[:, None], box, 0.0)
    extent = max(float(np.ptp(positions, axis=0).max(initial=0.0)), float(np.abs(box).max()))
    if not np.isfinite(extent) or extent > VESIN_MAX_EXTENT_RATIO * cutoff:
        # vesin's cell list dies with SIGFPE (taking the process with it) from about 1e5
        # cutoffs along one axis: an exploded MD run or a corrupt frame. Fail cleanly.
        raise ValueError(
            f"the structure spans {extent:.3g} Å, more than {VESIN_MAX_EXTENT_RATIO:g} cutoffs "
            f"of {cutoff:g} Å: atoms have flown apart or the positions are corrupt"
        )
    calc = vesin.NeighborList(cutoff=float(cutoff), full_list=True)
    i, j, s = calc.compute(positions, box, pbc.tolist(), "ijS")
    return np.stack([j, i]).astype(np.int64), np.asarray(s, dtype=np.int64).reshape(-1, 3)


def _image_shifts(cell: torch.Tensor, pbc: torch.Tensor, cutoff: float) -> torch.Tensor:
    """All integer shifts S whose images can come within ``cutoff``: (S, 3) int64."""
    reps = [0, 0, 0]
    if bool(pbc.any()):
        inv = torch.linalg.inv(cell.double())
        spacing = 1.0 / inv.norm(dim=0)  # distance between lattice planes
        reps = [int(np.ceil(cutoff / float(spacing[k]))) if bool(pbc[k]) else 0 for k in range(3)]
    ranges = [torch.arange(-r, r + 1, device=cell.device) for r in reps]
    return torch.cartesian_prod(*ranges).reshape(-1, 3)


def neighbor_list_torch(
    positions: torch.Tensor, cell: torch.Tensor, pbc: torch.Tensor, cutoff: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pure-torch neighbour list on the inputs' device; same convention as vesin's.

    Returns:
        edge_index (2, E) int64 (sender, receiver) and shifts (E, 3) int64.
    """
    device = positions.device
    pos = positions.double()
    pbc = torch.as_tensor(pbc, dtype=torch.bool, device=device).reshape(-1).expand(3)
    cell = cell.to(device=device, dtype=torch.float64) if bool(pbc.any()) else pos.new_zeros(3, 3)
    n = pos.shape[0]
    # Wrap into the cell along periodic directions (pos = wrapped + k @ cell); the shifts
    # found for wrapped positions are corrected by k at the end.
    k = torch.zeros(n, 3, dtype=torch.long, device=device)
    if bool(pbc.any()):
        frac = pos @ torch.linalg.inv(cell)
        k = torch.where(pbc, torch.floor(frac), torch.zeros_like(frac)).long()
        pos = pos - k.double() @ cell
    shifts = _image_shifts(cell, pbc, cutoff)  # (S, 3)
    images = (pos.unsqueeze(0) + (shifts.double() @ cell).unsqueeze(1)).reshape(-1, 3)
    image_atom = torch.arange(n, device=device).repeat(shifts.shape[0])
    image_shift = shifts.repeat_interleave(n, dim=0)
    # Keep only images within the cutoff of the system's bounding box.
    lo, hi = pos.min(0).values - cutoff, pos.max(0).values + cutoff
    keep = ((images >= lo) & (images <= hi)).all(dim=1)
    images, image_atom, image_shift = images[keep], image_atom[keep], image_shift[keep]
    if images.shape[0] * n <= DENSE_PAIR_LIMIT:
        d2 = torch.cdist(pos, images).square()  # (n receivers, M images)
        recv, img = torch.nonzero(d2 < cutoff * cutoff, as_tuple=True)
    else:
        recv, img = _cell_list_pairs(pos, images, lo, cutoff)
    sender = image_atom[img]
    shift = image_shift[img]
    not_self = (sender != recv) | (shift != 0).any(dim=1)
    sender, recv, shift = sender[not_self], recv[not_self], shift[not_self]
    return torch.stack([sender, recv]), shift - k[sender] + k[recv]


def _cell_list_pairs(
    pos: torch.Tensor, images: torch.Tensor, origin: torch.Tensor, cutoff: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(receiver, image) pairs closer than cutoff, via bins of side ``cutoff``."""
    device = pos.device
    img_bin = torch.floor((images - origin) / cutoff).long()
    pos_bin = torch.floor((pos - origin) / cutoff).long()
    dims = torch.maximum(img_bin.max(0).values, pos_bin.max(0).values) + 3
    stride = torch.stack([dims[1] * dims[2], dims[2], torch.ones_like(dims[2])])

    def linear(b: torch.Tensor) -> torch.Tensor:
        return ((b + 1) * stride).sum(-1)  # +1: neighbour offsets of -1 stay >= 0

    img_id = linear(img_bin)
    order = torch.argsort(img_id)
    sorted_ids = img_id[order]
    unique_ids, counts = torch.unique_consecutive(sorted_ids, return_counts=True)
    starts = torch.cumsum(counts, 0) - counts
    # For each receiver and each of the 27 neighbouring bins: which occupied bin, if any.
    query = linear(pos_bin.unsqueeze(1) + _NEIGHBOR_BIN_OFFSETS.to(device).unsqueeze(0))
    slot = torch.searchsorted(unique_ids, query.reshape(-1)).clamp(max=unique_ids.numel() - 1)
    hit = unique_ids[slot] == query.reshape(-1)
    receiver_of_query = torch.arange(pos.shape[0], device=device).repeat_interleave(27)[hit]
    slot = slot[hit]
    cnt = counts[slot]
    recv = receiver_of_query.repeat_interleave(cnt)
    first = (starts[slot] - (torch.cumsum(cnt, 0) - cnt)).repeat_interleave(cnt)
    img = order[first + torch.arange(recv.numel(), device=device)]
    close = (pos[recv] - images[img]).square().sum(1) < cutoff * cutoff
    return recv[close], img[close]


def mirror_order(edge_index, shifts):
    """A full (two-way) neighbour list in mirrored order: edge H + k is edge k reversed.

    The first half holds one direction of every pair (sender < receiver, or for an atom's
    own periodic images the shift whose first non-zero component is positive); the second
    half is the same pairs read backwards (receiver -> sender, shift negated), in the same
    order. So |r_ij| of edge H + k equals that of edge k bit for bit, and a model can
    evaluate radial functions on the first half only (the invariant of :mod:`mlip.data.keys`).

    Args:
        edge_index: (2, E) int64 (sender, receiver), numpy or torch.
        shifts: (E, 3) integer image shifts, same kind.

    Returns:
        (edge_index, shifts) of the same kind, E unchanged for a symmetric list.

    >>> ei, s = mirror_order(np.array([[1, 0], [0, 1]]), np.zeros((2, 3), dtype=np.int64))
    >>> ei.tolist()
    [[0, 1], [1, 0]]
    """
    if not isinstance(edge_index, torch.Tensor):
        ei, s = mirror_order(torch.from_numpy(np.asarray(edge_index)), torch.from_numpy(np.asarray(shifts)))
        return ei.numpy(), s.numpy()
    sender, receiver = edge_index[0], edge_index[1]
    s0, s1, s2 = shifts[:, 0], shifts[:, 1], shifts[:, 2]
    positive = (s0 > 0) | ((s0 == 0) & ((s1 > 0) | ((s1 == 0) & (s2 > 0))))
    canonical = (sender < receiver) | ((sender == receiver) & positive)
    half, half_shifts = edge_index[:, canonical], shifts[canonical]
    return torch.cat([half, half.flip(0)], dim=1), torch.cat([half_shifts, -half_shifts])


def neighbor_list(positions, cell, pbc, cutoff: float, backend: str = "auto"):
    """Dispatch: numpy in -> numpy out (vesin by default); tensors in -> tensors out on the
    same device (vesin on CPU, the torch path on CUDA or when ``backend="torch"``).
    Either way the list is in mirrored order (:func:`mirror_order`)."""
    return mirror_order(*_neighbor_list(positions, cell, pbc, cutoff, backend))


def _neighbor_list(positions, cell, pbc, cutoff: float, backend: str = "auto"):
    if backend not in ("auto", "vesin", "torch"):
        raise ValueError(f"unknown neighbour-list backend {backend!r}: auto, vesin or torch")
    if isinstance(positions, torch.Tensor):
        use_torch = backend == "torch" or (backend == "auto" and positions.device.type != "cpu")
        if use_torch:
            return neighbor_list_torch(positions, torch.as_tensor(cell), torch.as_tensor(pbc),
                                       cutoff)
        ei, s = neighbor_list_vesin(positions.detach().cpu().numpy(),
                                    torch.as_tensor(cell).detach().cpu().numpy(),
                                    torch.as_tensor(pbc).cpu().numpy(), cutoff)
        return (torch.from_numpy(ei).to(positions.device),
                torch.from_numpy(s).to(positions.device))
    if backend == "torch":
        ei, s = neighbor_list_torch(torch.as_tensor(positions, dtype=torch.float64),
                                    torch.as_tensor(cell, dtype=torch.float64),
                                    torch.as_tensor(pbc), cutoff)
        return ei.numpy(), s.numpy()
    return neighbor_list_vesin(positions, cell, pbc, cutoff)
