"""Tensor products behind one protocol (:class:`mlip.ops.tp.base.TensorProduct`).

Implementations are chosen in configs by class path, e.g.
``mlip.ops.tp.cg.CGTensorProduct``, or by a short name the class itself declares
(``short_names``; :func:`short_names` collects them): one table, kept in the classes.
"""

from __future__ import annotations

import importlib

from mlip.classpath import import_class
from mlip.ops.tp.base import TensorProduct

# The modules of the shipped implementations (their classes declare their short names).
_BUILT_IN = ("mlip.ops.tp.cg", "mlip.ops.tp.gaunt", "mlip.ops.tp.cp")


def short_names() -> dict[str, str]:
    """Short name -> class path of every shipped tensor product, read from the classes.

    >>> short_names()["cg"]
    'mlip.ops.tp.cg.CGTensorProduct'
    """
    table: dict[str, str] = {}
    for module in _BUILT_IN:
        for value in vars(importlib.import_module(module)).values():
            if isinstance(value, type) and issubclass(value, TensorProduct) and value.__module__ == module:
                for name in value.__dict__.get("short_names", ()):
                    if name in table:
                        raise RuntimeError(f"tensor-product short name {name!r} is declared twice")
                    table[name] = f"{module}.{value.__qualname__}"
    return table


def resolve_tensor_product(class_path: str) -> type[TensorProduct]:
    """Import a TensorProduct subclass from its dotted class path or short name.

    >>> resolve_tensor_product("mlip.ops.tp.cg.CGTensorProduct").__name__
    'CGTensorProduct'
    >>> resolve_tensor_product("gaunt-fourier").__name__
    'GauntFourierTensorProduct'
    """
    aliases = short_names() if "." not in str(class_path) else None
    return import_class(class_path, base=TensorProduct, aliases=aliases, what="tensor_product")
