"""Held-out evaluation of a model on data files (any ASE-readable file or LMDB): an adapter
over the inference engine (:class:`mlip.inference.engine.ForceField`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from mlip.data import keys
from mlip.data.open import ensure_lmdb
from mlip.data.shards import open_dataset
from mlip.graph.build import GraphDataset, as_batch_dict, collate
from mlip.inference.engine import ForceField
from mlip.model.potential import Potential
from mlip.training.metrics import metric_sums, summarize


def evaluate_file(
    model: ForceField | Potential,
    path: str | Path,
    batch_size: int = 20,
    key_mapping: dict[str, str | None] | None = None,
    keep_predictions: bool = False,
    progress: bool = True,
    compile: bool = False,
    uncertainty: bool = False,
) -> dict[str, Any]:
    """Errors of a model on one file, batch by batch through the engine.

    Args:
        model: the engine, or a Potential (run where it is; ``compile``: through
            AOTInductor packages, one per batch size, cached; see :mod:`mlip.inference.compiled`).

    Returns:
        dict with 'file', 'structures', 'atoms' and e_mae/e_rmse [meV],
        e_mae_per_atom/e_rmse_per_atom [meV/atom], f_mae/f_rmse [meV/Å] (when the file has
        forces), s_mae/s_rmse [meV/Å^3] (when it has stress); with ``keep_predictions`` also
        'predictions' (numpy arrays of reference and predicted energies and forces); with
        ``uncertainty`` (a model with an uncertainty, or a committee) 'uncertainty' (the
        metrics of :func:`mlip.training.calibration.metrics`) and 'calibration' (the arrays
        of :func:`mlip.training.calibration.collect`).
    """
    from mlip.training import calibration

    if isinstance(model, ForceField):
        engine = model
    else:
        param = next(model.parameters())
        engine = ForceField(model, device=param.device, dtype=param.dtype, compile=compile)
    dataset = open_dataset(ensure_lmdb(path, key_mapping))
    has_stress = bool(dataset.header.get("labels", {}).get("stress", 0))
    unknown = sorted(set(dataset.header.get("elements", [])) - set(engine.atomic_numbers))
    if unknown:  # one line naming element and file, not an index error deep in the model
        engine.check_elements(unknown, where=str(path))
    loader = DataLoader(
        GraphDataset(dataset, engine.cutoff, dtype=engine.dtype), batch_size=batch_size,
        collate_fn=collate,
        generator=torch.Generator(),  # its own: iterating never draws from the global RNG
    )
    sums = None
    atoms = 0
    record = calibration.new_record() if uncertainty else None
    kept: dict[str, list[np.ndarray]] = {k: [] for k in
                                         ("e_ref", "e_pred", "n", "f_ref", "f_pred")}
    for batch in tqdm(loader, desc=f"eval {Path(path).name}", disable=not progress, leave=False):
        data = {k: v.to(engine.device) for k, v in as_batch_dict(batch).items()}
        out = {k: v.detach() for k, v in engine.evaluate(data, has_stress).items()}
        s = metric_sums(out, data)
        sums = s if sums is None else sums + s
        atoms += int(data[keys.NUM_ATOMS].sum())
        if record is not None:
            calibration.accumulate(record, out, data)
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
    if record is not None:
        result["calibration"] = calibration.finish(record)
        result["uncertainty"] = calibration.metrics(result["calibration"])
    return result


def evaluate(
    model: ForceField | Potential | str | Path,
    path: str | Path,
    batch_size: int = 20,
    key_mapping: dict[str, str | None] | None = None,
    device: str = "cpu",
) -> dict[str, Any]:
    """Errors of a model (object or model file) on one data file: :func:`evaluate_file`.

    >>> # mlip.evaluate("checkpoints/quickstart/model.pt", "data/acac/test_MD_300K.xyz")["f_mae"]
    """
    engine = model if isinstance(model, ForceField) else ForceField(model, device=device)
    return evaluate_file(engine, path, batch_size, key_mapping, progress=False)


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

    :func:`mlip.testing.physics.symmetry_errors` (the one definition) for each structure
    under ``rotations`` Haar-random rotations R and, separately, improper rotations -R.
    Exact backbones give float noise; approximate ones (CP) and learned ones (TransIP) their
    real error.

    Returns:
        dict with, for "rotation" and "reflection": energy_mean/energy_max [meV/atom] and
        forces_mean/forces_max (relative), and the number of structures.
    """
    import ase

    from mlip.ops.rotations import random_rotations
    from mlip.testing.physics import symmetry_errors

    g = torch.Generator().manual_seed(seed)
    dataset = open_dataset(ensure_lmdb(path, key_mapping))
    count = min(max_structures, len(dataset))
    result: dict[str, Any] = {"file": str(path), "rotations": rotations}
    for kind, reflect in (("rotation", False), ("reflection", True)):
        energy, forces = [], []
        for k in range(count):
            s = dataset[k]
            atoms = ase.Atoms(numbers=s.numbers, positions=s.positions, cell=s.cell, pbc=s.pbc)
            model.check_elements(s.numbers, where=s.where())
            err = symmetry_errors(model, atoms, random_rotations(rotations, g, reflect=reflect).numpy())
            energy.append(1000 * err["energy"])
            forces.append(err["forces"])
        e, f = np.concatenate(energy), np.concatenate(forces)
        result[kind] = {"energy_mean": float(e.mean()), "energy_max": float(e.max()),
                        "forces_mean": float(f.mean()), "forces_max": float(f.max()),
                        "structures": count}
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
