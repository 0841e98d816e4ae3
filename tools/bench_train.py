"""Training benchmark: train with a config for a fixed wall time, evaluate on test files.

Reports parameters, epochs, wall time, threads, training throughput (structures/s) and
energy/force MAE/RMSE per test file, as one table and a JSON file.

    python tools/bench_train.py --config configs/acac_bench_cg.yaml --threads 1 \
        --max-time 00:00:46:00 --run-name bench_cg

Run it alone on the machine: timings are wall-clock.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from mlip.training.config import load_config
from mlip.training.run import train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--max-time", default=None, help="DD:HH:MM:SS wall-time budget")
    parser.add_argument("--max-epochs", type=int, default=None)
    parser.add_argument("--run-name", default=None)
    parser.add_argument("--out", default=None, help="JSON output (default: <run>/bench.json)")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    overrides = list(args.overrides) + [f"training.trainer.threads={args.threads}",
                                        "training.trainer.enable_progress_bar=false"]
    if args.max_time:
        overrides.append(f"training.schedule.max_time={args.max_time}")
        if args.max_epochs is None:
            overrides.append("training.schedule.max_epochs=100000")
    if args.max_epochs is not None:
        overrides.append(f"training.schedule.max_epochs={args.max_epochs}")
    if args.run_name:
        overrides.append(f"run_name={args.run_name}")
    config = load_config(args.config, overrides)
    torch.set_num_threads(args.threads)
    t0 = time.time()
    summary = train(config)
    summary["wall_seconds"] = time.time() - t0
    summary["config"] = args.config
    summary["overrides"] = overrides
    out = Path(args.out) if args.out else Path(summary["run_dir"]) / "bench.json"
    out.write_text(json.dumps(summary, indent=2))
    print(f"\n{'file':<20}{'E MAE':>9}{'E RMSE':>9}{'F MAE':>9}{'F RMSE':>9}")
    for r in summary["test"]:
        print(f"{Path(r['file']).name:<20}{r['e_mae']:>9.2f}{r['e_rmse']:>9.2f}"
              f"{r['f_mae']:>9.2f}{r['f_rmse']:>9.2f}")
    val = summary["last_metrics"].get("val", {})
    print(f"validation: E MAE {val.get('e_mae', float('nan')):.2f} meV, "
          f"F MAE {val.get('f_mae', float('nan')):.2f} meV/Å")
    print(f"parameters {summary['parameters']:,}, epochs {summary['epochs']}, "
          f"fit {summary['fit_seconds']:.0f} s, wall {summary['wall_seconds']:.0f} s, "
          f"threads {args.threads}, {summary['train_structures_per_second']:.1f} train structures/s")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
