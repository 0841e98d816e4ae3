"""Per-element reference energies (E0s) by least squares, in flat memory.

:class:`NormalEquations` accumulates the sums from which the minimum-norm least-squares
E0 fit and the per-atom interaction-energy statistics follow exactly, one structure at a
time, without keeping a row per structure; partial sums of disjoint sets merge.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from mlip.data.structure import MAX_Z, Structure


class NormalEquations:
    """Flat-memory sums from which the E0 least-squares fit and the per-atom energy
    statistics follow exactly (no per-structure rows are kept).

    With ``a`` the element counts of a structure, ``n`` its atom count and ``E`` its energy
    shifted by ``shift * n`` (``shift``: the first structure's energy per atom, which keeps
    the squared sums small), it accumulates ``S``, ``sum a a^T``, ``sum a E``, ``sum a n``
    and, for the per-atom quantities, ``sum E/n``, ``sum a/n``, ``sum (E/n)^2``,
    ``sum a E/n^2`` and ``sum a a^T/n^2``. Partial sums of disjoint sets of structures add.
    """

    _VECTORS = ("ate", "atn", "an", "aen2")
    _MATRICES = ("ata", "aan2")  # vectors and matrices indexed by Z = 0 .. MAX_Z

    def __init__(self) -> None:
        self.count = 0
        self.shift: float | None = None
        self.en = self.e2n2 = 0.0
        for name in self._VECTORS:
            setattr(self, name, np.zeros(MAX_Z + 1))
        for name in self._MATRICES:
            setattr(self, name, np.zeros((MAX_Z + 1, MAX_Z + 1)))

    def add(self, s: Structure) -> None:
        assert s.energy is not None
        z, counts = np.unique(s.numbers, return_counts=True)
        c = counts.astype(np.float64)
        n = float(s.num_atoms)
        if self.shift is None:
            self.shift = s.energy / n
        e = s.energy - self.shift * n
        block = np.ix_(z, z)
        outer = np.outer(c, c)
        self.count += 1
        self.ata[block] += outer
        self.aan2[block] += outer / n**2
        self.ate[z] += c * e
        self.atn[z] += c * n
        self.an[z] += c / n
        self.aen2[z] += c * e / n**2
        self.en += e / n
        self.e2n2 += (e / n) ** 2

    def _rebase(self, shift: float) -> None:
        """Re-express the sums for energies shifted by ``shift * n`` instead."""
        if self.shift is None or shift == self.shift:
            self.shift = shift
            return
        d = shift - self.shift
        self.ate -= d * self.atn
        self.aen2 -= d * self.an
        self.e2n2 += -2.0 * d * self.en + d * d * self.count
        self.en -= d * self.count
        self.shift = shift

    def merge(self, other: NormalEquations) -> None:
        if other.count == 0:
            return
        if self.count == 0:
            self.shift = other.shift
        other = other.copy()
        assert self.shift is not None
        other._rebase(self.shift)
        self.count += other.count
        self.en += other.en
        self.e2n2 += other.e2n2
        for name in self._VECTORS + self._MATRICES:
            getattr(self, name).__iadd__(getattr(other, name))

    def copy(self) -> NormalEquations:
        out = NormalEquations()
        out.count, out.shift, out.en, out.e2n2 = self.count, self.shift, self.en, self.e2n2
        for name in self._VECTORS + self._MATRICES:
            setattr(out, name, getattr(self, name).copy())
        return out

    @property
    def elements(self) -> list[int]:
        return np.flatnonzero(np.diag(self.ata) > 0).tolist()

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe sums restricted to the elements present."""
        zs = self.elements
        sub = np.ix_(zs, zs)
        out: dict[str, Any] = {"count": self.count, "shift": self.shift, "elements": zs,
                               "en": self.en, "e2n2": self.e2n2}
        for name in self._VECTORS:
            out[name] = getattr(self, name)[zs].tolist()
        for name in self._MATRICES:
            out[name] = getattr(self, name)[sub].tolist()
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NormalEquations:
        out = cls()
        zs = [int(z) for z in data["elements"]]
        out.count, out.shift = int(data["count"]), data["shift"]
        out.en, out.e2n2 = float(data["en"]), float(data["e2n2"])
        for name in cls._VECTORS:
            getattr(out, name)[zs] = np.asarray(data[name], dtype=np.float64)
        for name in cls._MATRICES:
            getattr(out, name)[np.ix_(zs, zs)] = np.asarray(data[name], dtype=np.float64)
        return out

    def solve(self, e0s: dict[int, float] | None) -> tuple[dict[int, float], dict[str, Any]]:
        """E0s (the given ones, or the minimum-norm least-squares fit) and the per-atom
        interaction-energy statistics they leave.

        Returns:
            ``(e0s, {"mean", "rms", "by_element"})``; the statistics are None without energies.
        """
        zs = self.elements
        if e0s is None:
            if self.count == 0:
                raise ValueError(
                    "cannot fit E0s by least squares: no structure has an energy label; "
                    "pass an isolated-atoms file (--e0s)"
                )
            ata = self.ata[np.ix_(zs, zs)]
            # the shift moves E0s along (1, 1, ...); keep only its part that the data
            # determine, so the result is the minimum-norm fit of the unshifted energies
            ones = np.ones(len(zs))
            e0_fit = _min_norm(ata, self.ate[zs]) + self.shift * _min_norm(ata, ata @ ones)
            e0s = {z: float(e) for z, e in zip(zs, e0_fit, strict=True)}
        none = {"mean": None, "rms": None, "by_element": None}
        if self.count == 0:
            return e0s, none
        assert self.shift is not None
        sub = np.ix_(zs, zs)
        ata = self.ata[sub]
        # E0s in the shifted frame, less what no structure sees (their null-space part):
        # the same a . E0 for every structure, and small, so the sums below do not cancel
        e0 = _min_norm(ata, ata @ (np.array([e0s[z] for z in zs]) - self.shift))
        mean = (self.en - self.an[zs] @ e0) / self.count
        square = self.e2n2 - 2.0 * e0 @ self.aen2[zs] + e0 @ self.aan2[sub] @ e0
        rms = math.sqrt(max(square, 0.0) / self.count)
        rest = _min_norm(ata, self.ate[zs] - ata @ e0 - mean * self.atn[zs])
        by_element = {z: float(mean + d) for z, d in zip(zs, rest, strict=True)}
        return e0s, {"mean": float(mean), "rms": rms, "by_element": by_element}


def _min_norm(ata: np.ndarray, atb: np.ndarray) -> np.ndarray:
    """Minimum-norm least-squares solution from the normal equations ``A^T A x = A^T b``
    (what ``numpy.linalg.lstsq(A, b)`` returns: compositions that do not determine every
    element, e.g. one molecule, leave the undetermined directions at zero)."""
    return np.linalg.pinv(ata, rcond=1e-10, hermitian=True) @ atb
