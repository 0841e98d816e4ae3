"""Scatter-sum over an index, with torch-scatter as an optional fast path.

Native ``index_add_`` is the default and is correct on its own; torch-scatter is used
only when it is importable and ``MLIP_NO_TORCH_SCATTER`` is not set.
"""

from __future__ import annotations

import os

import torch

try:  # optional extra: pip install mlip[scatter]
    if os.environ.get("MLIP_NO_TORCH_SCATTER"):
        raise ImportError
    import torch_scatter as _torch_scatter  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - depends on the environment
    _torch_scatter = None


def scatter_sum(src: torch.Tensor, index: torch.Tensor, dim_size: int) -> torch.Tensor:
    """Sum rows of ``src`` into ``dim_size`` buckets given by ``index``.

    Args:
        src: (M, ...) values.
        index: (M,) int64 bucket of each row.
        dim_size: number of buckets.

    Returns:
        (dim_size, ...) sums; empty buckets are zero.

    >>> scatter_sum(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([0, 2, 0]), 3).tolist()
    [4.0, 0.0, 2.0]
    """
    if _torch_scatter is not None and src.is_cuda:
        return _torch_scatter.scatter_sum(src, index, dim=0, dim_size=dim_size)
    out = src.new_zeros((dim_size, *src.shape[1:]))
    return out.index_add_(0, index, src)
