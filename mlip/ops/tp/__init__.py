"""Tensor products behind one protocol (:class:`mlip.ops.tp.base.TensorProduct`).

Implementations are chosen in configs by class path, e.g.
``mlip.ops.tp.cg.CGTensorProduct``, or by a short name from :data:`ALIASES`.
"""

from __future__ import annotations

from mlip.classpath import import_class
from mlip.ops.tp.base import TensorProduct

# Short names accepted wherever a tensor-product class path is.
ALIASES = {
    "cg": "mlip.ops.tp.cg.CGTensorProduct",
    "gaunt": "mlip.ops.tp.gaunt.GauntGridTensorProduct",
    "gaunt-grid": "mlip.ops.tp.gaunt.GauntGridTensorProduct",
    "gaunt-fourier": "mlip.ops.tp.gaunt.GauntFourierTensorProduct",
    "cp": "mlip.ops.tp.cp.CPTensorProduct",
}


def resolve_tensor_product(class_path: str) -> type[TensorProduct]:
    """Import a TensorProduct subclass from its dotted class path or short name.

    >>> resolve_tensor_product("mlip.ops.tp.cg.CGTensorProduct").__name__
    'CGTensorProduct'
    >>> resolve_tensor_product("gaunt-fourier").__name__
    'GauntFourierTensorProduct'
    """
    return import_class(class_path, base=TensorProduct, aliases=ALIASES, what="tensor_product")
