"""Write a model file with an OLD mlip and record that old code's own predictions.

Run it with ``import mlip`` resolving to a checkout of the old commit, e.g. for format 1::

    git worktree add --detach /tmp/mlip_v1 0e2f84a^
    PYTHONPATH=/tmp/mlip_v1 python tools/make_legacy_models.py tests/calculator/data
    git worktree remove /tmp/mlip_v1

(format 1 builds graphs with torch_geometric: put an install of it on PYTHONPATH too). The
script uses only what formats 1 and 2 share (``build_potential``, ``save_model``,
``atoms_to_batch``); it writes ``model_v<format>.pt`` and adds that model's energies and
forces to ``legacy_models.json``, which tests/calculator/test_calculator.py compares with
what today's loader gives. Not imported by the tests or by mlip.
"""

from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path

import ase.io
import torch
from ase.build import bulk

import mlip
from mlip.data import keys
from mlip.graph.build import atoms_to_batch
from mlip.model.build import build_potential
from mlip.model.io import FORMAT_VERSION, save_model

ACAC = Path(__file__).resolve().parents[1] / "data" / "acac"
FRAMES = [0, 1]  # indices in data/acac/train_300K.xyz
CU_E0 = -3.5  # eV, an arbitrary reference: Cu has no entry in isolated_atoms.xyz
BACKBONE = {
    "class_path": "mlip.backbones.equivariant.EquivariantBackbone",
    "init_args": {"channels": 8, "lmax_hidden": 1, "lmax_sh": 1, "correlation": 2,
                  "num_layers": 2, "radial_hidden": 16,
                  "tensor_product": "mlip.ops.tp.cg.CGTensorProduct"},
}


def structures() -> list[tuple[str, int | None, ase.Atoms]]:
    """(name, index in train_300K.xyz or None, atoms): the acac frames and one rattled
    periodic Cu cell (4 atoms, cell 3.6 Å < cutoff)."""
    acac = ase.io.read(ACAC / "train_300K.xyz", ":")
    cu = bulk("Cu", "fcc", a=3.6, cubic=True)
    cu.rattle(stdev=0.05, seed=0)
    return [(f"acac {k}", k, acac[k]) for k in FRAMES] + [("Cu fcc", None, cu)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    args = parser.parse_args()
    source = Path(mlip.__file__).resolve().parents[1]
    commit = subprocess.run(["git", "-C", str(source), "rev-parse", "HEAD"], check=True,
                            capture_output=True, text=True).stdout.strip()
    print(f"mlip from {mlip.__file__} (commit {commit}), format {FORMAT_VERSION}")

    e0 = {a.numbers[0]: a.get_potential_energy()
          for a in ase.io.read(ACAC / "isolated_atoms.xyz", ":")}
    torch.manual_seed(0)
    config = {"backbone": BACKBONE}
    if FORMAT_VERSION >= 3:  # format 3 names its energy expression: the per-element shift
        config.update({"baseline": "per_element", "learn_shift": True})  # (noised below)
    model = build_potential(config, [1, 6, 8, 29], [e0[1], e0[6], e0[8], CU_E0],
                            0.8, -4.8, 5.0, 12.0).to(torch.float64)
    with torch.no_grad():  # break the symmetric initial values (e.g. the all-ones product weights)
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model.eval()
    path = save_model(args.out_dir / f"model_v{FORMAT_VERSION}.pt", model, config, 12.0)

    records = []
    for name, frame, atoms in structures():
        out = model(atoms_to_batch([atoms], model.cutoff, dtype=torch.float64))
        records.append({
            "name": name,
            "frame": frame,
            "numbers": atoms.numbers.tolist(),
            "positions": atoms.positions.tolist(),
            "cell": atoms.cell.array.tolist(),
            "pbc": atoms.pbc.tolist(),
            "energy": float(out[keys.ENERGY][0].detach()),
            "forces": out[keys.FORCES].detach().tolist(),
        })
        print(f"{name}: E = {records[-1]['energy']:.12f} eV")

    refs_path = args.out_dir / "legacy_models.json"
    refs = json.loads(refs_path.read_text(encoding="utf-8")) if refs_path.is_file() else {}
    refs.update({
        "units": {"energy": "eV", "forces": "eV/Å", "positions": "Å"},
        "acac_frames": {"file": "data/acac/train_300K.xyz", "indices": FRAMES},
    })
    refs.setdefault("models", {})[str(FORMAT_VERSION)] = {
        "file": path.name,
        "commit": commit,
        "torch": torch.__version__,
        "structures": records,
    }
    refs_path.write_text(json.dumps(refs, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {path} ({path.stat().st_size} bytes) and {refs_path}")


if __name__ == "__main__":
    main()
