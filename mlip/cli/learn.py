"""`mlip learn --config learn.yaml [key=value ...]`: the active-learning loop
(:mod:`mlip.training.active`); running it again resumes where it stopped."""

from __future__ import annotations

import argparse

from mlip.cli.main import CliError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "learn", help="active learning: MD -> most uncertain frames -> label -> train, in rounds",
        description="Grow a training set where the model is uncertain: each round runs MD with the "
        "current model, picks the most uncertain diverse frames, labels them (GFN2-xTB through "
        "tblite, or an ASE calculator) and retrains. Run the same command again to resume.",
    )
    p.add_argument("--config", "-c", required=True, help="loop YAML (see configs/learn_acac_xtb.yaml)")
    p.add_argument("overrides", nargs="*", help="dotted.key=value overrides of the loop config")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mlip.training.active import learn, load_learn_config

    try:
        config = load_learn_config(args.config, args.overrides)
        learn(config)
    except (FileNotFoundError, FileExistsError, ValueError) as err:
        raise CliError(str(err)) from err
    return 0
