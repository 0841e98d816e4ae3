"""Equivariant linear maps on SH-layout features: channels mix, degrees do not."""

from __future__ import annotations

import math

import torch
from torch import nn

from mlip.ops.sh import degree_of_components


class _DegreeMix(torch.autograd.Function):
    """out[n, o, d] = sum_i x[n, i, d] w[d, i, o] as one batched product over d, each
    product's operand copied to (D, N, C) first.

    ``torch.bmm`` on the (D, N, C) view of (N, C, D) features (element stride D) falls back
    to one copied (N, C) @ (C, C') product per component (ATen's per-batch loop): 100 us
    against 33 us for a contiguous copy at N = 15, C = 64, D = 9 (1 thread). Autograd's own
    backward would hand bmm the same strided view of the incoming gradient, so the
    backward is written out here with the copy. In an AOTInductor package inductor keeps
    the copy in the forward but (measured) lays some backward copies out strided again;
    even so the compiled force call of the Gaunt benchmark model is 5 % faster on one
    acac molecule and 4.5 % on the 960-atom box (docs/history.md, Speed).
    The backward is made of differentiable operations: force training differentiates
    through it.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:  # noqa: D102
        ctx.save_for_backward(x, w)  # inputs, not the copy: double backward sees x
        return torch.bmm(x.permute(2, 0, 1).contiguous(), w).permute(1, 2, 0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:  # noqa: D102
        x, w = ctx.saved_tensors
        g = grad.permute(2, 0, 1).contiguous()  # (D, N, C_out)
        grad_x = torch.bmm(g, w.transpose(1, 2)).permute(1, 2, 0) if ctx.needs_input_grad[0] else None
        grad_w = None
        if ctx.needs_input_grad[1]:  # (D, C_in, N) @ (D, N, C_out)
            grad_w = torch.bmm(x.permute(2, 1, 0).contiguous(), g)
        return grad_x, grad_w


def degree_mix(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Per-component channel mixing (pure function): x (N, C_in, D), w (D, C_in, C_out)
    -> (N, C_out, D), out[n, o, d] = sum_i x[n, i, d] w[d, i, o].

    >>> degree_mix(torch.ones(2, 3, 4), torch.ones(4, 3, 5)).shape
    torch.Size([2, 5, 4])
    """
    return _DegreeMix.apply(x, w)


class DegreeLinear(nn.Module):
    """Per-degree channel mixing: out[:, o, (l,m)] = sum_i W_l[i, o] x[:, i, (l,m)] / sqrt(C_in).

    Args:
        lmax: maximum degree of the features (input and output).
        channels_in: C_in.
        channels_out: C_out.

    Shapes: (N, C_in, (lmax+1)^2) -> (N, C_out, (lmax+1)^2).

    >>> DegreeLinear(1, 4, 6)(torch.randn(3, 4, 4)).shape
    torch.Size([3, 6, 4])
    """

    def __init__(self, lmax: int, channels_in: int, channels_out: int) -> None:
        super().__init__()
        self.lmax = lmax
        self.weight = nn.Parameter(torch.randn(lmax + 1, channels_in, channels_out))
        self.norm = 1.0 / math.sqrt(channels_in)
        self.register_buffer("degree", degree_of_components(lmax), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.lmax == 0:
            return torch.einsum("nid,io->nod", x, self.weight[0]) * self.norm
        return degree_mix(x, self.weight[self.degree] * self.norm)


class ElementDegreeLinear(nn.Module):
    """Element-dependent per-degree linear map (MACE's self-connection role).

    Args:
        lmax: maximum degree (input and output).
        channels_in: C_in.
        channels_out: C_out.
        num_elements: number of element types S.

    Shapes: x (N, C_in, D), species one-hot (N, S) -> (N, C_out, D).
    """

    def __init__(self, lmax: int, channels_in: int, channels_out: int, num_elements: int) -> None:
        super().__init__()
        self.lmax = lmax
        self.weight = nn.Parameter(torch.randn(num_elements, lmax + 1, channels_in, channels_out))
        self.norm = 1.0 / math.sqrt(channels_in)  # one species is active per atom
        self.register_buffer("degree", degree_of_components(lmax), persistent=False)

    def forward(self, x: torch.Tensor, onehot: torch.Tensor) -> torch.Tensor:
        # Mix over (species x channel) as one contraction: the one-hot picks the block.
        xs = torch.einsum("nid,ns->nsid", x, onehot).flatten(1, 2)  # (N, S C_in, D)
        w = self.weight[:, self.degree].transpose(0, 1).flatten(1, 2)  # (D, S C_in, C_out)
        return degree_mix(xs, w * self.norm)
