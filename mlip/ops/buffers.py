"""Float64 constants that keep their precision through ``Module.to(dtype)``.

``Module.to(dtype)`` (and ``.float()``, ``.double()``) casts every floating-point and
complex buffer, so a float64 constant taken to float32 and back keeps float32 rounding:
Clebsch-Gordan coefficients good to 6e-8 would limit a float64 equivariance check to
~1e-8, and E0s of thousands of eV would lose meV. An *exact buffer* stores the float64
bits in an int64 tensor (complex128 as its real/imaginary float64 pairs): ``.to(device)``
moves it like any buffer, ``.to(dtype)`` leaves it alone, and :func:`exact` views it back
as float64 without a copy.

>>> m = torch.nn.Module()
>>> register_exact(m, "c", torch.tensor([1 / 3], dtype=torch.float64))
>>> _ = m.float().double()
>>> exact(m, "c").item() == 1 / 3
True
"""

from __future__ import annotations

import torch
from torch import nn

_SUFFIX = "_f64bits"
_COMPLEX_SUFFIX = "_c128bits"


def register_exact(module: nn.Module, name: str, value: torch.Tensor,
                   persistent: bool = False) -> None:
    """Register ``value`` (cast to float64, or complex128 if complex) as an exact buffer.

    Args:
        module: owner.
        name: constant name (the buffer is ``name + "_f64bits"`` or ``"_c128bits"``).
        value: the constant.
        persistent: save it in the state dict (fitted constants) or not (derived ones).
    """
    if value.is_complex():
        bits = torch.view_as_real(value.detach().to(torch.complex128)).contiguous()
        module.register_buffer(name + _COMPLEX_SUFFIX, bits.view(torch.int64), persistent)
    else:
        bits = value.detach().to(torch.float64).contiguous()
        module.register_buffer(name + _SUFFIX, bits.view(torch.int64), persistent)


def exact(module: nn.Module, name: str) -> torch.Tensor:
    """The constant ``name`` of ``module`` as float64 (or complex128), a view, no copy."""
    bits = module._buffers.get(name + _SUFFIX)
    if bits is not None:
        return bits.view(torch.float64)
    return torch.view_as_complex(module._buffers[name + _COMPLEX_SUFFIX].view(torch.float64))


def exact_like(module: nn.Module, name: str, like: torch.Tensor) -> torch.Tensor:
    """The constant in ``like``'s precision: float32/64, or complex64/128 for complex ones."""
    value = exact(module, name)
    if value.is_complex():
        return value.to(torch.complex128 if like.dtype == torch.float64 else torch.complex64)
    return value.to(like.dtype)


def set_exact(module: nn.Module, name: str, value: torch.Tensor) -> None:
    """Overwrite the exact buffer ``name`` in place (same shape) with ``value``."""
    exact(module, name).copy_(value.to(exact(module, name).dtype))
