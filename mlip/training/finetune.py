"""Fine-tuning: start a run from a trained model file (``model.init_from``).

What a fine-tuned run takes from the file and what from the new data:

* the architecture (``model.backbone``, ``baseline``, ``learn_shift``, ``repulsion``) and the
  cutoff come from the file; a config key that says otherwise is refused with one line
  naming it (:func:`inherit_model`, called while the config is resolved). ``model.dtype``
  may differ (no shapes change).
* scale, shift and average neighbour count (the normalisations the weights were trained
  with) come from the file; the elements are the file's, in its order, then any new ones
  of the training data, which get new rows in every per-element tensor (their initial
  values from the fresh build) while the old rows are copied: before training, the old
  elements' predictions are exactly the file's (:func:`load_weights`).
* the energy reference is chosen explicitly with ``data.e0s``: ``foundation`` keeps the
  file's E0s (an error if the data has a new element); ``refit`` adds to them the
  least-squares fit of the new data's residuals against the file's model over the element
  counts (:func:`refit_e0s`), so a change of level of theory does not start from an error
  of eV per atom (and new elements get an E0); an isolated-atoms file gives every element's
  E0 at the new level.
* ``training.freeze`` names parameter groups kept fixed: backbone parameter-name prefixes
  such as ``embedding``, ``layers.0`` or ``readouts`` (:func:`freeze`).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from mlip.data import keys
from mlip.model.potential import Potential

E0_CHOICES = ("foundation", "refit")
DEFAULT_HEAD = "default"  # the head of the training data in a multi-head model
# model-file fields a fine-tuned run inherits; model.dtype may be chosen anew
INHERITED = ("backbone", "baseline", "learn_shift", "repulsion")


def _first_difference(given: Any, stored: Any, where: str) -> tuple[str, Any, Any] | None:
    """The first dotted key where ``given`` (the config) differs from ``stored`` (the file):
    keys the config leaves out are not differences."""
    if isinstance(given, dict) and isinstance(stored, dict):
        for key, value in given.items():
            found = _first_difference(value, stored.get(key), f"{where}.{key}")
            if found:
                return found
        return None
    if isinstance(given, int | float) and isinstance(stored, int | float) and not isinstance(given, bool):
        return None if float(given) == float(stored) else (where, given, stored)
    return None if given == stored else (where, given, stored)


def inherit_model(user: dict[str, Any], config_dir: Path | None = None) -> None:
    """Put the architecture of ``model.init_from`` into the user's (unresolved) config, in
    place: model.backbone/baseline/learn_shift/repulsion and data.cutoff from the file.

    Raises:
        ValueError: one line naming the first config key that contradicts the file (an
            override that would change shapes), or a ``data.e0s`` choice that needs a file.
    """
    from mlip.model.io import read_model_file
    from mlip.training.config import resolve_backbone

    model = user.get("model") if isinstance(user.get("model"), dict) else {}
    data = user.get("data") if isinstance(user.get("data"), dict) else {}
    source = model.get("init_from")
    if not source:
        if data.get("e0s") in E0_CHOICES:
            raise ValueError(f"data.e0s: {data['e0s']} needs a model to start from "
                             "(model.init_from or --init-from)")
        return
    payload = read_model_file(source)
    stored = payload["model_config"]
    if stored.get("heads"):
        raise ValueError(f"{source} (model.init_from) has the heads {stored['heads']}: start "
                         "from one of them (mlip export head MODEL --head NAME -o OUT.pt)")
    stored = {**stored, "learn_shift": bool(stored.get("learn_shift", False))}
    for key in INHERITED:
        if key not in model:
            continue
        given = model[key]
        if key == "backbone":
            given, _ = resolve_backbone(given, config_dir)
        if key == "learn_shift" and given is None:
            given = model.get("baseline", stored["baseline"]) != "none"
        found = _first_difference(given, stored.get(key), f"model.{key}")
        if found:
            name, mine, theirs = found
            raise ValueError(f"{name}: {mine!r} in the config but {theirs!r} in {source} "
                             "(model.init_from): the architecture comes from the model file; "
                             "drop the key or train from scratch")
    cutoff = float(payload["cutoff"])
    if "cutoff" in data and float(data["cutoff"]) != cutoff:
        raise ValueError(f"data.cutoff: {data['cutoff']} in the config but {cutoff:g} in {source} "
                         "(model.init_from): the cutoff comes from the model file")
    inherited = {k: copy.deepcopy(stored[k]) for k in INHERITED if k in stored}
    user["model"] = {**inherited, "dtype": model.get("dtype", stored.get("dtype", "float32")),
                     "init_from": str(source)}
    user.setdefault("data", {})["cutoff"] = cutoff


def check_replay(config: dict[str, Any]) -> None:
    """``data.replay`` of a resolved config: only with model.init_from, with exactly one of
    count and fraction (one line naming the key otherwise)."""
    replay = config["data"]["replay"]
    heads = [DEFAULT_HEAD, replay["head"]] if replay["file"] and replay["head"] else None
    if config["model"].get("heads") not in (None, heads):
        raise ValueError(f"model.heads: {config['model']['heads']} but the heads come from "
                         f"data.replay.head ({heads}); leave model.heads out")
    config["model"]["heads"] = heads
    if not replay["file"]:
        return
    if not config["model"].get("init_from"):
        raise ValueError("data.replay: replay needs a model to start from (model.init_from or "
                         "--init-from)")
    if (replay["count"] is None) == (replay["fraction"] is None):
        raise ValueError("data.replay: give exactly one of count and fraction")
    if replay["head"] == DEFAULT_HEAD:
        raise ValueError(f"data.replay.head: {DEFAULT_HEAD!r} is the training data's head; "
                         "name the pretraining level's head otherwise (e.g. pretrain)")


def initial_info(payload: dict[str, Any], data_info: dict[str, Any], e0_spec: str,
                 source: str, heads: list[str] | None = None) -> dict[str, Any]:
    """The statistics a fine-tuned model is built with: the file's elements (in its order)
    then the data's new ones; the file's scale, shift, cutoff and neighbour count; E0s per
    ``e0_spec`` (``refit`` starts from the file's, :func:`refit_e0s` fits them once the
    weights are in). With ``heads`` (a replay head) the E0s have two rows: the data's, and
    the file's for the replayed pretraining level (the data's for a new element).

    Raises:
        ValueError: ``foundation`` E0s with a new element, or an isolated-atoms file that
            lacks an element of the model.
    """
    from ase.data import chemical_symbols

    old = [int(z) for z in payload["atomic_numbers"]]
    new = [int(z) for z in data_info["atomic_numbers"] if int(z) not in old]
    zs = old + new
    file_e0 = dict(zip(old, payload["e0s"], strict=True))
    data_e0 = dict(zip(data_info["atomic_numbers"], data_info["e0s"], strict=True))
    names = [chemical_symbols[z] for z in new]
    if e0_spec == "foundation":
        if new:
            raise ValueError(f"data.e0s: foundation has no E0 for {names} (new in the training "
                             f"data, not in {source}); use data.e0s=refit or an isolated-atoms file")
        e0s = [file_e0[z] for z in zs]
    elif e0_spec == "refit":
        e0s = [file_e0.get(z, 0.0) for z in zs]
    elif e0_spec in (None, "least_squares"):
        raise ValueError(f"data.e0s: with model.init_from choose the energy reference: "
                         f"foundation, refit or an isolated-atoms file (got {e0_spec})")
    else:
        missing = [chemical_symbols[z] for z in zs if z not in data_e0]
        if missing:
            raise ValueError(f"data.e0s: {e0_spec} has no isolated atom of {missing} "
                             f"(elements of {source})")
        e0s = [data_e0[z] for z in zs]
    shift = payload["shift"]
    shift = list(shift) if isinstance(shift, list | tuple) else [float(shift)] * len(old)
    data_shift = dict(zip(data_info["atomic_numbers"], data_info["shift"], strict=True))
    e0s = [float(e) for e in e0s]
    if heads:
        e0s = [e0s, [float(file_e0.get(z, e)) for z, e in zip(zs, e0s, strict=True)]]
    return {**data_info, "atomic_numbers": zs, "e0s": e0s,
            "scale": float(payload["scale"]),
            "shift": [float(x) for x in shift] + [float(data_shift[z]) for z in new],
            "cutoff": float(payload["cutoff"]),
            "avg_num_neighbors": float(payload["avg_num_neighbors"]),
            "init_from": {"file": str(source), "new_elements": new, "e0s": e0_spec}}


# tensors of the file that a fine-tuned model does not take over: its own element table
# and energy reference come from initial_info
_NOT_COPIED = ("z_to_species", "e0s_f64bits")


def load_weights(potential: Potential, state: dict[str, torch.Tensor]) -> dict[str, int]:
    """Copy a model file's tensors into ``potential`` (whose elements start with the
    file's, in order): equal shapes whole; where the element count grew, the file's rows
    into the leading block of each grown dimension, the new rows kept as built.

    Returns:
        counts: 'copied' (whole), 'extended' (grown along the element dimension).

    Raises:
        ValueError: a tensor missing on either side, or shapes that differ other than by
            the element count (not the same architecture).
    """
    own = potential.state_dict()
    # a fitted uncertainty belongs to the file's weights: refit after fine-tuning
    state = {k: v for k, v in state.items() if not k.startswith("uncertainty.")}
    missing = sorted(set(own) - set(state) - set(_NOT_COPIED))
    extra = sorted(set(state) - set(own))
    if missing or extra:
        raise ValueError(f"the model file does not fit this architecture: missing "
                         f"{missing[:5]}, unexpected {extra[:5]}")
    n_old = int((state["z_to_species"] >= 0).sum())
    n_new = len(potential.atomic_numbers)
    head_params = {f"backbone.{n}" for n in potential.backbone.head_parameters()}
    counts = {"copied": 0, "extended": 0}
    with torch.no_grad():
        for name, target in own.items():
            if name in _NOT_COPIED:
                continue
            source = state[name].to(target.dtype)
            if source.shape == target.shape:
                target.copy_(source)
                counts["copied"] += 1
                continue
            if name in head_params and source.shape[:-1] == target.shape[:-1] and source.shape[-1] == 1:
                target.copy_(source.expand_as(target))  # every head starts as the file's readout
                counts["copied"] += 1
                continue
            grown = [d for d, (a, b) in enumerate(zip(source.shape, target.shape, strict=False))
                     if a != b]
            if (source.dim() != target.dim() or n_new == n_old
                    or any((source.shape[d], target.shape[d]) != (n_old, n_new) for d in grown)):
                raise ValueError(f"{name}: shape {tuple(source.shape)} in the model file, "
                                 f"{tuple(target.shape)} here: not the same architecture")
            target[tuple(slice(0, n_old) if d in grown else slice(None)
                         for d in range(target.dim()))] = source
            counts["extended"] += 1
    return counts


@torch.no_grad()
def refit_e0s(potential: Potential, loader: DataLoader) -> tuple[np.ndarray, float, float]:
    """Least-squares E0 corrections from the model's residuals on labelled structures:
    min ||E_ref - E_pred - counts @ dE0||, per element (minimum norm where the data does
    not separate elements); the model's E0s are set to E0 + dE0.

    Returns:
        (new E0s (S,) [eV] of the data's head, per-atom energy MAE before and after [eV/atom]).
    """
    from mlip.graph.build import as_batch_dict

    param = next(potential.parameters())
    counts, residual, natoms = [], [], []
    for batch in loader:
        data = {k: v.to(param.device) for k, v in as_batch_dict(batch).items()}
        labelled = data[keys.ENERGY_MASK].bool()
        with torch.enable_grad():
            out = potential(data, compute_forces=False)
        species = potential.species_of(data[keys.ATOMIC_NUMBERS])
        onehot = torch.zeros(len(data[keys.NUM_ATOMS]), len(potential.atomic_numbers),
                             dtype=torch.float64, device=param.device)
        onehot.index_put_((data[keys.BATCH], species), torch.ones_like(species, dtype=torch.float64),
                          accumulate=True)
        counts.append(onehot[labelled].cpu())
        residual.append((data[keys.ENERGY].double() - out[keys.ENERGY].double())[labelled].cpu())
        natoms.append(data[keys.NUM_ATOMS][labelled].double().cpu())
    if not counts:
        raise ValueError("data.e0s: refit needs training structures with energies")
    a, r, n = torch.cat(counts).numpy(), torch.cat(residual).numpy(), torch.cat(natoms).numpy()
    delta = np.linalg.lstsq(a, r, rcond=None)[0]
    before = float(np.mean(np.abs(r) / n))
    after = float(np.mean(np.abs(r - a @ delta) / n))
    table = potential.e0s.cpu().numpy().copy()
    row = table[0] if potential.heads else table  # the data's head (a replay head keeps its own)
    row += delta
    from mlip.ops.buffers import register_exact

    register_exact(potential, "e0s", torch.tensor(table, dtype=torch.float64, device=param.device),
                   persistent=True)
    return row.copy(), before, after


def parameter_groups(potential: Potential) -> list[str]:
    """The names ``training.freeze`` takes: each backbone child module, and each member
    of a numbered list of them (``embedding``, ``layers``, ``layers.0``, ``readouts.1``)."""
    groups: list[str] = []
    for name, _ in potential.backbone.named_parameters():
        parts = name.split(".")
        for depth in (1, 2):
            if len(parts) > depth and (depth == 1 or parts[1].isdigit()):
                prefix = ".".join(parts[:depth])
                if prefix not in groups:
                    groups.append(prefix)
            elif depth == 1 and len(parts) == 1 and name not in groups:
                groups.append(name)
    return groups


def freeze(potential: Potential, names: list[str]) -> list[str]:
    """Keep the backbone parameters under each name fixed (``requires_grad = False``).

    Returns:
        the frozen parameters' full names.

    Raises:
        ValueError: a name that matches no parameter, listing the groups there are.
    """
    frozen: list[str] = []
    params = dict(potential.backbone.named_parameters())
    for name in names:
        hits = [p for p in params if p == name or p.startswith(name + ".")]
        if not hits:
            raise ValueError(f"training.freeze: {name!r} names no parameters of "
                             f"{type(potential.backbone).__name__}; groups: "
                             f"{', '.join(parameter_groups(potential))}")
        for p in hits:
            params[p].requires_grad_(False)
            frozen.append(f"backbone.{p}")
    return frozen


def training_split_loader(dm: Any) -> DataLoader:
    """The training split without ``data.extra`` frames, in order (for the E0 refit)."""
    from torch.utils.data import Subset

    from mlip.graph.build import GraphDataset, collate

    own = Subset(dm.train_set, range(len(dm.train_set) - dm.extra_count))
    return DataLoader(GraphDataset(own, dm.cfg["cutoff"], dtype=dm.dtype),
                      batch_size=dm.cfg["val_batch_size"], collate_fn=collate,
                      generator=torch.Generator())


def errors(potential: Potential, loader: Any) -> dict[str, float]:
    """Energy and force errors of ``potential`` over a loader's batches (metrics.summarize)."""
    from mlip.graph.build import as_batch_dict
    from mlip.training.metrics import metric_sums, summarize

    param = next(potential.parameters())
    training = potential.training
    potential.eval()
    sums = None
    for batch in loader:
        data = {k: v.to(param.device) for k, v in as_batch_dict(batch).items()}
        with torch.enable_grad():
            out = {k: v.detach() for k, v in potential(data).items()}
        s = metric_sums(out, data)
        sums = s if sums is None else sums + s
    potential.train(training)
    return summarize(sums) if sums is not None else {}


def start_from(module: Any, dm: Any, payload: dict[str, Any]) -> dict[str, Any]:
    """Put a model file's weights into a new run's module (PotentialModule): copy them
    (:func:`load_weights`), refit the E0s where ``data.e0s`` is refit, restart the moving
    average, and measure the validation errors before any step (epoch 0), so a collapse at
    the first step is visible against them.

    Returns:
        report: 'tensors' (copied/extended counts), 'e0s' (and 'refit_mae_before'/'after'
        [eV/atom] for refit), 'val' (metrics.summarize of the validation split).
    """
    report: dict[str, Any] = {"tensors": load_weights(module.model, payload["state_dict"])}
    if dm.cfg["e0s"] == "refit":
        e0s, before, after = refit_e0s(module.model, training_split_loader(dm))
        report.update(refit_mae_before=before, refit_mae_after=after)
        module.data_info["e0s"] = module.model.e0s.tolist()
    report["e0s"] = module.model.e0s.tolist()
    module.reset_ema()
    report["val"] = errors(module.model, dm.val_dataloader())
    return report
