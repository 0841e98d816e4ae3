"""Build a Potential from a config dict and dataset statistics.

The backbone is selected by class path (``model.backbone.class_path``) with its typed
``init_args``; the builder injects what comes from data: number of elements, cutoff and
average neighbour count.
"""

from __future__ import annotations

import inspect
from typing import Any

from mlip.backbones.base import Backbone
from mlip.classpath import import_class
from mlip.model.potential import Potential


def build_backbone(
    backbone_config: dict[str, Any], num_elements: int, cutoff: float, avg_num_neighbors: float
) -> Backbone:
    """Instantiate ``{class_path, init_args}`` with the data-derived arguments filled in."""
    cls = import_class(backbone_config["class_path"], base=Backbone, what="model.backbone")
    args = dict(backbone_config.get("init_args") or {})
    accepted = inspect.signature(cls.__init__).parameters
    injected = {
        "num_elements": num_elements,
        "cutoff": cutoff,
        "avg_num_neighbors": avg_num_neighbors,
    }
    for name, value in injected.items():
        if name in accepted:
            args[name] = value
    unknown = [k for k in args if k not in accepted]
    if unknown and not any(p.kind is p.VAR_KEYWORD for p in accepted.values()):
        raise ValueError(
            f"{backbone_config['class_path']} does not take argument(s) {unknown}; "
            f"it takes {[k for k in accepted if k != 'self']}"
        )
    return cls(**args)


def build_potential(
    model_config: dict[str, Any],
    atomic_numbers: list[int],
    e0s: list[float],
    scale: float,
    shift: float | list[float],
    cutoff: float,
    avg_num_neighbors: float,
    prepare: bool = True,
) -> Potential:
    """A Potential around the configured backbone (float32/64 as the caller casts it).

    With ``prepare`` (a new model), :meth:`Potential.prepare` runs: the explicit step that
    fills fitted tensor-product constants (e.g. CP factors from the cache or a deterministic
    fit). Loading a saved model skips it: its state dict carries those constants.
    """
    backbone = build_backbone(
        model_config["backbone"], len(atomic_numbers), cutoff, avg_num_neighbors
    )
    potential = Potential(
        backbone, atomic_numbers, e0s, scale=scale, shift=shift, cutoff=cutoff,
        avg_num_neighbors=avg_num_neighbors, repulsion=model_config.get("repulsion"),
        baseline=model_config.get("baseline", "per_element"),
        learn_shift=bool(model_config.get("learn_shift", False)),
    )
    if prepare:
        potential.prepare()
    return potential
