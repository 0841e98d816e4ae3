"""One structure: the record every dataset stores and every reader produces.

Validation lives here and only here (:meth:`Structure.validate`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import vesin

MAX_Z = 118  # the largest atomic number mlip accepts (Og)
MAX_COORDINATE = 1.0e4  # [Å] larger |position| or lattice-vector length: wrong units or a corrupt frame
MIN_DISTANCE = 0.1  # [Å] two atoms (or an atom and an image) closer than this are duplicates
BRUTE_FORCE_ATOMS = 512  # free molecules up to this size: duplicate check over all pairs


class InvalidStructureError(ValueError):
    """A structure failed validation. The message names source file and frame."""


def stress_to_3x3(stress: np.ndarray) -> np.ndarray:
    """Canonical stress form: a symmetric (3, 3) matrix in eV/Å^3.

    Args:
        stress: Voigt-6 ``[xx, yy, zz, yz, xz, xy]`` (ASE order), a flat 9-vector
            (row-major) or a (3, 3) matrix.

    Returns:
        (3, 3) float64 array.

    >>> stress_to_3x3(np.array([1.0, 2, 3, 4, 5, 6]))[0].tolist()
    [1.0, 6.0, 5.0]
    """
    s = np.asarray(stress, dtype=np.float64)
    if s.shape == (6,):
        xx, yy, zz, yz, xz, xy = s
        return np.array([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]])
    if s.shape in ((9,), (3, 3)):
        return s.reshape(3, 3).copy()
    raise ValueError(f"stress must have 6 (Voigt) or 9 / 3x3 components, got shape {s.shape}")


@dataclass
class Structure:
    """An atomic structure with optional labels.

    Attributes:
        numbers: (n,) int64 atomic numbers Z.
        positions: (n, 3) float64 Cartesian positions [Å].
        cell: (3, 3) float64 lattice vectors as rows [Å]; zeros for a free molecule.
        pbc: (3,) bool periodicity along each lattice vector.
        energy: total potential energy [eV] or None.
        forces: (n, 3) float64 forces [eV/Å] or None.
        stress: (3, 3) float64 stress [eV/Å^3], ASE sign convention, or None.
        charge: total charge [e] (0 when unknown).
        spin_multiplicity: 2S+1 (1 when unknown).
        config_type: free-form label of where the structure comes from.
        source: file the structure was read from.
        frame: index of the structure in that file.
    """

    numbers: np.ndarray
    positions: np.ndarray
    cell: np.ndarray = field(default_factory=lambda: np.zeros((3, 3)))
    pbc: np.ndarray = field(default_factory=lambda: np.zeros(3, dtype=bool))
    energy: float | None = None
    forces: np.ndarray | None = None
    stress: np.ndarray | None = None
    charge: float = 0.0
    spin_multiplicity: float = 1.0
    config_type: str = ""
    source: str = ""
    frame: int = -1

    def __post_init__(self) -> None:
        self.numbers = np.asarray(self.numbers, dtype=np.int64).reshape(-1)
        self.positions = np.asarray(self.positions, dtype=np.float64)
        self.cell = np.asarray(self.cell, dtype=np.float64)
        self.pbc = np.asarray(self.pbc, dtype=bool).reshape(-1)
        if self.energy is not None:
            self.energy = float(self.energy)
        if self.forces is not None:
            self.forces = np.asarray(self.forces, dtype=np.float64)
        if self.stress is not None:
            self.stress = stress_to_3x3(self.stress)

    @property
    def num_atoms(self) -> int:
        return int(self.numbers.shape[0])

    @property
    def periodic(self) -> bool:
        """Periodic along at least one lattice vector (the one meaning of "periodic" in
        mlip: the cell matters and stress is defined)."""
        return bool(self.pbc.any())

    def where(self) -> str:
        """Human-readable location, e.g. ``'train.xyz, frame 12'``."""
        return f"{self.source or '<memory>'}, frame {self.frame}"

    def validate(self) -> Structure:
        """Check shapes, finiteness, elements and cell; raise InvalidStructureError.

        Returns:
            self, so calls chain.
        """
        n = self.num_atoms

        def fail(problem: str) -> None:
            raise InvalidStructureError(f"{self.where()}: {problem}")

        if n == 0:
            fail("structure has no atoms")
        if self.positions.shape != (n, 3):
            fail(f"positions have shape {self.positions.shape}, expected ({n}, 3)")
        if self.cell.shape != (3, 3):
            fail(f"cell has shape {self.cell.shape}, expected (3, 3)")
        if self.pbc.shape != (3,):
            fail(f"pbc has shape {self.pbc.shape}, expected (3,)")
        bad_z = self.numbers[(self.numbers < 1) | (self.numbers > MAX_Z)]
        if bad_z.size:
            fail(f"unknown atomic number(s) {sorted(set(bad_z.tolist()))}")
        for name, arr in (("positions", self.positions), ("cell", self.cell)):
            if not np.all(np.isfinite(arr)):
                fail(f"{name} contain NaN or inf")
        for name, arr in (("positions", self.positions), ("cell", self.cell)):
            largest = float(np.abs(arr).max(initial=0.0))
            if largest > MAX_COORDINATE:
                fail(
                    f"{name} reach {largest:.3g} Å (limit {MAX_COORDINATE:g} Å): wrong units "
                    "or a corrupted frame"
                )
        if self.periodic:
            vol = float(np.linalg.det(self.cell))
            if not vol > 1e-8:
                fail(f"periodic structure needs a cell with positive volume, got {vol:.3g} Å^3")
            for axis in np.nonzero(self.pbc)[0]:
                if np.linalg.norm(self.cell[axis]) < 1e-8:
                    fail(f"periodic along axis {axis} but that lattice vector is zero")
        pair = closest_duplicate(self.positions, self.cell, self.pbc)
        if pair is not None:
            i, j, d = pair
            fail(
                f"atoms {i} and {j} are {d:.3g} Å apart (closer than {MIN_DISTANCE} Å): "
                "a duplicated atom"
            )
        if self.energy is not None and not np.isfinite(self.energy):
            fail(f"energy is {self.energy}")
        if self.forces is not None:
            if self.forces.shape != (n, 3):
                fail(f"forces have shape {self.forces.shape}, expected ({n}, 3)")
            bad = np.nonzero(~np.isfinite(self.forces).all(axis=1))[0]
            if bad.size:
                fail(f"forces contain NaN or inf (atom(s) {bad[:5].tolist()})")
        if self.stress is not None and not np.all(np.isfinite(self.stress)):
            fail("stress contains NaN or inf")
        if not np.isfinite(self.charge) or not np.isfinite(self.spin_multiplicity):
            fail("charge / spin multiplicity must be finite")
        return self


def closest_duplicate(
    positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray, min_distance: float = MIN_DISTANCE
) -> tuple[int, int, float] | None:
    """The closest pair of atoms (periodic images included) nearer than ``min_distance``.

    Args:
        positions: (n, 3) [Å], finite, within :data:`MAX_COORDINATE`.
        cell: (3, 3) lattice vectors as rows [Å].
        pbc: (3,) bool.
        min_distance: threshold [Å].

    Returns:
        ``(i, j, distance)`` with i <= j (i == j: an atom meets its own image), or None.
    """
    pbc = np.asarray(pbc, dtype=bool)
    n = len(positions)
    if not pbc.any() and n <= BRUTE_FORCE_ATOMS:  # molecules: all pairs is fastest
        if n < 2:
            return None
        a, b = np.triu_indices(n, 1)
        d = np.linalg.norm(positions[a] - positions[b], axis=1)
        k = int(np.argmin(d))
        return (int(a[k]), int(b[k]), float(d[k])) if d[k] < min_distance else None
    box = np.where(pbc[:, None], cell, 0.0) if pbc.any() else np.zeros((3, 3))
    extent = max(float(np.ptp(positions, axis=0).max(initial=0.0)), float(np.abs(box).max()))
    # A cell list at a 0.1 Å radius has (extent / 0.1)^3 cells (ms per frame), and vesin
    # fails (SIGFPE) from ~1e5 radii along one axis: search a radius of at least 1/15 of
    # the extent and filter afterwards.
    radius = max(min_distance, extent / 15.0)
    i, j, d = vesin.NeighborList(cutoff=radius, full_list=False).compute(
        np.ascontiguousarray(positions, dtype=np.float64), box, pbc.tolist(), "ijd"
    )
    close = np.nonzero(d < min_distance)[0]
    if close.size == 0:
        return None
    k = close[np.argmin(d[close])]
    a, b = sorted((int(i[k]), int(j[k])))
    return a, b, float(d[k])
