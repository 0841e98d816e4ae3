"""`mlip tp fit-cp --lmax L [--lmax-out L] [--rank R] [--no-sharing]`: precompute CP factors."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tp", help="tensor-product utilities (precompute CP factors)")
    tp_sub = p.add_subparsers(dest="tp_command", metavar="COMMAND", required=True)
    fit = tp_sub.add_parser("fit-cp", help="fit (and cache) CP factors of the CG path tensor")
    fit.add_argument("--lmax", type=int, required=True, help="degree of both inputs")
    fit.add_argument("--lmax-out", type=int, default=None, help="output degree (default lmax)")
    fit.add_argument("--rank", type=int, default=None, help="CP rank (default 7 L^2)")
    fit.add_argument("--no-sharing", action="store_true",
                     help="factors for CPTensorProduct(share_weights=False): one weight per path")
    fit.set_defaults(func=run_fit)


def run_fit(args: argparse.Namespace) -> int:
    import time

    from mlip.cache import cache_dir
    from mlip.ops.tp.cp import default_rank, load_or_fit

    lout = args.lmax if args.lmax_out is None else args.lmax_out
    rank = args.rank or default_rank(args.lmax, args.lmax, lout)
    t = time.perf_counter()
    *_, err = load_or_fit(args.lmax, args.lmax, lout, rank, verbose=True,
                          share_weights=not args.no_sharing)
    print(f"CP factors (L1, L2, Lout) = ({args.lmax}, {args.lmax}, {lout}), rank {rank}: "
          f"relative reconstruction error {err:.3e}, {time.perf_counter() - t:.1f} s "
          f"(cache {cache_dir('cp')})")
    return 0
