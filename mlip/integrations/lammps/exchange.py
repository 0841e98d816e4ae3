"""The ghost-feature exchange of a LAMMPS package, as two PyTorch operators.

A model with L > 1 message-passing layers needs, in layer t, the layer t - 1 features of
every atom within one cutoff of its own atoms. The package computes every layer only for
the atoms a rank owns; between layers the pair style fills in the ghost atoms' rows from
the ranks that own them (LAMMPS forward communication), and in the gradient adds the
ghosts' rows back to their owners' (reverse communication). The package calls the pair
style for this through two operators, which the plugin implements in C++
(``plugin/pair_mlip.cpp``, same names and schemas) and AOTInductor calls by name:

``mlip_lammps::ghost_exchange(Tensor x, Tensor nodes, Tensor like) -> Tensor``
    x (n, ...): the rows the layer computed, the first n nodes (the two padding nodes and
    the owned atoms; ``nodes`` has n rows); returns (N, ...), N = ``like.shape[0]`` (every
    node of the graph), the first n rows x, each ghost node's row its owner's.
``mlip_lammps::ghost_exchange_backward(Tensor grad, Tensor nodes) -> Tensor``
    grad (N, ...) of the exchange's output; returns (n, ...): the first n rows plus, for
    each owned atom, the gradients on its ghost copies on every other rank.

The Python implementations here run in one process, where a graph has no ghost nodes
(N = n; anything else is an error): they are what tracing and tests see. Defining the
operators registers them with PyTorch, so nothing is defined at import:
:func:`ghost_exchange` defines them on first use.
"""

from __future__ import annotations

import functools

import torch

__all__ = ["ghost_exchange"]


@functools.cache
def _operators():
    lib = "mlip_lammps"

    @torch.library.custom_op(f"{lib}::ghost_exchange", mutates_args=())
    def forward(x: torch.Tensor, nodes: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        if like.shape[0] != x.shape[0]:
            raise RuntimeError(f"ghost exchange of {x.shape[0]} computed rows into "
                               f"{like.shape[0]} nodes outside LAMMPS (no ghost owners here)")
        return x.clone(memory_format=torch.contiguous_format)

    @forward.register_fake
    def _(x, nodes, like):
        return x.new_empty((like.shape[0], *x.shape[1:]))

    @torch.library.custom_op(f"{lib}::ghost_exchange_backward", mutates_args=())
    def backward(grad: torch.Tensor, nodes: torch.Tensor) -> torch.Tensor:
        return grad.narrow(0, 0, nodes.shape[0]).clone(memory_format=torch.contiguous_format)

    @backward.register_fake
    def _(grad, nodes):
        return grad.new_empty((nodes.shape[0], *grad.shape[1:]))

    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[1])

    def gradient(ctx, grad):
        (nodes,) = ctx.saved_tensors
        return backward(grad, nodes), None, None

    forward.register_autograd(gradient, setup_context=setup_context)
    return forward


def ghost_exchange(x: torch.Tensor, nodes: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``mlip_lammps::ghost_exchange`` (see the module docstring), differentiable."""
    return _operators()(x, nodes, like)
