"""`mlip data dissociation`: frames that teach a potential how bonds break
(:mod:`mlip.data.dissociation`), labelled with GFN2-xTB or any ASE calculator."""

from __future__ import annotations

import argparse
import importlib
import sys
import time

from mlip.cli.main import CliError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "dissociation",
        help="make dimer, pulled-group and two-molecule frames labelled by a cheap reference",
        description="Make frames in which atoms, terminal groups and molecules separate to "
        "beyond the cutoff (every element pair as a dimer, each terminal atom or group pulled "
        "out of training frames, two molecules pulled apart), labelled as energy differences "
        "along each path by GFN2-xTB (tblite) or an ASE calculator, anchored to the training "
        "data's own energies. Train with them via data.extra in the run config.",
    )
    p.add_argument("train", help="the training file (extxyz or anything ASE reads, with energies)")
    p.add_argument("--e0s", required=True, metavar="FILE",
                   help="isolated-atom energies (single-atom frames): the dimers' asymptote")
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="extxyz file to write")
    p.add_argument("--cutoff", type=float, default=5.0, help="the model's cutoff [Å] (default 5)")
    p.add_argument("--frames", type=int, default=2,
                   help="training frames to pull terminal atoms and groups out of (default 2)")
    p.add_argument("--points", type=int, default=10, help="frames per path (default 10)")
    p.add_argument("--pairs", type=int, default=1, help="two-molecule paths (default 1)")
    p.add_argument("--max-group", type=int, default=4,
                   help="largest terminal group pulled out as one piece (default 4: CH3)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--calculator", default="xtb", metavar="SPEC",
                   help='"xtb" (GFN2-xTB through tblite, default) or MODULE:CLASS of an ASE '
                   "calculator made with no arguments, e.g. ase.calculators.emt:EMT")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.set_defaults(func=run)


def _calculator(spec: str):
    from mlip.data.dissociation import XTB_SETTINGS, xtb_calculator

    if spec == "xtb":
        settings = ", ".join(f"{k} {v}" for k, v in XTB_SETTINGS.items())
        return xtb_calculator, f"GFN2-xTB (tblite; {settings}; lowest multiplicity)"
    module, _, name = spec.partition(":")
    if not name:
        raise CliError(f'--calculator {spec!r}: expected "xtb" or MODULE:CLASS')
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as err:
        raise CliError(f"--calculator {spec!r}: {err}") from None
    return (lambda _numbers: cls()), spec


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    import ase.io

    from mlip.data.dissociation import label_paths, make_paths, write_frames
    from mlip.data.stats import e0s_from_file

    out = Path(args.output)
    if out.exists() and not args.overwrite:
        raise CliError(f"{out} exists (pass --overwrite)")
    try:
        train = ase.io.read(args.train, ":")
        for n, a in enumerate(train):
            if a.calc is None or "energy" not in a.calc.results:
                raise ValueError(f"{args.train}, frame {n}: no energy label")
        e0s = e0s_from_file(args.e0s)
        paths = make_paths(train, e0s, args.cutoff, frames=args.frames, points=args.points,
                           pairs=args.pairs, max_group=args.max_group, seed=args.seed)
    except (OSError, ValueError, KeyError) as err:
        raise CliError(" ".join(str(err).split())) from None
    calculator, reference = _calculator(args.calculator)
    kinds = {k: sum(p.kind == k for p in paths) for k in ("dimer", "pull", "pair")}
    print(f"mlip data dissociation: {len(paths)} paths ({kinds['dimer']} dimers, {kinds['pull']} "
          f"pulls, {kinds['pair']} molecule pairs) x {args.points} frames, labelled by {reference}",
          flush=True)
    t0 = time.time()
    tty = sys.stderr.isatty()

    def progress(done: int, total: int) -> None:
        if tty:
            print(f"\r  {done}/{total} paths, {time.time() - t0:.0f} s", end="", file=sys.stderr, flush=True)
        elif done == total or done % max(1, total // 10) == 0:
            print(f"  {done}/{total} paths, {time.time() - t0:.0f} s", file=sys.stderr, flush=True)

    frames, failures = label_paths(paths, calculator, reference, progress)
    if tty:
        print(file=sys.stderr)
    for line in failures:
        print(f"mlip data dissociation: skipped {line}", file=sys.stderr)
    if not frames:
        raise CliError("no frame could be labelled; nothing written")
    write_frames(frames, out)
    print(f"wrote {len(frames)} frames to {out} ({len(failures)} skipped) in {time.time() - t0:.0f} s; "
          f"train with them: data.extra=[{{file: {out}, weight: 1.0}}]")
    return 0
