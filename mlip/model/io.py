"""Deployable model files: config + tensors, loadable without executing code.

A model file is ``torch.save`` of a plain dict (strings, numbers, lists and tensors only),
read back with ``torch.load(weights_only=True)``: no pickled classes.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from mlip import __version__
from mlip.data.structure import MAX_Z
from mlip.model.build import ModelStatistics, build_model
from mlip.model.potential import Potential
from mlip.model.repulsion import ZBLRepulsion

FORMAT = "mlip-model"
FORMAT_VERSION = 3
# Version 1 kept float64 constants (E0s, CP factors) as plain float64 tensors; version 2
# stores them as exact buffers (:mod:`mlip.ops.buffers`): "<name>_f64bits", int64 bits.
_V1_EXACT = ("e0s", "factor_a", "factor_b", "factor_c", "fit_error")


def _upgrade_v1(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Version-1 state dict -> version 2 (exact buffers; the Z table had 120 rows, now
    MAX_Z + 1 = 119)."""
    out = {}
    for key, value in state.items():
        if key == "z_to_species":
            out[key] = value[: MAX_Z + 1]
        elif key.rpartition(".")[2] in _V1_EXACT and value.is_floating_point():
            out[key + "_f64bits"] = value.to(torch.float64).contiguous().view(torch.int64)
        else:
            out[key] = value
    return out


def _upgrade_v2(payload: dict[str, Any], state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Version <= 2 -> 3: those models used the coordination baseline with one scalar shift
    (a plain buffer); version 3 keeps one shift per element as an exact buffer and names the
    baseline in the model config."""
    payload["model_config"] = {**payload["model_config"], "baseline": "coordination"}
    num = len(payload["atomic_numbers"])
    shifts = torch.full((num,), float(payload["shift"]), dtype=torch.float64)
    payload["shift"] = shifts.tolist()
    out = {k: v for k, v in state.items() if k != "shift"}
    out["shift_f64bits"] = shifts.view(torch.int64)
    return out


def _upgrade_fields(payload: dict[str, Any], state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Fields an earlier file may lack, supplied before the build: the model config's dtype
    (the saved one) and, for a ZBL core written before its radii were stored, those radii
    (they were the covalent-radius sums)."""
    config = payload["model_config"]
    payload["model_config"] = {**config, "dtype": payload.get("dtype", "float32")}
    settings = config.get("repulsion")
    if settings is not None and "repulsion.d_ref" not in state:
        state = {**state, "repulsion.d_ref": ZBLRepulsion(payload["atomic_numbers"]).d_ref}
    return state


def model_metadata(potential: Potential, model_config: dict[str, Any], avg_num_neighbors: float) -> dict:
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "mlip_version": __version__,
        # what the potential is, whatever the caller's config says
        "model_config": {**model_config, "baseline": potential.baseline, "heads": potential.heads,
                         "learn_shift": potential.learn_shift,
                         "uncertainty": None if potential.uncertainty is None else potential.uncertainty.settings(),
                         "repulsion": None if potential.repulsion is None else potential.repulsion.settings()},
        "atomic_numbers": list(potential.atomic_numbers),
        "e0s": potential.e0s.double().tolist(),
        "scale": float(potential.scale),
        "shift": potential.shift.tolist(),
        "cutoff": potential.cutoff,
        "avg_num_neighbors": float(avg_num_neighbors),
        "dtype": str(next(potential.parameters()).dtype).removeprefix("torch."),
    }


