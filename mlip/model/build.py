"""Build a Potential from the model config and the fitted statistics (one call,
:func:`build_model`, for training and for loading a model file).

The backbone is selected by class path (``model.backbone.class_path``) with its typed
``init_args``; the builder injects what comes from data: number of elements, cutoff and
average neighbour count.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import torch

from mlip.backbones.base import Backbone
from mlip.classpath import import_class
from mlip.model.potential import Potential


def build_backbone(
    backbone_config: dict[str, Any], num_elements: int, cutoff: float, avg_num_neighbors: float,
    num_heads: int = 1,
) -> Backbone:
    """Instantiate ``{class_path, init_args}`` with the data-derived arguments filled in
    (and ``num_heads`` for a multi-head model)."""
    cls = import_class(backbone_config["class_path"], base=Backbone, what="model.backbone")
    args = dict(backbone_config.get("init_args") or {})
    accepted = inspect.signature(cls.__init__).parameters
    if num_heads > 1:
        if "num_heads" not in accepted:
            raise ValueError(f"{backbone_config['class_path']} has one readout: several heads "
                             "need a backbone that takes num_heads (e.g. EquivariantBackbone)")
        args["num_heads"] = num_heads
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


@dataclass(frozen=True)
class ModelStatistics:
    """What a model is fitted to besides its config: the training split's statistics.

    Attributes:
        atomic_numbers: the elements, in species order.
        e0s: isolated-atom energies [eV], one per element (a multi-head model: one such row
            per head).
        scale: energy scale [eV] (force RMS).
        shift: per-atom interaction energy [eV], one number or one per element.
        cutoff: radial cutoff [Å].
        avg_num_neighbors: mean neighbour count within the cutoff.
        closest_pairs: ``"Za-Zb"`` (Za <= Zb) -> shortest distance [Å] of that pair in the
            training split: the ZBL core's reference (``model.repulsion.reference: data``);
            None where the distances come with the state dict (a saved model).
    """

    atomic_numbers: tuple[int, ...]
    e0s: tuple[float, ...] | tuple[tuple[float, ...], ...]
    scale: float
    shift: float | tuple[float, ...]
    cutoff: float
    avg_num_neighbors: float
    closest_pairs: dict[str, float] | None = None

    @classmethod
    def from_dict(cls, info: dict[str, Any]) -> ModelStatistics:
        """From a mapping with these keys (extra keys, e.g. a data module's, are ignored)."""
        shift = info["shift"]
        return cls(
            atomic_numbers=tuple(int(z) for z in info["atomic_numbers"]),
            e0s=tuple(tuple(float(e) for e in row) if isinstance(row, list | tuple) else float(row)
                      for row in info["e0s"]),
            scale=float(info["scale"]),
            shift=tuple(float(x) for x in shift) if isinstance(shift, list | tuple) else float(shift),
            cutoff=float(info["cutoff"]),
            avg_num_neighbors=float(info["avg_num_neighbors"]),
            closest_pairs=info.get("closest_pairs"),
        )


def build_model(model_config: dict[str, Any], statistics: ModelStatistics, prepare: bool = True) -> Potential:
    """The one way a Potential is made from a config: for training and for loading a file.

    Builds the configured backbone, wraps it with E0s, scale/shift and the ZBL core, sets
    the core's data reference from ``statistics.closest_pairs`` (when the config asks for
    it and they are given) and casts to ``model_config["dtype"]`` (float32 when absent).

    Args:
        model_config: the ``model`` section (backbone, dtype, repulsion, baseline, learn_shift,
            and ``heads``: names of the readout heads of a multi-head model, or absent).
        statistics: the fitted statistics.
        prepare: run :meth:`Potential.prepare`, the explicit step that fills fitted
            tensor-product constants (a new model); a saved model's state dict carries them.
    """
    s = statistics
    # files always record both; a config may leave learn_shift to the baseline (null)
    baseline = model_config.get("baseline", "none")
    learn_shift = model_config.get("learn_shift", False)
    heads = model_config.get("heads")
    backbone = build_backbone(model_config["backbone"], len(s.atomic_numbers), s.cutoff,
                              s.avg_num_neighbors, num_heads=len(heads) if heads else 1)
    e0s = [list(row) for row in s.e0s] if heads else list(s.e0s)
    potential = Potential(
        backbone, list(s.atomic_numbers), e0s, scale=s.scale, heads=heads,
        shift=list(s.shift) if isinstance(s.shift, tuple) else s.shift, cutoff=s.cutoff,
        avg_num_neighbors=s.avg_num_neighbors, repulsion=model_config.get("repulsion"),
        baseline=baseline,
        learn_shift=baseline != "none" if learn_shift is None else bool(learn_shift),
        uncertainty=model_config.get("uncertainty"),
    )
    rep = potential.repulsion
    if rep is not None and rep.reference == "data" and s.closest_pairs is not None:
        pairs = {tuple(int(z) for z in key.split("-")): float(d) for key, d in s.closest_pairs.items()}
        rep.set_reference(pairs, s.cutoff)
    if prepare:
        potential.prepare()
    return potential.to(getattr(torch, model_config.get("dtype", "float32")))


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
    """:func:`build_model` from positional statistics, without a data reference for the
    ZBL core and in float32 unless ``model_config`` names a dtype (tests and tools)."""
    statistics = ModelStatistics.from_dict({
        "atomic_numbers": atomic_numbers, "e0s": e0s, "scale": scale, "shift": shift,
        "cutoff": cutoff, "avg_num_neighbors": avg_num_neighbors})
    return build_model(model_config, statistics, prepare=prepare)
