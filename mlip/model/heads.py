"""Multi-head models: one backbone, one readout head (and one set of E0s) per level of
theory. Every adapter (calculator, MD, eval, LAMMPS, compiled path) takes single-head model
files; :func:`export_head` writes the model of one head (``mlip export head``).
"""

from __future__ import annotations

from pathlib import Path

import torch

from mlip.model.build import ModelStatistics, build_model
from mlip.model.io import read_model_file, save_model
from mlip.model.potential import Potential


def select_head(potential: Potential, name: str, model_config: dict) -> Potential:
    """The single-head model of head ``name``: the head's column of every head parameter
    (:meth:`~mlip.backbones.base.Backbone.head_parameters`) and its row of E0s; everything
    else shared. It predicts what ``potential`` predicts for structures of that head.

    Args:
        model_config: the model config ``potential`` was built from (a file's model_config).

    Raises:
        ValueError: no head of that name (the message lists the heads).
    """
    index = potential.head_index(name)
    config = {**model_config, "heads": None}
    stats = ModelStatistics.from_dict({
        "atomic_numbers": potential.atomic_numbers, "e0s": potential.e0s[index].tolist(),
        "scale": float(potential.scale), "shift": potential.shift.tolist(),
        "cutoff": potential.cutoff, "avg_num_neighbors": float(1.0 / potential.inv_avg_neighbors)})
    with torch.random.fork_rng(devices=[]):
        single = build_model(config, stats, prepare=False)
    head_params = {f"backbone.{n}" for n in potential.backbone.head_parameters()}
    state = {}
    for key, value in potential.state_dict().items():
        if key in head_params:
            value = value[..., index:index + 1]
        elif key == "e0s_f64bits":
            value = value[index]
        state[key] = value
    single.load_state_dict(state)
    param = next(potential.parameters())
    return single.to(device=param.device, dtype=param.dtype).eval()


def export_head(path: str | Path, name: str, output: str | Path) -> Path:
    """Write the single-head model file of head ``name`` of the multi-head model ``path``.

    Raises:
        ValueError: a model without heads, or no head of that name (listing the heads).
    """
    from mlip.model.io import load_model

    payload = read_model_file(path)
    heads = payload["model_config"].get("heads")
    if not heads:
        raise ValueError(f"{path} has a single head; it is already what every adapter takes")
    potential = load_model(path)
    if name not in heads:
        raise ValueError(f"{path} has no head {name!r}; its heads: {', '.join(heads)}")
    single = select_head(potential, name, payload["model_config"])
    config = {**payload["model_config"], "heads": None, "head": name}
    return save_model(output, single, config, float(payload["avg_num_neighbors"]))
