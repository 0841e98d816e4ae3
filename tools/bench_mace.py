"""MACE baseline on mlip's own split: train mace-torch in its own venv, evaluate test files.

mace-torch pins e3nn 0.4.4, so it lives in a separate venv (``--mace-venv`` or
$MACE_VENV). The training split is the one ``mlip train`` uses (``split_indices`` with the
same ``--val-size`` and ``--seed``), written as extxyz with REF_energy/REF_forces; the
hyperparameters are those of ../shared/BASELINES.md (32x0e + 32x1o, correlation 3, two
interactions, r_max 5 Å, 8 Bessel functions, float32, batch 5, lr 0.01, AMSGrad, EMA 0.99,
weights 1:100 then 1000:100 for the last quarter of the epochs, 1 thread):

    python tools/bench_mace.py --mace-venv ~/mace-venv --train data/acac/train_300K.xyz \
        --e0s data/acac/isolated_atoms.xyz --test data/acac/test_MD_300K.xyz \
        data/acac/test_MD_600K.xyz --epochs 100 --out checkpoints/mace_bench

Errors are total-energy MAE/RMSE in meV and force-component MAE/RMSE in meV/Å, computed
here from the reference files (not MACE's own log), written to <out>/bench.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import time
from pathlib import Path

import ase.io
import numpy as np

from mlip.data.lmdb import split_indices


def write_ref(frames: list, path: Path) -> None:
    """extxyz with REF_energy / REF_forces and no calculator (MACE's default keys)."""
    out = []
    for a in frames:
        b = a.copy()
        b.calc = None
        b.info = {k: v for k, v in a.info.items() if k not in ("energy", "free_energy")}
        b.info["REF_energy"] = a.get_potential_energy()
        b.arrays.pop("forces", None)
        b.arrays["REF_forces"] = a.get_forces()
        out.append(b)
    ase.io.write(path, out, format="extxyz")


def errors(ref: list, pred: list) -> dict[str, float]:
    de = np.array([p.info["MACE_energy"] - r.get_potential_energy()
                   for r, p in zip(ref, pred, strict=True)]) * 1e3
    df = np.concatenate([(p.arrays["MACE_forces"] - r.get_forces()).ravel()
                         for r, p in zip(ref, pred, strict=True)]) * 1e3
    return {"e_mae": float(np.abs(de).mean()), "e_rmse": float(np.sqrt((de**2).mean())),
            "f_mae": float(np.abs(df).mean()), "f_rmse": float(np.sqrt((df**2).mean())),
            "frames": len(ref)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mace-venv", default=os.environ.get("MACE_VENV"))
    parser.add_argument("--train", required=True)
    parser.add_argument("--e0s", required=True, help="extxyz of isolated atoms")
    parser.add_argument("--test", nargs="*", default=[])
    parser.add_argument("--val-size", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="checkpoints/mace_bench")
    args = parser.parse_args()
    if not args.mace_venv:
        parser.error("give --mace-venv (or set $MACE_VENV): mace-torch runs in its own venv")
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)

    frames = ase.io.read(args.train, ":")
    train_idx, val_idx = split_indices(len(frames), val_size=args.val_size, seed=args.seed)
    write_ref([frames[i] for i in train_idx], out / "train.xyz")
    write_ref([frames[i] for i in val_idx], out / "valid.xyz")
    e0s = {int(a.numbers[0]): float(a.get_potential_energy()) for a in ase.io.read(args.e0s, ":")}

    swa = max(1, round(0.75 * args.epochs))
    cmd = [f"{args.mace_venv}/bin/mace_run_train", "--name", "mace", "--seed", str(args.seed),
           "--train_file", str(out / "train.xyz"), "--valid_file", str(out / "valid.xyz"),
           "--E0s", repr(e0s), "--model", "MACE", "--hidden_irreps", "32x0e + 32x1o",
           "--correlation", "3", "--num_interactions", "2", "--r_max", "5.0",
           "--num_radial_basis", "8", "--default_dtype", "float32", "--device", "cpu",
           "--batch_size", "5", "--valid_batch_size", "25", "--lr", "0.01", "--amsgrad",
           "--ema", "--ema_decay", "0.99", "--energy_weight", "1.0", "--forces_weight", "100.0",
           "--swa", "--start_swa", str(swa), "--swa_energy_weight", "1000.0",
           "--swa_forces_weight", "100.0", "--max_num_epochs", str(args.epochs),
           "--energy_key", "REF_energy", "--forces_key", "REF_forces",
           "--work_dir", str(out), "--restart_latest"]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    t0 = time.time()
    subprocess.run(cmd, check=True, env=env, cwd=out)
    wall = time.time() - t0
    model = out / "mace_stagetwo.model"  # the stage-two (SWA) model, as in BASELINES.md
    if not model.exists():
        model = out / "mace.model"

    results = []
    for test in args.test:
        pred_path = out / f"pred_{Path(test).stem}.xyz"
        subprocess.run([f"{args.mace_venv}/bin/mace_eval_configs", "--configs", str(Path(test).resolve()),
                        "--model", str(model), "--output", str(pred_path), "--default_dtype",
                        "float32", "--device", "cpu", "--batch_size", "25"],
                       check=True, env=env, capture_output=True)
        results.append({"file": test, **errors(ase.io.read(test, ":"), ase.io.read(pred_path, ":"))})
    summary = {"model": str(model), "epochs": args.epochs, "train_seconds": wall,
               "threads": args.threads, "train_structures": len(train_idx), "test": results}
    (out / "bench.json").write_text(json.dumps(summary, indent=2))
    print(f"MACE: {args.epochs} epochs in {wall / 60:.1f} min, {args.threads} thread(s)")
    print(f"{'file':<20}{'E MAE':>9}{'E RMSE':>9}{'F MAE':>9}{'F RMSE':>9}")
    for r in results:
        print(f"{Path(r['file']).name:<20}{r['e_mae']:>9.2f}{r['e_rmse']:>9.2f}"
              f"{r['f_mae']:>9.2f}{r['f_rmse']:>9.2f}")
    print(f"wrote {out / 'bench.json'}")


if __name__ == "__main__":
    main()
