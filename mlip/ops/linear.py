"""Equivariant linear maps on SH-layout features: channels mix, degrees do not."""

from __future__ import annotations

import math

import torch
from torch import nn

from mlip.ops.sh import degree_of_components


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
        w = self.weight[self.degree]  # (D, C_in, C_out)
        return torch.einsum("nid,dio->nod", x, w) * self.norm


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
        xs = torch.einsum("nid,ns->nsid", x, onehot)
        w = self.weight[:, self.degree]  # (S, D, C_in, C_out)
        return torch.einsum("nsid,sdio->nod", xs, w) * self.norm