def save_model(path: str | Path, potential: Potential, model_config: dict[str, Any], avg_num_neighbors: float) -> Path:
    """Write the deployable model atomically (temporary file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = model_metadata(potential, model_config, avg_num_neighbors)
    payload["state_dict"] = {k: v.detach().cpu() for k, v in potential.state_dict().items()}
    return _save_atomically(payload, path)


def _save_atomically(payload: dict[str, Any], path: Path) -> Path:
    """``torch.save`` into a temporary name beside ``path``, then rename: no half-written file."""
    tmp = path.with_name(path.name + f".partial-{os.getpid()}")
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def read_model_file(path: str | Path) -> dict[str, Any]:
    """A model file's payload, read safely (``weights_only=True``) and upgraded to the current
    format: its metadata (:func:`model_metadata`) and ``state_dict``.

    Raises:
        FileNotFoundError: no such file.
        ValueError: one line naming the file: not loadable, not an mlip model file, or of a
            newer format than this mlip reads.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file {path} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling refusal is a user error
        raise ValueError(f"{path} is not a loadable mlip model file: {err}") from err
    if isinstance(payload, dict) and payload.get("format") == COMMITTEE_FORMAT:
        raise ValueError(f"{path} is a committee of {len(payload.get('members', []))} models, not "
                         "one model: the engine (ForceField, calculator, md, eval) takes it")
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{path} is not an mlip model file (format tag missing)")
    version = payload.get("format_version")
    if not isinstance(version, int) or version < 1:
        raise ValueError(f"{path}: unknown mlip model format version {version!r}")
    if version > FORMAT_VERSION:
        raise ValueError(
            f"{path} has format version {version}; this mlip reads <= {FORMAT_VERSION}: upgrade mlip"
        )
    state = payload["state_dict"]
    if version < 2:
        state = _upgrade_v1(state)
    if version < 3:
        state = _upgrade_v2(payload, state)
    payload["state_dict"] = _upgrade_fields(payload, state)
    return payload


def load_model(path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None) -> Potential:
    """Load a model file safely (``weights_only=True``) and rebuild the Potential.

    Args:
        path: the ``.pt`` file written by :func:`save_model` (or by ``mlip train``).
        device: where to put the model.
        dtype: float32/float64; default: the dtype it was saved in.
    """
    payload = read_model_file(path)
    return _build(payload, device, dtype)


def _build(payload: dict[str, Any], device: str | torch.device, dtype: torch.dtype | None) -> Potential:
    statistics = ModelStatistics.from_dict(payload)  # the core's radii come with the state
    with torch.random.fork_rng(devices=[]):  # the throw-away initial weights draw numbers
        potential = build_model(payload["model_config"], statistics, prepare=False)
    # Loaded at the saved precision (loading float64 weights into float32 parameters would
    # round them), then cast.
    potential.load_state_dict(payload["state_dict"])
    return potential.to(device=device, dtype=dtype).eval()


COMMITTEE_FORMAT = "mlip-committee"


def save_committee(path: str | Path, members: list[str | Path], alpha: tuple[float, float] = (1.0, 1.0),
                   info: dict[str, Any] | None = None) -> Path:
    """Write a committee file: the member model files' payloads in one file (each loadable
    with ``weights_only=True``) and the committee's calibration (alpha_E, alpha_F: the
    factors on its standard deviations), written atomically.

    Raises:
        ValueError: fewer than two members, or members with different elements or cutoffs.
    """
    payloads = [read_model_file(m) for m in members]
    if len(payloads) < 2:
        raise ValueError("a committee needs at least two member models")
    for m, p in zip(members[1:], payloads[1:], strict=True):
        if p["atomic_numbers"] != payloads[0]["atomic_numbers"] or p["cutoff"] != payloads[0]["cutoff"]:
            raise ValueError(f"{m}: elements {p['atomic_numbers']} / cutoff {p['cutoff']} differ from "
                             f"{members[0]}'s: committee members share elements and cutoff")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": COMMITTEE_FORMAT, "format_version": 1, "mlip_version": __version__,
               "members": payloads, "alpha": [float(a) for a in alpha], "info": info or {}}
    return _save_atomically(payload, path)


def is_committee_file(path: str | Path) -> bool:
    """Whether ``path`` is a committee file (read safely)."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - not loadable: not a committee file
        return False
    return isinstance(payload, dict) and payload.get("format") == COMMITTEE_FORMAT


def load_committee(path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
                   ) -> tuple[list[Potential], tuple[float, float]]:
    """The members of a committee file (:func:`save_committee`) and its calibration."""
    path = Path(path)
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != COMMITTEE_FORMAT:
        raise ValueError(f"{path} is not an mlip committee file")
    if payload.get("format_version") != 1:
        raise ValueError(f"{path}: unknown committee format version {payload.get('format_version')!r}")
    members = []
    for k, member in enumerate(payload["members"]):
        if not isinstance(member, dict) or member.get("format") != FORMAT:
            raise ValueError(f"{path}: member {k} is not an mlip model")
        members.append(_build(member, device, dtype))
    alpha = payload.get("alpha", [1.0, 1.0])
    return members, (float(alpha[0]), float(alpha[1]))
