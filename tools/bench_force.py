"""Force-call benchmark: ms per energy + forces call through the calculator, per backbone.

    python tools/bench_force.py configs/acac_bench_gaunt.yaml configs/acac_bench_cg.yaml \
        configs/acac_bench_cp.yaml --threads 1

For each config: the architecture with zero-step weights (as tools/bench_md.py builds it;
timing does not depend on the weights), the best of --box-calls calls on the 960-atom acac
box (shared/data/bench/acac_box64.xyz; skipped when absent) and of --molecule-calls on one
acac molecule, an atom nudged between calls (the Verlet-skin list is reused, as in MD).
Run it alone on the machine; to compare commits, run it from each checkout.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import ase.io
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

from bench_md import SHARED, quickstart_model  # noqa: E402

from mlip.calculator import MLIPCalculator  # noqa: E402
from mlip.cli.allocator import tune_glibc_malloc  # noqa: E402


def best_call_ms(atoms, model, calls: int, compile_: str) -> float:
    a = atoms.copy()
    a.calc = MLIPCalculator(model, device="cpu", compile=compile_)
    a.get_forces()  # builds the neighbour list (and compiles)
    best = float("inf")
    for _ in range(calls):
        a.positions[0] += 1e-4
        t = time.perf_counter()
        a.get_forces()
        best = min(best, time.perf_counter() - t)
    return best * 1e3


def main() -> None:
    tune_glibc_malloc()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("configs", nargs="+")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--box-calls", type=int, default=4)
    parser.add_argument("--molecule-calls", type=int, default=50)
    parser.add_argument("--compile", default="none", help="none, aot or inductor")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    acac = ROOT / "data" / "acac"
    frames = ase.io.read(acac / "train_300K.xyz", ":20")
    iso = ase.io.read(acac / "isolated_atoms.xyz", ":")
    box_file = SHARED / "bench" / "acac_box64.xyz"
    box = ase.io.read(box_file) if box_file.is_file() else None
    print(f"| config | box ms/call | molecule ms/call |  ({args.threads} thread(s), compile={args.compile})")
    print("|---|---|---|")
    for cfg in args.configs:
        model = quickstart_model(frames, iso, 0, Path(cfg))
        box_ms = best_call_ms(box, model, args.box_calls, args.compile) if box is not None else float("nan")
        mol_ms = best_call_ms(frames[0], model, args.molecule_calls, args.compile)
        print(f"| {cfg} | {box_ms:,.0f} | {mol_ms:.2f} |", flush=True)


if __name__ == "__main__":
    main()
