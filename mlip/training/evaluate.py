"""Held-out evaluation of a Potential on data files (any ASE-readable file or LMDB)."""

from __future__ import annotations

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


