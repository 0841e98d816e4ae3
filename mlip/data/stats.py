"""Dataset statistics: E0s, energy/force scales, average neighbor counts, label summaries.

Everything here streams: each accumulator sees one structure at a time and keeps only
small running sums (the E0 fit goes through accumulated normal equations), so memory
stays flat however many structures pass; partial sums of shards or workers merge.

Two products:

* :class:`DatasetSummary` - what ``mlip data info`` and the LMDB header report (counts,
  elements, label coverage, raw energy/force/stress statistics).
* :class:`DatasetStatistics` - what a model needs (E0s, scales, avg. neighbors), computed
  by :func:`compute_statistics` and cached as LMDB metadata under :func:`statistics_key`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mlip.data.energy_fit import NormalEquations
from mlip.data.structure import Structure

NeighborCounter = Callable[[Structure, float], int]
"""(structure, cutoff [Å]) -> number of directed edges within the cutoff."""
PairDistances = Callable[[Structure, float], dict[tuple[int, int], float]]
"""(structure, cutoff [Å]) -> shortest distance [Å] of each element pair (Z_a <= Z_b)."""


class MissingE0Error(ValueError):
    """The data contains an element that the given E0s do not cover."""


class RunningMoments:
    """Streaming mean / population std / min / max (Welford's algorithm)."""

    def __init__(self) -> None:
        self.n = 0
        self.mean = 0.0
        self._m2 = 0.0
        self.min = math.inf
        self.max = -math.inf

    def add(self, x: float) -> None:
        self.n += 1
        delta = x - self.mean
        self.mean += delta / self.n
        self._m2 += delta * (x - self.mean)
        self.min = min(self.min, x)
        self.max = max(self.max, x)

    def merge(self, other: RunningMoments) -> None:
        """Fold in the moments of other values (Chan et al.'s pairwise update)."""
        if other.n == 0:
            return
        n = self.n + other.n
        delta = other.mean - self.mean
        self._m2 += other._m2 + delta * delta * self.n * other.n / n
        self.mean += delta * other.n / n
        self.n = n
        self.min, self.max = min(self.min, other.min), max(self.max, other.max)

    def to_dict(self) -> dict[str, float] | None:
        """``{mean, std, min, max}`` or None when nothing was added."""
        if self.n == 0:
            return None
        std = math.sqrt(max(self._m2, 0.0) / self.n)
        return {"mean": self.mean, "std": std, "min": self.min, "max": self.max}


class _SquareSum:
    """Streaming RMS and max |x| over all components of arrays."""

    def __init__(self) -> None:
        self.count = 0
        self.sum_sq = 0.0
        self.max_abs = 0.0

    def add(self, values: np.ndarray) -> None:
        if values.size == 0:
            return
        self.count += values.size
        self.sum_sq += float(np.dot(values.ravel(), values.ravel()))
        self.max_abs = max(self.max_abs, float(np.abs(values).max()))

    def merge(self, other: _SquareSum) -> None:
        self.count += other.count
        self.sum_sq += other.sum_sq
        self.max_abs = max(self.max_abs, other.max_abs)

    @property
    def rms(self) -> float | None:
        return math.sqrt(self.sum_sq / self.count) if self.count else None

    def to_dict(self) -> dict[str, float] | None:
        if not self.count:
            return None
        return {"rms": self.rms, "max_abs_component": self.max_abs}


class DatasetSummary:
    """Counts and raw label statistics of a stream of structures (the LMDB header numbers)."""

    def __init__(self) -> None:
        self.count = 0
        self.atoms_per_element: dict[int, int] = {}
        self.sources: dict[str, None] = {}  # insertion-ordered set
        self._atoms = RunningMoments()
        self._labels = {"energy": 0, "forces": 0, "stress": 0}
        self._energy = RunningMoments()
        self._energy_per_atom = RunningMoments()
        self._forces = _SquareSum()
        self._stress = _SquareSum()

    def add(self, s: Structure) -> None:
        self.count += 1
        z, counts = np.unique(s.numbers, return_counts=True)
        for zi, ci in zip(z.tolist(), counts.tolist(), strict=True):
            self.atoms_per_element[zi] = self.atoms_per_element.get(zi, 0) + ci
        self.sources.setdefault(s.source, None)
        self._atoms.add(float(s.num_atoms))
        if s.energy is not None:
            self._labels["energy"] += 1
            self._energy.add(s.energy)
            self._energy_per_atom.add(s.energy / s.num_atoms)
        if s.forces is not None:
            self._labels["forces"] += 1
            self._forces.add(s.forces)
        if s.stress is not None:
            self._labels["stress"] += 1
            self._stress.add(s.stress)

    def merge(self, other: DatasetSummary) -> DatasetSummary:
        """Fold in the summary of other structures (a shard, a worker's part); returns self."""
        self.count += other.count
        for z, c in other.atoms_per_element.items():
            self.atoms_per_element[z] = self.atoms_per_element.get(z, 0) + c
        for source in other.sources:
            self.sources.setdefault(source, None)
        self._atoms.merge(other._atoms)
        for name, c in other._labels.items():
            self._labels[name] += c
        self._energy.merge(other._energy)
        self._energy_per_atom.merge(other._energy_per_atom)
        self._forces.merge(other._forces)
        self._stress.merge(other._stress)
        return self

    @property
    def elements(self) -> list[int]:
        return sorted(self.atoms_per_element)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe summary.

        Returns:
            ``count``; ``elements`` (sorted Z); ``atoms_per_element`` (str(Z) -> atoms);
            ``atoms_per_structure`` {min, mean, max}; ``labels`` (structures carrying
            energy/forces/stress); ``label_statistics`` with ``energy`` and
            ``energy_per_atom`` {mean, std, min, max} [eV, eV/atom] (population std), and
            ``forces`` [eV/Å] / ``stress`` [eV/Å^3] {rms, max_abs_component}; None where absent.
        """
        atoms = self._atoms.to_dict()
        return {
            "count": self.count,
            "elements": self.elements,
            "atoms_per_element": {str(z): self.atoms_per_element[z] for z in self.elements},
            "atoms_per_structure": None
            if atoms is None
            else {"min": int(atoms["min"]), "mean": atoms["mean"], "max": int(atoms["max"])},
            "labels": dict(self._labels),
            "label_statistics": {
                "energy": self._energy.to_dict(),
                "energy_per_atom": self._energy_per_atom.to_dict(),
                "forces": self._forces.to_dict(),
                "stress": self._stress.to_dict(),
            },
        }


@dataclass
class DatasetStatistics:
    """What a model needs from its training data.

    Attributes:
        e0s: isolated-atom reference energy per element, Z -> [eV].
        e0_method: ``"file"`` (isolated-atom file / given) or ``"least_squares"``.
        energy_per_atom_mean: mean of (E - sum of E0s) / n_atoms [eV/atom]; None without energies.
        energy_per_atom_rms: RMS of the same quantity [eV/atom]; None without energies.
        energy_per_atom_by_element: Z -> mean interaction energy per atom of that element
            [eV/atom]: the per-atom mean plus a minimum-norm least-squares fit over
            compositions of what it leaves (so one composition, or one element, gives
            every element the mean); None without energies. The model's per-element shift.
        closest_pairs: "Za-Zb" (Za <= Zb) -> shortest distance of that pair within
            ``cutoff`` [Å]; None if not measured. Where the ZBL core sits (model.repulsion).
        force_rms: RMS over all force components [eV/Å]; None without forces.
        avg_num_neighbors: directed edges per atom within ``cutoff``; None if not counted.
        cutoff: radial cutoff used for the neighbor count [Å] or None.
        num_structures: structures the statistics were computed from.
    """

    e0s: dict[int, float]
    e0_method: str
    energy_per_atom_mean: float | None
    energy_per_atom_rms: float | None
    force_rms: float | None
    avg_num_neighbors: float | None = None
    cutoff: float | None = None
    num_structures: int = 0
    energy_per_atom_by_element: dict[int, float] | None = None
    closest_pairs: dict[str, float] | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict (E0 keys become strings)."""
        out = asdict(self)
        out["e0s"] = {str(z): float(e) for z, e in sorted(self.e0s.items())}
        if self.energy_per_atom_by_element is not None:
            out["energy_per_atom_by_element"] = {
                str(z): float(e) for z, e in sorted(self.energy_per_atom_by_element.items())
            }
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DatasetStatistics:
        """Inverse of :meth:`to_dict`."""
        values = dict(data)
        values["e0s"] = {int(z): float(e) for z, e in values["e0s"].items()}
        if values.get("energy_per_atom_by_element") is not None:
            values["energy_per_atom_by_element"] = {
                int(z): float(e) for z, e in values["energy_per_atom_by_element"].items()
            }
        return cls(**values)


def statistics_key(split: str = "all", cutoff: float | None = None) -> str:
    """LMDB metadata name under which statistics for ``split`` and ``cutoff`` are cached.

    >>> statistics_key("train", 5.0)
    'statistics/split=train/cutoff=5'
    """
    return f"statistics/split={split}/cutoff={'none' if cutoff is None else f'{cutoff:g}'}"


class StatisticsAccumulator:
    """Streaming computation of :class:`DatasetStatistics` (one pass over the data).

    Args:
        e0s: known E0s, Z -> [eV]; None fits them by least squares in :meth:`finalize`.
        cutoff: neighbor cutoff [Å]; needs ``neighbor_counter`` to count neighbors.
        neighbor_counter: (structure, cutoff) -> directed edges; injected by the caller.
        e0_source: where ``e0s`` came from (used in error messages).
        pair_distances: (structure, cutoff) -> closest distance per element pair; injected
            (e.g. ``mlip.graph.stats.closest_pairs``); without it ``closest_pairs`` is None.
    """

    def __init__(
        self,
        e0s: dict[int, float] | None = None,
        cutoff: float | None = None,
        neighbor_counter: NeighborCounter | None = None,
        e0_source: str = "the given E0s",
        pair_distances: PairDistances | None = None,
    ) -> None:
        self.e0s = None if e0s is None else {int(z): float(e) for z, e in e0s.items()}
        self.cutoff = cutoff
        self.neighbor_counter = neighbor_counter
        self.e0_source = e0_source
        self.count = 0
        self._rows = NormalEquations()
        self._forces = _SquareSum()
        self._atoms = 0
        self._edges = 0
        self.pair_distances = pair_distances
        self._counted = neighbor_counter is not None
        self._pairs = pair_distances is not None
        self._closest: dict[tuple[int, int], float] = {}

    def add(self, s: Structure) -> None:
        """Fold one structure in.

        Raises:
            MissingE0Error: ``e0s`` were given and lack an element of ``s``.
        """
        if self.e0s is not None:
            missing = sorted(set(s.numbers.tolist()) - set(self.e0s))
            if missing:
                raise MissingE0Error(
                    f"{s.where()}: no E0 for {_names(missing)} in {self.e0_source}; add "
                    "isolated-atom frames for these elements, or fit E0s by least squares "
                    "(leave out --e0s)"
                )
        self.count += 1
        self._atoms += s.num_atoms
        if s.energy is not None:
            self._rows.add(s)
        if s.forces is not None:
            self._forces.add(s.forces)
        if self.cutoff is not None and self.neighbor_counter is not None:
            self._edges += int(self.neighbor_counter(s, self.cutoff))
        if self.cutoff is not None and self.pair_distances is not None:
            for key, d in self.pair_distances(s, self.cutoff).items():
                self._closest[key] = min(d, self._closest.get(key, d))

    def merge(self, other: StatisticsAccumulator) -> StatisticsAccumulator:
        """Fold in the sums of another accumulator over disjoint structures (a shard, a
        worker's chunk) with the same settings; the result equals one pass over both.

        Returns:
            self.
        """
        if (other.cutoff, other.e0s) != (self.cutoff, self.e0s):
            raise ValueError("cannot merge statistics computed with different cutoffs or E0s")
        self.count += other.count
        self._atoms += other._atoms
        self._edges += other._edges
        self._rows.merge(other._rows)
        self._forces.merge(other._forces)
        for key, d in other._closest.items():
            self._closest[key] = min(d, self._closest.get(key, d))
        return self

    def state(self) -> dict[str, Any]:
        """JSON-safe running sums (a few kB whatever the data size), for
        :meth:`from_state` and :meth:`merge`, e.g. per shard in a manifest."""
        return {
            "count": self.count,
            "atoms": self._atoms,
            "edges": self._edges,
            "cutoff": self.cutoff,
            "counted": self.neighbor_counter is not None,
            "pairs": self.pair_distances is not None,
            "e0s": None if self.e0s is None else {str(z): e for z, e in self.e0s.items()},
            "energies": self._rows.to_dict(),
            "forces": [self._forces.count, self._forces.sum_sq, self._forces.max_abs],
            "closest": [[a, b, d] for (a, b), d in sorted(self._closest.items())],
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> StatisticsAccumulator:
        """Inverse of :meth:`state` (neighbor and pair functions are not needed any more:
        their sums are in the state)."""
        e0s = state["e0s"]
        acc = cls(e0s=None if e0s is None else {int(z): float(e) for z, e in e0s.items()},
                  cutoff=state["cutoff"])
        acc.count, acc._atoms, acc._edges = int(state["count"]), int(state["atoms"]), int(state["edges"])
        acc._counted, acc._pairs = bool(state["counted"]), bool(state["pairs"])
        acc._rows = NormalEquations.from_dict(state["energies"])
        acc._forces.count, acc._forces.sum_sq, acc._forces.max_abs = state["forces"]
        acc._closest = {(int(a), int(b)): float(d) for a, b, d in state["closest"]}
        return acc

    def finalize(self) -> DatasetStatistics:
        """The statistics of everything added so far.

        Raises:
            ValueError: E0s must be fitted but no structure carries an energy.
        """
        e0s, energy = self._rows.solve(self.e0s)
        method = "least_squares" if self.e0s is None else "file"
        if self.e0s is not None:
            e0s = dict(sorted(self.e0s.items()))
        counted = self.cutoff is not None and self._counted
        return DatasetStatistics(
            e0s=e0s,
            e0_method=method,
            energy_per_atom_mean=energy["mean"],
            energy_per_atom_rms=energy["rms"],
            force_rms=self._forces.rms,
            avg_num_neighbors=self._edges / self._atoms if counted and self._atoms else None,
            cutoff=self.cutoff,
            num_structures=self.count,
            energy_per_atom_by_element=energy["by_element"],
            closest_pairs=None if not self._pairs or self.cutoff is None else
            {f"{a}-{b}": d for (a, b), d in sorted(self._closest.items())},
        )


def fit_e0s_least_squares(structures: Iterable[Structure]) -> dict[int, float]:
    """Fit per-element reference energies so that ``counts @ e0 ≈ energy``.

    Solved through the normal equations (the minimum-norm solution); when compositions do not determine the
    E0s (e.g. every structure is the same molecule) this is the minimum-norm solution.
    Structures without an energy are ignored.

    Args:
        structures: any iterable of structures (streamed; one count row kept per structure).

    Returns:
        Z -> E0 [eV], sorted by Z.
    """
    rows = NormalEquations()
    for s in structures:
        if s.energy is not None:
            rows.add(s)
    return dict(sorted(rows.solve(None)[0].items()))


def e0s_from_file(path: str | Path) -> dict[int, float]:
    """Read isolated-atom energies from a file of single-atom frames (e.g. extxyz).

    Args:
        path: file whose every frame is one atom with an energy [eV].

    Returns:
        Z -> E0 [eV], sorted by Z.

    Raises:
        ValueError: a frame has more than one atom, no energy, or an element appears twice
            with different energies. The message names the file and frame.
    """
    from mlip.data.readers import iter_structures

    e0s: dict[int, float] = {}
    for s in iter_structures(path):
        if s.num_atoms != 1:
            raise ValueError(
                f"{s.where()}: an E0 file must contain isolated atoms (one atom per frame), "
                f"this frame has {s.num_atoms}"
            )
        if s.energy is None:
            raise ValueError(f"{s.where()}: isolated atom has no energy")
        z = int(s.numbers[0])
        if z in e0s and e0s[z] != s.energy:
            raise ValueError(f"{s.where()}: second, different E0 for {_names([z])}")
        e0s[z] = s.energy
    if not e0s:
        raise ValueError(f"{path}: no frames; expected one isolated atom per element")
    return dict(sorted(e0s.items()))


def compute_statistics(
    structures: Iterable[Structure],
    e0s: dict[int, float] | None = None,
    cutoff: float | None = None,
    neighbor_counter: NeighborCounter | None = None,
    pair_distances: PairDistances | None = None,
) -> DatasetStatistics:
    """Statistics of a set of structures in one streaming pass.

    Args:
        structures: e.g. an :class:`~mlip.data.lmdb.LmdbDataset` or a subset of it.
        e0s: Z -> E0 [eV] (e.g. from :func:`e0s_from_file`); None fits them by least squares.
        cutoff: neighbor cutoff [Å] for ``avg_num_neighbors``.
        neighbor_counter: (structure, cutoff) -> number of directed edges, e.g.
            ``mlip.graph.stats.count_edges``; without it ``avg_num_neighbors`` is None.
        pair_distances: e.g. ``mlip.graph.stats.closest_pairs``, for ``closest_pairs``.

    Returns:
        The statistics.

    Raises:
        MissingE0Error: ``e0s`` lack an element present in the data.
    """
    acc = StatisticsAccumulator(e0s=e0s, cutoff=cutoff, neighbor_counter=neighbor_counter,
                                pair_distances=pair_distances)
    for s in structures:
        acc.add(s)
    return acc.finalize()


def _names(zs: list[int]) -> str:
    from ase.data import chemical_symbols

    return ", ".join(
        f"{chemical_symbols[z] if 0 < z < len(chemical_symbols) else '?'} (Z={z})" for z in zs
    )
