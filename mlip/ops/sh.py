"""Real spherical harmonics in the layout every tensor product uses.

Features are ``(..., C, (L+1)^2)``: C channels, and for each channel the components of
degrees l = 0..L concatenated (m = -l..l in e3nn's real basis), with parity (-1)^l
("natural" parity, the parity of Y_l). Normalisation is e3nn's ``component``
(each component has unit mean square over the sphere).
"""

from __future__ import annotations

import torch
from e3nn import o3


def num_components(lmax: int) -> int:
    """(lmax+1)^2, the number of real SH components up to degree lmax.

    >>> num_components(2)
    9
    """
    return (lmax + 1) ** 2


def degree_of_components(lmax: int) -> torch.Tensor:
    """(D,) int64: degree l of each component, D = (lmax+1)^2.

    >>> degree_of_components(1).tolist()
    [0, 1, 1, 1]
    """
    return torch.cat([torch.full((2 * l + 1,), l, dtype=torch.long) for l in range(lmax + 1)])


def irreps_of(lmax: int, channels: int = 1) -> o3.Irreps:
    """e3nn Irreps of one channel-block, e.g. lmax=1 -> '1x0e+1x1o' (times channels)."""
    return o3.Irreps([(channels, (l, (-1) ** l)) for l in range(lmax + 1)])


def spherical_harmonics(vectors: torch.Tensor, lmax: int) -> torch.Tensor:
    """Real SH of edge directions.

    Args:
        vectors: (E, 3) edge vectors (need not be unit length, must be nonzero).
        lmax: maximum degree.

    Returns:
        (E, (lmax+1)^2) component-normalised SH of vectors / |vectors|.
    """
    return o3.spherical_harmonics(
        list(range(lmax + 1)), vectors, normalize=True, normalization="component"
    )


def wigner_d(lmax: int, rotation: torch.Tensor) -> torch.Tensor:
    """Block-diagonal ((lmax+1)^2, (lmax+1)^2) real Wigner-D matrix of a 3x3 rotation
    (or improper rotation) acting on features in this layout: x' = x @ D.T.

    Computed in float64 whatever the default dtype (e3nn builds some constants in the
    default dtype, which would limit a float64 check to ~1e-6), returned in rotation's dtype.
    """
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        d = irreps_of(lmax).D_from_matrix(rotation.to(torch.float64))
    finally:
        torch.set_default_dtype(previous)
    return d.to(rotation.dtype)
