"""How well predicted uncertainties match actual errors: the metrics of ``mlip eval
--uncertainty``, the committee's calibration factors and the calibration plot.

Conventions (see :mod:`mlip.model.uncertainty`): ENERGY_UNCERTAINTY sigma_E predicts the
energy error (Gaussian, standard deviation sigma_E); FORCES_UNCERTAINTY u_i predicts the norm
of the atom's force error, u_i^2 ~ E|dF_i|^2, so each Cartesian component has standard
deviation u_i / sqrt(3).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mlip.data import keys
from mlip.model.uncertainty import scale_factor

LEVELS = np.linspace(0.01, 0.99, 99)  # central-interval probabilities of the calibration curve


def _ranks(x: np.ndarray) -> np.ndarray:
    """Average ranks (ties share the mean of their positions), 0-based."""
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x), dtype=np.float64)
    sorted_x = x[order]
    bounds = np.flatnonzero(np.diff(sorted_x)) + 1
    starts = np.concatenate([[0], bounds])
    ends = np.concatenate([bounds, [len(x)]])
    for a, b in zip(starts, ends, strict=True):
        ranks[order[a:b]] = 0.5 * (a + b - 1)
    return ranks


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman rank correlation of two 1-D arrays (Pearson correlation of their average
    ranks); nan when either is constant or has fewer than two entries.

    >>> round(spearman(np.array([1., 2., 3., 4.]), np.array([10., 20., 25., 100.])), 6)
    1.0
    """
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if len(x) < 2:
        return float("nan")
    rx, ry = _ranks(x), _ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denominator = math.sqrt(float((rx * rx).sum() * (ry * ry).sum()))
    return float((rx * ry).sum() / denominator) if denominator > 0 else float("nan")


def _normal_quantile(p: np.ndarray) -> np.ndarray:
    """Standard normal quantile (inverse CDF) through torch's erfinv."""
    return math.sqrt(2.0) * torch.special.erfinv(torch.as_tensor(2.0 * p - 1.0, dtype=torch.float64)).numpy()


