"""`mlip md MODEL STRUCTURE [...]`: molecular dynamics with a trained model."""

from __future__ import annotations

import argparse

from mlip.cli.main import CliError


def register(sub: argparse._SubParsersAction) -> None:
    from mlip.md.ase_driver import ENSEMBLES

    p = sub.add_parser(
        "md", help="run molecular dynamics with a model",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Run MD through the mlip ASE calculator with ASE's integrators, or K batched "
        "replicas (--replicas) with torch-native ones.\n\nEnsembles:\n"
        + "\n".join(f"  {k:<20} {v[0]}" for k, v in ENSEMBLES.items()),
    )
    p.add_argument("model", help="deployable model file (model.pt from mlip train) or committee file")
    p.add_argument("structure", help="any ASE-readable structure file")
    p.add_argument("--frame-index", type=int, default=0, help="frame of STRUCTURE to start from")
    p.add_argument("--ensemble", choices=list(ENSEMBLES), default="nve", metavar="NAME",
                   help=f"one of {', '.join(ENSEMBLES)} (default nve)")
    p.add_argument("--temperature", type=float, default=300.0,
                   help="K: initial Maxwell-Boltzmann velocities and thermostat target")
    p.add_argument("--timestep", type=float, default=0.5, help="fs")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--friction", type=float, default=0.01,
                   help="1/fs: Langevin friction; other thermostats tau_T = 1/friction, "
                   "barostats tau_P = 10 tau_T")
    p.add_argument("--pressure", type=float, default=0.0, help="GPa (NPT ensembles)")
    p.add_argument("--compressibility", type=float, default=0.457,
                   help="1/GPa, Berendsen barostats (water 0.457, metals ~0.01)")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto")
    p.add_argument("--dtype", choices=("float32", "float64"), default=None,
                   help="default: the model's")
    p.add_argument("--skin", type=float, default=0.5, help="Verlet skin [Å]")
    p.add_argument("--min-distance", type=float, default=0.5,
                   help="stop when two atoms come closer than this [Å]; 0 disables")
    p.add_argument("--compile", nargs="?", const="aot", default="aot", choices=("none", "aot", "inductor"),
                   help="compile the force function: aot (default: AOTInductor, built once per "
                        "model, about a minute on CPU, then loaded from the user cache folder in "
                        "about a second; 2.3x / 3.3x eager speed on the 960-atom box / one molecule, "
                        "docs/benchmarks.md), inductor (torch.compile, every run) or none (eager); "
                        "a failed compile warns once and runs eager")
    p.add_argument("--cuda-graphs", action="store_true",
                   help="CUDA devices: replay each force call from a CUDA graph (fixed-shape "
                   "neighbour list, about (1 + skin/cutoff)^3 times the edges; a failed capture "
                   "warns once and runs without)")
    p.add_argument("--out", default=None,
                   help="trajectory: .traj (ASE) or extended XYZ (any other extension)")
    p.add_argument("--log", default=None, help="text log: time, Epot, Ekin, Etot, T (P, V if periodic)")
    p.add_argument("--log-every", type=int, default=10, help="steps between log rows and frames")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--replicas", type=int, default=1,
                   help="K independent copies (seeds seed..seed+K-1) in one batched model call "
                   "per step (nve, langevin)")
    p.add_argument("--max-drift", type=float, default=1.0,
                   help="NVE: stop when |Etot - Etot(0)| per atom exceeds this [eV]")
    p.add_argument("--max-temperature", type=float, default=None,
                   help="stop above this temperature [K] (default max(5000, 10 x --temperature))")
    p.add_argument("--max-uncertainty", type=float, default=None, metavar="EV_PER_A",
                   help="with a model that has an uncertainty (or a committee file): stop when an "
                   "atom's force uncertainty exceeds this [eV/Å] and write that frame (the largest "
                   "per-atom uncertainty is logged either way)")
    p.add_argument("--on-uncertainty", choices=("stop", "warn"), default="stop",
                   help="stop (default) or only warn and keep writing frames (one per --log-every steps)")
    p.add_argument("--uncertain-out", default=None,
                   help="extended XYZ the uncertain frames go to (default: next to --out as "
                   "<stem>_uncertain.xyz, else uncertain.xyz)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--no-malloc-tuning", action="store_true",
                   help="keep glibc's default malloc (by default mlip md keeps freed memory in its "
                   "own process: fewer page faults per step on large cells; same as "
                   "MLIP_NO_MALLOC_TUNING=1)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import ase.io
    import torch

    from mlip.inference.engine import ForceField
    from mlip.integrations.ase import MLIPCalculator
    from mlip.md.ase_driver import MDInstabilityError, MDSettings, run_md

    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.no_malloc_tuning:  # this CLI process only: see mlip.cli.allocator
        from mlip.cli.allocator import tune_glibc_malloc

        tune_glibc_malloc()
    checks = {"--steps": args.steps >= 0, "--log-every": args.log_every >= 1,
              "--replicas": args.replicas >= 1, "--timestep": args.timestep > 0}
    for flag, ok in checks.items():
        if not ok:
            raise CliError(f"{flag} must be positive, got {getattr(args, flag[2:].replace('-', '_'))}")
    if args.cuda_graphs and (args.device == "cpu" or not torch.cuda.is_available()):
        raise CliError(f"--cuda-graphs needs a CUDA device (--device {args.device}"
                       f"{'' if torch.cuda.is_available() else ', and this torch sees no GPU'})")
    try:
        atoms = ase.io.read(args.structure, index=args.frame_index)
    except Exception as err:  # noqa: BLE001 - any reader failure is a user error
        raise CliError(f"cannot read frame {args.frame_index} of {args.structure}: {err}") from err
    atoms.calc = None
    try:
        engine = ForceField(args.model, device=args.device, dtype=args.dtype, skin=args.skin,
                            min_distance=args.min_distance or None, compile=args.compile,
                            cuda_graphs=args.cuda_graphs)
    except (FileNotFoundError, ValueError, RuntimeError) as err:
        raise CliError(f"cannot load model {args.model}: {err}") from err
    uncertain_out = args.uncertain_out
    if args.max_uncertainty is not None and uncertain_out is None:
        from pathlib import Path

        uncertain_out = (str(Path(args.out).with_name(Path(args.out).stem + "_uncertain.xyz"))
                         if args.out else "uncertain.xyz")
    settings = MDSettings(
        ensemble=args.ensemble, temperature_K=args.temperature, timestep_fs=args.timestep,
        steps=args.steps, friction_per_fs=args.friction, pressure_GPa=args.pressure,
        compressibility_per_GPa=args.compressibility, seed=args.seed, log_every=args.log_every,
        trajectory=args.out, log=args.log, max_energy_drift_per_atom=args.max_drift,
        max_temperature_K=args.max_temperature, progress=not args.quiet,
        max_uncertainty=args.max_uncertainty, uncertainty_action=args.on_uncertainty,
        uncertain_frames=uncertain_out,
    )
    try:
        if args.replicas > 1:
            from mlip.md.replicas import run_replicas

            summary = run_replicas(engine, atoms, settings, args.replicas)
        else:
            atoms.calc = MLIPCalculator(engine)
            summary = run_md(atoms, settings)
    except MDInstabilityError as err:
        raise CliError(str(err)) from err
    except ValueError as err:  # unknown elements, atoms too close at the start, bad ensemble
        raise CliError(str(err)) from err
    copies = f" x {args.replicas} replicas" if args.replicas > 1 else ""
    where = f"; trajectory {args.out}" if args.out and args.replicas == 1 else (
        f"; trajectories {args.out} with _r<i> suffixes" if args.out else "")
    print(
        f"mlip md: {summary['steps']} {args.ensemble} steps of {summary['atoms']} atoms{copies} "
        f"on {engine.device.type} in {summary['seconds']:.1f} s: {summary['steps_per_second']:.2f} "
        f"steps/s, {summary['steps_per_second'] * summary['atoms'] * args.replicas:.0f} atom-steps/s, "
        f"{summary['ns_per_day']:.3f} ns/day; final T {summary['final_temperature_K']:.0f} K"
        f"{where}"
    )
    if "max_forces_uncertainty" in summary:
        print(f"mlip md: largest per-atom force uncertainty {summary['max_forces_uncertainty']:.3f} eV/Å"
              + (f"; {summary['uncertain_steps']} step(s) above {args.max_uncertainty:g} eV/Å, frames in "
                 f"{uncertain_out}" if summary["uncertain_steps"] else ""))
    return 0
