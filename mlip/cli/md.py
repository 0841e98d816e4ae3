"""`mlip md MODEL STRUCTURE [...]`: molecular dynamics with a trained model."""

from __future__ import annotations

import argparse

from mlip.cli.main import CliError


def register(sub: argparse._SubParsersAction) -> None:
    from mlip.md.ase_driver import ENSEMBLES

    p = sub.add_parser(
        "md", help="run molecular dynamics with a model",
        description="Run MD through the ASE calculator. Ensembles: "
        + "; ".join(f"{k}: {v[0]}" for k, v in ENSEMBLES.items()),
    )
    p.add_argument("model", help="deployable model file (model.pt)")
    p.add_argument("structure", help="any ASE-readable structure file")
    p.add_argument("--frame-index", type=int, default=0, help="frame of STRUCTURE to start from")
    p.add_argument("--ensemble", choices=list(ENSEMBLES), default="nve")
    p.add_argument("--temperature", type=float, default=300.0, help="K (initial velocities, thermostat)")
    p.add_argument("--timestep", type=float, default=0.5, help="fs")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--friction", type=float, default=0.01,
                   help="1/fs: Langevin friction; thermostat/barostat time constants are 1/friction")
    p.add_argument("--pressure", type=float, default=0.0, help="GPa (NPT ensembles)")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto")
    p.add_argument("--dtype", choices=("float32", "float64"), default=None)
    p.add_argument("--skin", type=float, default=0.5, help="Verlet skin [Å]")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--out", default=None, help="trajectory file (.traj or .xyz/.extxyz)")
    p.add_argument("--log", default=None, help="text log: time, Epot, Ekin, Etot, T (, P)")
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--replicas", type=int, default=1,
                   help="K independent copies in one batched model call per step (nve, langevin)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import ase.io
    import torch

    from mlip.calculator import MLIPCalculator
    from mlip.md.ase_driver import MDInstabilityError, MDSettings, run_md

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        atoms = ase.io.read(args.structure, index=args.frame_index)
    except Exception as err:  # noqa: BLE001 - any reader failure is a user error
        raise CliError(f"cannot read {args.structure} frame {args.frame_index}: {err}") from err
    atoms.calc = None
    try:
        calc = MLIPCalculator(args.model, device=args.device, dtype=args.dtype, skin=args.skin,
                              compile=args.compile)
    except (FileNotFoundError, ValueError) as err:
        raise CliError(str(err)) from err
    settings = MDSettings(
        ensemble=args.ensemble, temperature_K=args.temperature, timestep_fs=args.timestep,
        steps=args.steps, friction_per_fs=args.friction, pressure_GPa=args.pressure,
        seed=args.seed, log_every=args.log_every, trajectory=args.out, log=args.log,
    )
    try:
        if args.replicas > 1:
            from mlip.md.replicas import run_replicas

            summary = run_replicas(calc, atoms, settings, args.replicas)
        else:
            atoms.calc = calc
            summary = run_md(atoms, settings)
    except MDInstabilityError as err:
        raise CliError(str(err)) from err
    except ValueError as err:
        raise CliError(str(err)) from err
    print(
        f"mlip md: {summary['steps']} steps of {summary['atoms']} atoms"
        + (f" x {args.replicas} replicas" if args.replicas > 1 else "")
        + f" in {summary['seconds']:.1f} s: {summary['steps_per_second']:.2f} steps/s, "
        f"{summary['ns_per_day']:.3f} ns/day, final T {summary['final_temperature_K']:.0f} K"
        + (f"; trajectory {args.out}" if args.out else "")
    )
    return 0
