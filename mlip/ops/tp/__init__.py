"""Tensor products behind one protocol (:class:`mlip.ops.tp.base.TensorProduct`).

Implementations are chosen in configs by class path, e.g.
``mlip.ops.tp.cg.CGTensorProduct``, or by a short name from :data:`ALIASES`.
"""

from __future__ import annotations

import importlib

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
    class_path = ALIASES.get(class_path, class_path)
    module_name, _, attr = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError, ValueError) as err:
        raise ValueError(
            f"tensor_product {class_path!r} is not an importable class path "
            "(e.g. 'mlip.ops.tp.cg.CGTensorProduct') or one of "
            f"{', '.join(ALIASES)}"
        ) from err
    if not (isinstance(cls, type) and issubclass(cls, TensorProduct)):
        raise ValueError(f"tensor_product {class_path!r} is not a TensorProduct subclass")
    return cls
