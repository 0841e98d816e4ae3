"""`mlip <verb>`: the command-line entry point.

Each verb is a small module in this package exposing ``register(subparsers)``, which adds
its parser and sets ``func`` (called with the parsed namespace, returns an exit code).
"""

from __future__ import annotations

import argparse
import importlib
import sys

from mlip import __version__

# Verb modules, in the order `mlip --help` lists them.
VERBS = ("data", "train", "eval", "md", "learn", "export", "lammps", "tp")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mlip",
        description="Train machine-learning interatomic potentials and run MD with them.",
    )
    parser.add_argument("--version", action="version", version=f"mlip {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    for verb in VERBS:
        try:
            module = importlib.import_module(f"mlip.cli.{verb}")
        except ModuleNotFoundError as err:
            if err.name != f"mlip.cli.{verb}":
                raise
            continue
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except CliError as err:
        print(f"mlip {args.verb}: error: {err}", file=sys.stderr)
        return 1


class CliError(Exception):
    """An error the CLI reports as one line, without a traceback."""


if __name__ == "__main__":
    sys.exit(main())
