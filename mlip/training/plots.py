"""Parity plots (predicted vs reference) for evaluation results; needs matplotlib."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def parity_plots(result: dict[str, Any], folder: Path) -> list[Path]:
    """Write <file-stem>_energy.png and <file-stem>_forces.png; returns the paths written."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as err:  # pragma: no cover - optional extra
        raise ImportError("parity plots need matplotlib: pip install 'mlip[plots]'") from err
    pred = result["predictions"]
    folder.mkdir(parents=True, exist_ok=True)
    stem = Path(result["file"]).stem
    written = []
    panels = [("energy", pred["e_ref"] / pred["n"], pred["e_pred"] / pred["n"],
               "energy per atom [eV/atom]", result.get("e_mae_per_atom"), "meV/atom"),
              ("forces", pred["f_ref"].ravel(), pred["f_pred"].ravel(),
               "force component [eV/Å]", result.get("f_mae"), "meV/Å")]
    for name, ref, prd, label, mae, unit in panels:
        if ref.size == 0:
            continue
        fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=120)
        ax.scatter(ref, prd, s=4, alpha=0.5, edgecolors="none")
        lo, hi = float(np.min([ref.min(), prd.min()])), float(np.max([ref.max(), prd.max()]))
        ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
        ax.set_xlabel(f"reference {label}")
        ax.set_ylabel(f"predicted {label}")
        title = f"{stem}: {name}"
        if mae is not None:
            title += f" (MAE {mae:.2f} {unit})"
        ax.set_title(title, fontsize=9)
        fig.tight_layout()
        path = folder / f"{stem}_{name}.png"
        fig.savefig(path)
        plt.close(fig)
        written.append(path)
    return written