def calibration_curve(errors: np.ndarray, sigmas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(expected, observed): for each central-interval probability p of :data:`LEVELS`, the
    fraction of errors inside +- z_p sigma (Gaussian: observed = expected when calibrated)."""
    z = np.abs(np.asarray(errors, dtype=np.float64)) / np.maximum(np.asarray(sigmas, dtype=np.float64), 1e-300)
    half_widths = _normal_quantile(0.5 + LEVELS / 2.0)
    observed = (z[None, :] <= half_widths[:, None]).mean(axis=1)
    return LEVELS.copy(), observed


def miscalibration_area(errors: np.ndarray, sigmas: np.ndarray) -> float:
    """Mean |observed - expected| over the calibration curve (the area between it and the
    diagonal; 0 calibrated, at most 0.5)."""
    expected, observed = calibration_curve(errors, sigmas)
    return float(np.mean(np.abs(observed - expected)))


def collect(engine: Any, batches: Iterable[dict[str, torch.Tensor]]) -> dict[str, np.ndarray]:
    """Errors and predicted uncertainties of an engine over labelled batches.

    Returns:
        numpy arrays: per structure ``e_err`` [eV] (signed), ``e_sigma`` [eV], ``f_rms_err``
        and ``f_rms_sigma`` (RMS over the structure's atoms of |dF_i| and u_i) [eV/Å], ``n``;
        per atom ``f_err`` (N, 3) [eV/Å] and ``f_sigma`` (u_i) [eV/Å]. Structures without
        an energy (force) label are left out of the energy (force) arrays.
    """
    kept = new_record()
    for data in batches:
        data = {k: v.to(engine.device) for k, v in data.items()}
        out = {k: v.detach() for k, v in engine.evaluate(data).items()}
        accumulate(kept, out, data)
    return finish(kept)


def new_record() -> dict[str, list[np.ndarray]]:
    """Empty lists for :func:`accumulate`."""
    return {k: [] for k in ("e_err", "e_sigma", "f_err", "f_sigma", "f_rms_err", "f_rms_sigma", "n")}


def finish(kept: dict[str, list[np.ndarray]]) -> dict[str, np.ndarray]:
    """The arrays of :func:`collect` from :func:`accumulate`'s lists."""
    return {k: np.concatenate(v) if v else np.zeros(0) for k, v in kept.items()}


def accumulate(kept: dict[str, list[np.ndarray]], out: dict[str, torch.Tensor],
               data: dict[str, torch.Tensor]) -> None:
    """Add one batch's errors and uncertainties (``out``: the engine's detached outputs)."""
    if keys.ENERGY_UNCERTAINTY not in out:
        raise ValueError("the model has no uncertainty: train it with training.uncertainty=llpr "
                         "or use a committee (mlip train --committee K)")
    batch, graphs = data[keys.BATCH], data[keys.CELL].shape[0]
    emask = data[keys.ENERGY_MASK].bool().cpu().numpy()
    e_err = (out[keys.ENERGY].double() - data[keys.ENERGY].double()).cpu().numpy()
    kept["e_err"].append(e_err[emask])
    kept["e_sigma"].append(out[keys.ENERGY_UNCERTAINTY].double().cpu().numpy()[emask])
    fmask = data[keys.FORCES_MASK].bool()
    err = out[keys.FORCES].double() - data[keys.FORCES].double()
    sigma = out[keys.FORCES_UNCERTAINTY].double()
    atoms = fmask[batch]
    kept["f_err"].append(err[atoms].cpu().numpy())
    kept["f_sigma"].append(sigma[atoms].cpu().numpy())
    counts = torch.zeros(graphs, dtype=torch.float64, device=err.device).index_add_(
        0, batch, torch.ones_like(sigma))
    rms_err = torch.zeros_like(counts).index_add_(0, batch, (err ** 2).sum(-1)).div(counts).sqrt()
    rms_sigma = torch.zeros_like(counts).index_add_(0, batch, sigma ** 2).div(counts).sqrt()
    kept["f_rms_err"].append(rms_err[fmask].cpu().numpy())
    kept["f_rms_sigma"].append(rms_sigma[fmask].cpu().numpy())
    kept["n"].append(data[keys.NUM_ATOMS].cpu().numpy())


def metrics(c: dict[str, np.ndarray]) -> dict[str, float]:
    """The calibration metrics of :func:`collect`'s arrays: Spearman rank correlations
    between predicted uncertainty and actual error (per structure energy, per atom force,
    per structure force RMS), miscalibration areas (energy; force components with sigma
    u_i / sqrt(3)), and the ratio of predicted to actual RMS error (1 when calibrated
    on average)."""
    f_norm = np.linalg.norm(c["f_err"], axis=-1) if c["f_err"].size else np.zeros(0)
    comp_sigma = np.repeat(c["f_sigma"] / math.sqrt(3.0), 3)
    out = {
        "spearman_energy": spearman(np.abs(c["e_err"]), c["e_sigma"]),
        "spearman_forces_atom": spearman(f_norm, c["f_sigma"]),
        "spearman_forces_structure": spearman(c["f_rms_err"], c["f_rms_sigma"]),
        "miscalibration_energy": miscalibration_area(c["e_err"], c["e_sigma"]) if c["e_err"].size else float("nan"),
        "miscalibration_forces": (miscalibration_area(c["f_err"].ravel(), comp_sigma)
                                  if c["f_err"].size else float("nan")),
    }
    if c["e_err"].size:
        out["rms_ratio_energy"] = float(np.sqrt(np.mean(c["e_sigma"] ** 2) / max(np.mean(c["e_err"] ** 2), 1e-300)))
    if f_norm.size:
        out["rms_ratio_forces"] = float(np.sqrt(np.mean(c["f_sigma"] ** 2) / max(np.mean(f_norm ** 2), 1e-300)))
    return out


def calibrate_committee(engine: Any, batches: Iterable[dict[str, torch.Tensor]]) -> tuple[float, float]:
    """(alpha_E, alpha_F) of a committee engine from labelled (validation) batches:
    alpha^2 = mean(error^2 / std^2) (:func:`mlip.model.uncertainty.scale_factor`). The
    engine's own factors are ignored (set to 1 during the pass) and left as they were."""
    before = engine.committee_alpha
    engine.committee_alpha = (1.0, 1.0)
    try:
        c = collect(engine, batches)
    finally:
        engine.committee_alpha = before
    f_norm2 = (c["f_err"] ** 2).sum(-1)
    return scale_factor(c["e_err"] ** 2, c["e_sigma"] ** 2), scale_factor(f_norm2, c["f_sigma"] ** 2)


def format_metrics(results: list[dict[str, Any]]) -> str:
    """A table of the calibration metrics of several files."""
    cols = [("spearman_energy", "rho E"), ("spearman_forces_structure", "rho F/str"),
            ("spearman_forces_atom", "rho F/atom"), ("miscalibration_energy", "miscal E"),
            ("miscalibration_forces", "miscal F"), ("rms_ratio_forces", "u/err F")]
    name_w = max([len(Path(r["file"]).name) for r in results] + [4])
    head = f"{'file':<{name_w}}" + "".join(f"{c[1]:>12}" for c in cols)
    lines = [head, "-" * len(head)]
    for r in results:
        u = r.get("uncertainty", {})
        lines.append(f"{Path(r['file']).name:<{name_w}}"
                     + "".join(f"{u[k]:>12.3f}" if k in u else f"{'-':>12}" for k, _ in cols))
    lines.append("rho: Spearman rank correlation of predicted uncertainty and actual error (per "
                 "structure E, per structure force RMS, per atom |dF|); miscal: miscalibration "
                 "area (0 = calibrated); u/err: predicted over actual RMS force error")
    return "\n".join(lines)


def calibration_plot(c: dict[str, np.ndarray], path: Path, title: str) -> Path:
    """A PNG with the calibration curves (energy, force components) and the per-structure
    force RMS error against its predicted uncertainty."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as err:  # pragma: no cover - optional extra
        raise ImportError("calibration plots need matplotlib: pip install 'mlip[plots]'") from err
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 4.2), dpi=120)
    if c["e_err"].size:
        left.plot(*calibration_curve(c["e_err"], c["e_sigma"]), label="energy")
    if c["f_err"].size:
        left.plot(*calibration_curve(c["f_err"].ravel(), np.repeat(c["f_sigma"] / math.sqrt(3.0), 3)),
                  label="force components")
    left.plot([0, 1], [0, 1], "k--", lw=0.8)
    left.set_xlabel("expected fraction inside the interval")
    left.set_ylabel("observed fraction")
    left.legend(fontsize=8)
    left.set_title("calibration", fontsize=9)
    right.loglog(1000 * c["f_rms_sigma"], 1000 * c["f_rms_err"], ".", ms=3, alpha=0.6)
    if c["f_rms_err"].size:
        lo = 1000 * min(c["f_rms_sigma"].min(), c["f_rms_err"].min())
        hi = 1000 * max(c["f_rms_sigma"].max(), c["f_rms_err"].max())
        right.plot([lo, hi], [lo, hi], "k--", lw=0.8)
    from matplotlib.ticker import NullFormatter

    for axis in (right.xaxis, right.yaxis):
        axis.set_minor_formatter(NullFormatter())  # decade labels only: no overlapping minor ones
    right.set_xlabel("predicted force RMS error [meV/Å]")
    right.set_ylabel("actual force RMS error [meV/Å]")
    right.set_title(f"per structure (Spearman {spearman(c['f_rms_err'], c['f_rms_sigma']):.2f})", fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
