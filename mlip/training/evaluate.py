"""Held-out evaluation of a Potential on data files (any ASE-readable file or LMDB)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from mlip.data import keys
from mlip.data.lmdb import LmdbDataset
from mlip.graph.build import GraphDataset, batch_to_dict, collate
from mlip.model.potential import Potential
from mlip.training.datamodule import ensure_lmdb
from mlip.training.metrics import metric_sums, summarize


def evaluate_file(
    model: Potential,
    path: str | Path,
    batch_size: int = 20,
    key_mapping: dict[str, str | None] | None = None,
    keep_predictions: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Errors of ``model`` on one file.

    Returns:
        dict with 'file', 'structures', 'atoms' and e_mae/e_rmse [meV],
        e_mae_per_atom/e_rmse_per_atom [meV/atom], f_mae/f_rmse [meV/Å] (when the file has
        forces), s_mae/s_rmse [meV/Å^3] (when it has stress); with ``keep_predictions`` also
        'predictions' (numpy arrays of reference and predicted energies and forces).
    """
    param = next(model.parameters())
    dataset = LmdbDataset(ensure_lmdb(path, key_mapping))
    periodic = bool(dataset.header.get("labels", {}).get("stress", 0))
    loader = DataLoader(
        GraphDataset(dataset, model.cutoff, dtype=param.dtype), batch_size=batch_size,
        collate_fn=collate,
    )
    sums = None
    atoms = 0
    kept: dict[str, list[np.ndarray]] = {k: [] for k in
                                         ("e_ref", "e_pred", "n", "f_ref", "f_pred")}
    for batch in tqdm(loader, desc=f"eval {Path(path).name}", disable=not progress, leave=False):
        data = {k: v.to(param.device) for k, v in batch_to_dict(batch).items()}
        out = model(data, compute_forces=True, compute_stress=periodic)
        out = {k: v.detach() for k, v in out.items()}
        s = metric_sums(out, data)
        sums = s if sums is None else sums + s
        atoms += int(data[keys.NUM_ATOMS].sum())
        if keep_predictions:
            kept["e_ref"].append(data[keys.ENERGY].cpu().double().numpy())
            kept["e_pred"].append(out[keys.ENERGY].cpu().double().numpy())
            kept["n"].append(data[keys.NUM_ATOMS].cpu().numpy())
            fmask = data[keys.FORCES_MASK][data[keys.BATCH]].bool().cpu().numpy()
            kept["f_ref"].append(data[keys.FORCES].cpu().double().numpy()[fmask])
            kept["f_pred"].append(out[keys.FORCES].cpu().double().numpy()[fmask])
    result: dict[str, Any] = {"file": str(path), "structures": len(dataset), "atoms": atoms}
    if sums is not None:
        result.update(summarize(sums))
    if keep_predictions:
        result["predictions"] = {k: np.concatenate(v) if v else np.zeros(0) for k, v in kept.items()}
    return result


def format_table(results: list[dict[str, Any]]) -> str:
    """A fixed-width table of evaluation results (missing metrics shown as '-')."""
    cols = [("structures", "N", "d"), ("e_mae", "E MAE", ".2f"), ("e_rmse", "E RMSE", ".2f"),
            ("e_mae_per_atom", "E MAE/at", ".3f"), ("f_mae", "F MAE", ".2f"),
            ("f_rmse", "F RMSE", ".2f"), ("s_mae", "S MAE", ".3f")]
    name_w = max([len(Path(r["file"]).name) for r in results] + [4])
    head = f"{'file':<{name_w}}" + "".join(f"{c[1]:>11}" for c in cols)
    lines = [head, "-" * len(head)]
    for r in results:
        cells = "".join(
            f"{format(r[k], fmt):>11}" if k in r else f"{'-':>11}" for k, _, fmt in cols
        )
        lines.append(f"{Path(r['file']).name:<{name_w}}{cells}")
    lines.append("units: E meV (per structure) / meV/atom, F meV/Å, S meV/Å^3")
    return "\n".join(lines)




def equivariance_errors(
    model: Potential,
    path: str | Path,
    rotations: int = 10,
    max_structures: int = 20,
    seed: int = 0,
    key_mapping: dict[str, str | None] | None = None,
) -> dict[str, Any]:
    """Measured symmetry error of ``model`` on the first structures of a data file.

    For each structure and each of ``rotations`` Haar-random rotations R (and, separately,
    improper rotations -R): the energy error |E(Rx) - E(x)| per atom [meV/atom] and the force
    error |F(Rx) - R F(x)| / |F(x)| (Frobenius norms, relative). Exact backbones give float
    noise; approximate ones (CP) and learned ones (TransIP) their real error.

    Returns:
        dict with, for "rotation" and "reflection": energy_mean/energy_max [meV/atom] and
        forces_mean/forces_max (relative).
    """
    from mlip.graph.build import structure_to_data
    from mlip.testing.physics import random_rotation

    param = next(model.parameters())
    rng = np.random.default_rng(seed)
    errors: dict[str, dict[str, list[float]]] = {
        kind: {"energy": [], "forces": []} for kind in ("rotation", "reflection")
    }
    dataset = LmdbDataset(ensure_lmdb(path, key_mapping))
    for k in range(min(max_structures, len(dataset))):
        structure = dataset[k]
        for kind, reflect in (("rotation", False), ("reflection", True)):
            mats = [random_rotation(rng, reflect) for _ in range(rotations)]
            copies = [structure]
            for r in mats:
                s = copy.deepcopy(structure)
                s.positions = structure.positions @ r.T
                s.cell = structure.cell @ r.T
                copies.append(s)
            batch = collate([structure_to_data(s, model.cutoff, param.dtype) for s in copies])
            data = {key: v.to(param.device) for key, v in batch_to_dict(batch).items()}
            out = model(data, compute_forces=True)
            energy = out[keys.ENERGY].detach().cpu().double().numpy()
            forces = out[keys.FORCES].detach().cpu().double().numpy().reshape(len(copies), -1, 3)
            n = structure.num_atoms
            ref_norm = max(np.linalg.norm(forces[0]), 1e-12)
            for i, r in enumerate(mats, start=1):
                errors[kind]["energy"].append(1000 * abs(energy[i] - energy[0]) / n)
                errors[kind]["forces"].append(np.linalg.norm(forces[i] - forces[0] @ r.T) / ref_norm)
    result: dict[str, Any] = {"file": str(path), "rotations": rotations}
    for kind, vals in errors.items():
        result[kind] = {
            "energy_mean": float(np.mean(vals["energy"])), "energy_max": float(np.max(vals["energy"])),
            "forces_mean": float(np.mean(vals["forces"])), "forces_max": float(np.max(vals["forces"])),
            "structures": len(vals["energy"]) // max(rotations, 1),
        }
    return result


def format_equivariance(results: list[dict[str, Any]]) -> str:
    lines = [f"{'file':<24}{'symmetry':>11}{'E mean':>11}{'E max':>11}{'F mean':>11}{'F max':>11}"]
    for r in results:
        for kind in ("rotation", "reflection"):
            e = r[kind]
            lines.append(f"{Path(r['file']).name:<24}{kind:>11}{e['energy_mean']:>11.2e}"
                         f"{e['energy_max']:>11.2e}{e['forces_mean']:>11.2e}{e['forces_max']:>11.2e}")
    lines.append(f"E: |E(Rx) - E(x)| per atom [meV/atom]; F: |F(Rx) - R F(x)| / |F(x)|; "
                 f"{results[0]['rotations']} random rotations per structure")
    return "\n".join(lines)
