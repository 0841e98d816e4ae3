"""`mlip train --config FILE [key.sub=value ...] [--init-from MODEL] [--committee K]
[--resume | --overwrite]`."""

from __future__ import annotations

import argparse

from mlip.cli.main import CliError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a potential from a YAML config",
        description="Train a potential. Overrides use dotted keys, e.g. "
        "training.max_epochs=5 data.batch_size=10 run_name=test.",
    )
    p.add_argument("--config", "-c", required=True, help="YAML config (see configs/)")
    p.add_argument("overrides", nargs="*", help="dotted.key=value overrides")
    p.add_argument("--init-from", metavar="MODEL",
                   help="start from this trained model file (model.init_from): its architecture "
                        "and weights; choose data.e0s=foundation|refit|FILE")
    p.add_argument("--committee", type=int, metavar="K",
                   help="train K models (seeds seed..seed+K-1, one train/val split) and write a "
                        "calibrated committee file <run>/committee.pt (training.committee)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true", help="continue checkpoints/<run>/last.ckpt")
    mode.add_argument("--overwrite", action="store_true",
                      help="replace an earlier run of the same run_name (its folder is deleted)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mlip.training.config import load_config
    from mlip.training.run import train

    try:
        overrides = list(args.overrides)
        if args.init_from:
            overrides.append(f"model.init_from={args.init_from}")
        if args.committee is not None:
            overrides.append(f"training.committee={args.committee}")
        config = load_config(args.config, overrides)
    except (ValueError, FileNotFoundError) as err:
        raise CliError(str(err)) from err
    try:
        train(config, resume=args.resume, overwrite=args.overwrite)
    except (FileExistsError, FileNotFoundError, ValueError) as err:
        raise CliError(str(err)) from err
    return 0
