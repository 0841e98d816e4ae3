"""Tensor products behind one protocol (:class:`mlip.ops.tp.base.TensorProduct`).

Implementations are chosen in configs by class path, e.g.
``mlip.ops.tp.cg.CGTensorProduct``.
"""

from __future__ import annotations

import importlib

from mlip.ops.tp.base import TensorProduct


def resolve_tensor_product(class_path: str) -> type[TensorProduct]:
    """Import a TensorProduct subclass from its dotted class path.

    >>> resolve_tensor_product("mlip.ops.tp.cg.CGTensorProduct").__name__
    'CGTensorProduct'
    """
    module_name, _, attr = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError, ValueError) as err:
        raise ValueError(
            f"tensor_product {class_path!r} is not an importable class path "
            "(e.g. 'mlip.ops.tp.cg.CGTensorProduct')"
        ) from err
    if not (isinstance(cls, type) and issubclass(cls, TensorProduct)):
        raise ValueError(f"tensor_product {class_path!r} is not a TensorProduct subclass")
    return cls
