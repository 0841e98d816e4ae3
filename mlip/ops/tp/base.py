"""The tensor-product protocol every implementation (CG, Gaunt, CP) follows.

Features use the layout of :mod:`mlip.ops.sh`: ``(..., C, (L+1)^2)`` with natural parity.
A tensor product is *channel-wise*: channel c of the output is built from channel c of
``x1`` and channel c of ``x2`` (or the single channel of ``x2`` when it has one, as for
edge spherical harmonics). How the weights act is the implementation's business (per CG
path, per degree, or shared over paths); ``weight_numel`` says how many it takes per
channel, so a radial network or an element table can produce them.

Constants, the same way for every implementation:

- derived constants (CG coefficients, grid matrices) come from :meth:`TensorProduct.build_constants`,
  the one declared step: a pure, cheap, deterministic function of the degrees returning
  float64 tensors, registered by :meth:`TensorProduct.register_constants` at the end of
  ``__init__`` as non-persistent exact buffers (:mod:`mlip.ops.buffers`): ``.to(device)``
  moves them like any buffer, ``.to(dtype)`` keeps their float64 precision, and
  ``torch.compile`` / export see ordinary tensors. Read them with :meth:`constant`.
- fitted constants (CP factors) are persistent exact buffers allocated in ``__init__`` and
  filled by :meth:`TensorProduct.prepare`, the explicit step that may take time or read a
  cache (``build_potential`` calls it for new models; loading a saved model restores them
  from its state dict instead). The default ``prepare`` does nothing.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from mlip.ops.buffers import exact_like, register_exact


class TensorProduct(nn.Module):
    """Base class: ``forward(x1, x2, weight) -> out``.

    Args:
        lmax_in1: maximum degree of ``x1``.
        lmax_in2: maximum degree of ``x2``.
        lmax_out: maximum degree of the output.

    Subclasses set ``weight_numel``, call :meth:`register_constants` at the end of
    ``__init__`` and implement ``forward``:

    - ``x1``: (..., C, (lmax_in1+1)^2)
    - ``x2``: (..., C or 1, (lmax_in2+1)^2)
    - ``weight``: (..., C, weight_numel) or None (all weights one)
    - returns (..., C, (lmax_out+1)^2)

    A product whose second operand is shared by all channels (the edge SH of a message)
    also implements :meth:`shared_operand_factors`, which reduces it to a (K, Dout) matrix
    per row and index vectors (:class:`SharedFactors`); :func:`shared_product` then
    applies it to channel-last features. Message passing uses that form on every edge.

    A class may declare ``short_names`` (a tuple of strings) that configs accept in place
    of its class path (:func:`mlip.ops.tp.short_names` reads them; shipped classes only).
    """

    weight_numel: int
    short_names: tuple[str, ...] = ()

    def __init__(self, lmax_in1: int, lmax_in2: int, lmax_out: int) -> None:
        super().__init__()
        self.lmax_in1 = int(lmax_in1)
        self.lmax_in2 = int(lmax_in2)
        self.lmax_out = int(lmax_out)

    def build_constants(self) -> dict[str, torch.Tensor]:
        """Derived constants as float64 (or complex128) tensors, by name. Default: none."""
        return {}

    def register_constants(self) -> None:
        """Register :meth:`build_constants` as non-persistent exact buffers."""
        for name, value in self.build_constants().items():
            register_exact(self, name, value)

    def constant(self, name: str, like: torch.Tensor) -> torch.Tensor:
        """Constant ``name`` in ``like``'s precision (complex ones in the matching complex)."""
        return exact_like(self, name, like)

    def prepare(self) -> None:
        """Fill fitted constants (see the module docstring). Default: nothing to do."""

    def extra_repr(self) -> str:
        return (
            f"lmax_in1={self.lmax_in1}, lmax_in2={self.lmax_in2}, lmax_out={self.lmax_out}, "
            f"weight_numel={self.weight_numel}"
        )

    def shared_operand_factors(self, x2: torch.Tensor) -> SharedFactors | None:
        """The product with a one-channel second operand as :class:`SharedFactors`, or
        None where the implementation has no such form (the default).

        Args:
            x2: (..., (lmax_in2+1)^2), the shared operand (no channel axis).
        """
        return None

    def shared_forward(self, x1: torch.Tensor, x2: torch.Tensor,
                       weight: torch.Tensor | None) -> torch.Tensor | None:
        """``forward`` through :meth:`shared_operand_factors` when x2 has one channel and
        the implementation has the form; else None (the caller takes its general path)."""
        if x2.shape[-2] != 1:
            return None
        factors = self.shared_operand_factors(x2[..., 0, :])
        if factors is None:
            return None
        w = None if weight is None else weight.transpose(-1, -2)
        return shared_product(x1.transpose(-1, -2), w, factors).transpose(-1, -2)

    def forward(  # pragma: no cover - abstract
        self, x1: torch.Tensor, x2: torch.Tensor, weight: torch.Tensor | None = None
    ) -> torch.Tensor:
        raise NotImplementedError


