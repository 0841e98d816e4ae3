"""Fine-tuning benchmark: few frames of a new level of theory, from a pretrained model.

For each training-set size N (and seed), at the same wall-time budget per run:

* ``naive``: ``configs/finetune.yaml`` from the pretrained model (lr 1e-3, EMA 0.999, clip 1);
* ``replay``: the same plus ``data.replay`` (frames of the pretraining data, farthest points
  of the model's descriptors, pseudolabelled by the pretrained model, on their own readout
  head ``--replay-head``, the MACE multi-head recipe) at the published replay settings
  (lr 1e-4, EMA 0.9999; ``--replay-lr``, ``--replay-ema``); its new-level errors are the default head's, its hold-out errors
  the replay head's;
* ``scratch``: the scratch config (e.g. configs/acac_bench_gaunt.yaml) on the same N frames;

and once ``scratch_all``: the scratch config on every training frame. Every run uses the
same validation split (``--val-size`` frames of the training file, seeded) and budget.
Each model is scored on the ``--test`` files (the new level) and on the ``--holdout`` files
(the pretraining level: forgetting; forces only, since the energy reference moved with the
E0 refit), as is the pretrained model. Writes ``<out>/finetune.json`` and prints tables:

    python tools/bench_finetune.py --pretrained checkpoints/pretrain_xtb_gaunt/model.pt \\
        --train data/acac/train_300K.xyz --sizes 25 50 100 --minutes 10 \\
        --test data/acac/test_MD_300K.xyz data/acac/test_MD_600K.xyz \\
        --replay data/xtb_g2/train.xyz data/acac_xtb/train.xyz --replay-count 200 \\
        --holdout data/xtb_g2/test_frames.xyz data/acac_xtb/test.xyz \\
        --scratch-config configs/acac_bench_gaunt.yaml --out runs/bench_finetune

The extrapolation probes and MD stability of the resulting models are separate tools
(tools/bench_extrapolation.py, tools/bench_conservation.py) run on ``<out>/<run>/model.pt``.
Run it alone on the machine: every run is timed, and other load costs it epochs.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _minutes(m: float) -> str:
    total = int(round(m * 60))
    return f"00:{total // 3600:02d}:{total % 3600 // 60:02d}:{total % 60:02d}"


def run_train(config: str, overrides: list[str], log: Path, threads: int) -> dict:
    """``mlip train`` in a subprocess; its summary.json."""
    cmd = [sys.executable, "-m", "mlip", "train", "--config", config, "--overwrite",
           f"training.trainer.threads={threads}", "training.trainer.enable_progress_bar=false",
           *overrides]
    with open(log, "w") as fh:
        subprocess.run(cmd, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT, check=True)
    out = next(o.split("=", 1)[1] for o in overrides if o.startswith("output_dir="))
    name = next(o.split("=", 1)[1] for o in overrides if o.startswith("run_name="))
    return json.loads((Path(out) / name / "summary.json").read_text())


def score(model: str, files: list[str]) -> dict[str, dict]:
    """E/F errors of a model file on each file (mlip.training.evaluate)."""
    import mlip
    from mlip.model.potential import UnknownElementError

    out = {}
    for f in files:
        try:
            r = mlip.evaluate(model, f)
        except UnknownElementError:  # a scratch model knows only the new data's elements
            out[Path(f).name] = None
            continue
        out[Path(f).name] = {k: r.get(k) for k in ("e_mae", "e_rmse", "f_mae", "f_rmse")}
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pretrained", required=True)
    p.add_argument("--train", required=True, help="the new level's training file")
    p.add_argument("--sizes", type=int, nargs="+", default=[25, 50, 100])
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--minutes", type=float, default=10.0, help="wall time per run")
    p.add_argument("--val-size", type=int, default=50)
    p.add_argument("--test", nargs="+", required=True)
    p.add_argument("--holdout", nargs="+", default=[], help="pretraining-level hold-out files")
    p.add_argument("--replay", nargs="*", default=[], help="pretraining files to replay")
    p.add_argument("--replay-count", type=int, default=200)
    p.add_argument("--replay-weight", type=float, default=1.0)
    p.add_argument("--replay-lr", type=float, default=1e-4)
    p.add_argument("--replay-ema", type=float, default=0.9999)
    p.add_argument("--replay-head", default="pretrain",
                   help="the replayed frames' own head ('' for the data's head)")
    p.add_argument("--finetune-config", default="configs/finetune.yaml")
    p.add_argument("--scratch-config", required=True)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--only", nargs="*", default=None, help="run only these methods")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    budget = _minutes(args.minutes)
    common = [f"data.train={args.train}", f"data.val_size={args.val_size}",
              f"data.test=[{', '.join(args.test)}]", f"output_dir={out}",
              f"training.schedule.max_time={budget}"]
    methods = {
        "naive": (args.finetune_config, [f"model.init_from={args.pretrained}"]),
        "replay": (args.finetune_config, [
            f"model.init_from={args.pretrained}", f"training.optim.lr={args.replay_lr}",
            f"training.ema.decay={args.replay_ema}",
            f"data.replay={{file: [{', '.join(args.replay)}], count: {args.replay_count}, "
            f"select: fps, pseudolabels: true, weight: {args.replay_weight}"
            + (f", head: {args.replay_head}}}" if args.replay_head else "}")]),
        "scratch": (args.scratch_config, []),
    }
    if not args.replay:
        methods.pop("replay")
    if args.only is not None:
        methods = {k: v for k, v in methods.items() if k in args.only}
    results: dict = {"settings": vars(args), "runs": {},
                     "pretrained": {"test": score(args.pretrained, args.test),
                                    "holdout": score(args.pretrained, args.holdout)}}
    jobs = [(f"{m}_n{n}_s{s}", cfg, extra + [f"data.max_train={n}", f"seed={s}"])
            for s in args.seeds for n in args.sizes for m, (cfg, extra) in methods.items()]
    if args.only is None or "scratch_all" in args.only:
        jobs += [(f"scratch_all_s{s}", args.scratch_config, [f"seed={s}"]) for s in args.seeds]
    for k, (name, cfg, extra) in enumerate(jobs, 1):
        t = time.time()
        print(f"[{k}/{len(jobs)}] {name} ({args.minutes:g} min)", flush=True)
        summary = run_train(cfg, common + extra + [f"run_name={name}"], out / f"{name}.log",
                            args.threads)
        model = summary["model"]
        holdout_model = model
        if summary.get("head_models"):  # multi-head: the data's head on the tests
            from mlip.model.heads import export_head

            holdout_model = str(export_head(model, args.replay_head,
                                            Path(model).with_name(f"model_{args.replay_head}.pt")))
            model = summary["head_models"]["default"]
        results["runs"][name] = {
            "epochs": summary["epochs"], "train_structures": summary["train_structures"],
            "seconds": time.time() - t, "model": model,
            "test": {Path(r["file"]).name: {k2: r.get(k2) for k2 in ("e_mae", "e_rmse", "f_mae", "f_rmse")}
                     for r in summary["test"]},
            "holdout": score(holdout_model, args.holdout)}
        (out / "finetune.json").write_text(json.dumps(results, indent=1))
    print("\n| run | epochs | " + " | ".join(f"{Path(f).name} E / F MAE" for f in args.test)
          + " | " + " | ".join(f"{Path(f).name} F MAE (hold-out)" for f in args.holdout) + " |")
    print("|---|---|" + "---|" * (len(args.test) + len(args.holdout)))
    rows = [("pretrained", {"epochs": "-", **results["pretrained"]})] + list(results["runs"].items())
    for name, r in rows:
        cells = [f"{r['test'][Path(f).name]['e_mae']:.2f} / {r['test'][Path(f).name]['f_mae']:.2f}"
                 for f in args.test]
        cells += [f"{r['holdout'][Path(f).name]['f_mae']:.2f}" if r["holdout"][Path(f).name] else "-"
                  for f in args.holdout]
        print(f"| {name} | {r['epochs']} | " + " | ".join(cells) + " |")
    print(f"\nwritten: {out / 'finetune.json'}")


if __name__ == "__main__":
    main()
