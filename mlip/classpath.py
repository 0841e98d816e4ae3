"""Resolve ``package.module.Class`` strings from configs (the one class resolver).

Configs name backbones and tensor products by class path (STYLE habit 5); short names are
aliases kept beside the classes they name (e.g. :func:`mlip.ops.tp.short_names`).
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping


def import_class(class_path: str, base: type | None = None, aliases: Mapping[str, str] | None = None,
                 what: str = "class") -> type:
    """Import a class from its dotted path (or a short name from ``aliases``).

    Args:
        class_path: e.g. ``"mlip.ops.tp.cg.CGTensorProduct"``.
        base: the class must be a subclass of this.
        aliases: short name -> class path.
        what: what the class is, for error messages (e.g. ``"tensor_product"``).

    Raises:
        ValueError: not importable, or not a subclass of ``base``; names what was expected.

    >>> import_class("collections.OrderedDict").__name__
    'OrderedDict'
    """
    aliases = aliases or {}
    resolved = aliases.get(class_path, class_path)
    module_name, _, attr = str(resolved).rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError, ValueError) as err:
        names = f" or one of {', '.join(aliases)}" if aliases else ""
        raise ValueError(f"{what} {class_path!r} is not an importable class path "
                         f"(package.module.Class){names}: {err}") from err
    if base is not None and not (isinstance(cls, type) and issubclass(cls, base)):
        raise ValueError(f"{what} {class_path!r} is not a {base.__name__} subclass")
    return cls
