"""Random rotations: the one sampler (augmentation, the equivariance objective, symmetry
metrics and the physics test kit all draw from it)."""

from __future__ import annotations

import torch


def random_rotations(num: int, generator: torch.Generator | None = None,
                     dtype: torch.dtype = torch.float64, device=None,
                     max_angle_deg: float = 180.0, reflect: bool = False) -> torch.Tensor:
    """(num, 3, 3) random rotations from unit quaternions.

    Args:
        num: how many.
        generator: torch random stream (CPU); None uses the global one.
        dtype, device: of the result (drawn in float64 on the CPU).
        max_angle_deg: Haar-uniform for >= 180, else a uniform random axis and an angle
            uniform in [0, max_angle_deg] (small rotations, e.g. for a curriculum).
        reflect: return improper rotations -R instead.

    >>> r = random_rotations(2, torch.Generator().manual_seed(0))
    >>> torch.allclose(r @ r.transpose(1, 2), torch.eye(3, dtype=r.dtype).expand(2, 3, 3))
    True
    """
    if max_angle_deg >= 180.0:
        q = torch.randn(num, 4, generator=generator, dtype=torch.float64)
    else:
        axis = torch.randn(num, 3, generator=generator, dtype=torch.float64)
        axis = axis / axis.norm(dim=1, keepdim=True)
        half = torch.rand(num, generator=generator, dtype=torch.float64) * max_angle_deg
        half = torch.deg2rad(half) / 2
        q = torch.cat([half.cos()[:, None], half.sin()[:, None] * axis], dim=1)
    q = q / q.norm(dim=1, keepdim=True)
    a, b, c, d = q.unbind(1)
    r = torch.stack([
        a * a + b * b - c * c - d * d, 2 * (b * c - a * d), 2 * (b * d + a * c),
        2 * (b * c + a * d), a * a - b * b + c * c - d * d, 2 * (c * d - a * b),
        2 * (b * d - a * c), 2 * (c * d + a * b), a * a - b * b - c * c + d * d,
    ], dim=1).view(num, 3, 3)
    if reflect:
        r = -r
    return r.to(dtype=dtype, device=device)