# Traced for a graph compiler, the contraction over K <= _UNROLL_MAX terms is written as a
# sum of K broadcast products, which inductor turns into one pointwise loop over
# (..., Dout, C), where a batched matmul makes one small product per row. Measured on
# compiled force calls (docs/history.md, Speed): K = 4 (the Gaunt
# benchmark model's second layer) 413 -> 390 ms on the 960-atom acac box and 3.26 -> 3.07 ms
# on one molecule; K = 15 (CG) slower, 618 -> 680 ms. Eager, the sum would make K passes
# over memory, so eager keeps the matmul. Same result to rounding (tests/ops/test_tp.py).
_UNROLL_MAX = 4


def _traced(x: torch.Tensor) -> bool:
    """Whether ``x`` is being traced for a graph compiler: torch.compile, or make_fx with
    symbolic sizes (the export of :mod:`mlip.inference.compiled`)."""
    return torch.compiler.is_compiling() or isinstance(x.shape[0], torch.SymInt)


class SharedFactors(NamedTuple):
    """A channel-wise product with a shared second operand, reduced to one matrix per row:

        out[..., o, c] = w[..., q_o, c] * sum_k u[..., k, o] * x1[..., i_k, c] * w[..., p_k, c]

    with x1 (..., D1, C) and weights w (..., weight_numel, C) channel-last.

    Attributes:
        coupling: u, (..., K, Dout): the shared operand contracted with the product's
            constants (one small matrix per row, the same for every channel).
        x1_index: (K,) int64, i_k; None when K = D1 and i_k = k.
        weight_index: (K,) int64, p_k: the weight that scales term k; None for none.
        out_weight_index: (Dout,) int64, q_o: the weight that scales output component o;
            None for none.
    """

    coupling: torch.Tensor
    x1_index: torch.Tensor | None
    weight_index: torch.Tensor | None
    out_weight_index: torch.Tensor | None


def shared_product(x1: torch.Tensor, weight: torch.Tensor | None, factors: SharedFactors) -> torch.Tensor:
    """Apply :class:`SharedFactors` to channel-last features (pure function).

    Channel-last (components before channels, channels contiguous) keeps the per-row
    work in long contiguous runs of C values: on the 960-atom acac box (45,544 edges x
    64 channels) the message product with its backward is 1.7x faster eager than in the
    (..., C, D) layout, and inductor fuses it (docs/history.md, Speed).

    Args:
        x1: (..., D1, C).
        weight: (..., weight_numel, C), or None for all weights one.
        factors: from :meth:`TensorProduct.shared_operand_factors`.

    Returns:
        (..., Dout, C).

    >>> u = torch.eye(2).expand(3, 2, 2)
    >>> f = SharedFactors(u, None, None, None)
    >>> shared_product(torch.ones(3, 2, 5), None, f).shape
    torch.Size([3, 2, 5])
    """
    u, x1_index, weight_index, out_index = factors
    t = x1 if x1_index is None else torch.index_select(x1, -2, x1_index)
    if weight is not None and weight_index is not None:
        t = t * torch.index_select(weight, -2, weight_index)
    ut = u.transpose(-1, -2)  # (..., Dout, K)
    if t.shape[-2] == 1:  # K = 1: an outer product
        out = ut * t
    elif t.shape[-2] <= _UNROLL_MAX and _traced(t):
        out = sum(ut[..., :, k : k + 1] * t[..., k : k + 1, :] for k in range(t.shape[-2]))
    else:
        out = torch.matmul(ut, t)
    if weight is not None and out_index is not None:
        out = out * torch.index_select(weight, -2, out_index)
    return out


def matmul_rows(x: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """``x @ matrix`` for x (..., K) and a (K, M) matrix as one (rows, K) @ (K, M) product.

    ``torch.matmul`` folds the leading dimensions only where that needs no copy; for a
    non-contiguous x that takes part in autograd it falls back to a batched product of
    (C, K) @ (K, M) per row with the matrix broadcast, one small product per atom (in the
    traced force function of the Gaunt benchmark model, 16 of its 30 bmm calls).

    >>> matmul_rows(torch.ones(2, 4, 3).transpose(0, 1), torch.ones(3, 5)).shape
    torch.Size([4, 2, 5])
    """
    return (x.reshape(-1, x.shape[-1]) @ matrix).view(*x.shape[:-1], matrix.shape[-1])
