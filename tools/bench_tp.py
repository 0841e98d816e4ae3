"""Tensor-product microbenchmark (after "The Price of Freedom"): forward and
forward+backward time vs L for each implementation, at the real operating point.

    python tools/bench_tp.py --threads 1 --lmax 1 2 3 4 5 6 --channels 1 32 --edges 10000 \
        --png docs/tp_bench.png

Implementations are class paths or short names (default: CG, Gaunt-grid, Gaunt-Fourier; add e.g.
mlip.ops.tp.cp.CPTensorProduct). Each product is l1 = l2 = l_out = L with a shared second
operand (1 channel, like edge spherical harmonics) and per-channel weights, float32.
Combinations whose inputs exceed --max-mb are skipped and reported.

References (the published Gaunt and TDN speed-ups are quoted against e3nn):
``e3nn-uvu`` is ``e3nn.o3.TensorProduct`` with the same parity-allowed paths in "uvu" mode
and per-edge weights (the operation of our CG product, e3nn's kernels);
``e3nn-fctp`` is ``e3nn.o3.FullyConnectedTensorProduct`` (channel-mixing, shared weights,
C^2 per path: a heavier operation, the usual e3nn baseline).
``cueq`` is NVIDIA cuEquivariance's ``ChannelWiseTensorProduct`` (the uvu operation with
per-edge weights, e3nn layout) with its CUDA kernels: timed with ``--device cuda`` where
``cuequivariance_torch`` (and its ops package) is installed, reported as skipped otherwise.
``--cueq-method naive`` runs its PyTorch fallback instead (on any device; a check of the
set-up, not a speed reference).
``--native`` times the Gaunt products in their own grid / Fourier form for the shared
operand too (the default contracts the exact coupling tensor with it first).

    python tools/bench_tp.py --device cuda --lmax 1 2 3 --channels 32 --edges 100000 \
        --impl cg gaunt-grid e3nn-uvu cueq
"""

from __future__ import annotations

import argparse
import time

import torch

from mlip.ops.sh import num_components
from mlip.ops.tp import resolve_tensor_product

DEFAULT = ["mlip.ops.tp.cg.CGTensorProduct", "mlip.ops.tp.gaunt.GauntGridTensorProduct",
           "mlip.ops.tp.gaunt.GauntFourierTensorProduct"]


def timed(fn, repeats: int, device: torch.device) -> float:
    """Best wall time of ``fn`` over ``repeats`` calls after one warm-up (builds cached
    constants, compiles kernels); CUDA work is waited for inside each timed call."""
    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    fn()
    sync()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - t)
    return best


def _irreps(channels: int, lmax: int) -> str:
    """Degrees 0..lmax with natural parity, ``channels`` copies each, as an irreps string."""
    return " + ".join(f"{channels}x{l}{'e' if l % 2 == 0 else 'o'}" for l in range(lmax + 1))


class CueqReference(torch.nn.Module):
    """cuEquivariance's channel-wise product: C channels of degrees 0..L times one channel of
    degrees 0..L, output degrees 0..L, per-edge weights; inputs in the e3nn (mul_ir) layout.

    Raises ImportError without ``cuequivariance_torch``."""

    def __init__(self, lmax: int, channels: int, device: torch.device, method: str | None) -> None:
        super().__init__()
        import cuequivariance as cue
        import cuequivariance_torch as cuet

        irreps1 = cue.Irreps("O3", _irreps(channels, lmax))
        irreps2 = cue.Irreps("O3", _irreps(1, lmax))
        out = [ir for _, ir in cue.Irreps("O3", _irreps(1, lmax))]
        self.tp = cuet.ChannelWiseTensorProduct(
            irreps1, irreps2, out, layout=cue.mul_ir, shared_weights=False, internal_weights=False,
            device=device, dtype=torch.float32, method=method)
        self.weight_numel = self.tp.weight_numel
        self.dim1, self.dim2 = irreps1.dim, irreps2.dim

    def forward(self, x1, x2, w):
        return self.tp(x1, x2, w)


class E3nnReference(torch.nn.Module):
    """e3nn's own tensor product on C channels of degrees 0..L (natural parity) times one
    channel of degrees 0..L, output degrees 0..L; inputs in e3nn's flat layout."""

    def __init__(self, lmax: int, channels: int, kind: str) -> None:
        super().__init__()
        from e3nn import o3

        irreps = o3.Irreps([(channels, (l, (-1) ** l)) for l in range(lmax + 1)])
        sh = o3.Irreps([(1, (l, (-1) ** l)) for l in range(lmax + 1)])
        if kind == "e3nn-fctp":
            self.tp = o3.FullyConnectedTensorProduct(irreps, sh, irreps)
            self.weight_numel = 0
        else:
            instructions = [(i, j, k, "uvu", True) for i, (_, a) in enumerate(irreps)
                            for j, (_, b) in enumerate(sh) for k, (_, c) in enumerate(irreps)
                            if c in a * b]
            self.tp = o3.TensorProduct(irreps, sh, irreps, instructions, shared_weights=False,
                                       internal_weights=False)
            self.weight_numel = self.tp.weight_numel
        self.dim1, self.dim2 = irreps.dim, sh.dim

    def forward(self, x1, x2, w):
        return self.tp(x1, x2) if self.weight_numel == 0 else self.tp(x1, x2, w)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--impl", nargs="+", default=DEFAULT)
    parser.add_argument("--lmax", nargs="+", type=int, default=[1, 2, 3, 4, 5, 6])
    parser.add_argument("--channels", nargs="+", type=int, default=[1, 32])
    parser.add_argument("--edges", type=int, default=10_000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--cueq-method", default=None,
                        help="cuEquivariance method (default: its CUDA kernel; 'naive' = PyTorch fallback)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-mb", type=float, default=2000.0)
    parser.add_argument("--png", default=None, help="write a plot of time vs L")
    parser.add_argument("--native", action="store_true",
                        help="Gaunt products in their grid/Fourier form for the shared operand too")
    parser.add_argument("--fit-max-lmax", type=int, default=3,
                        help="above this L, products needing prepare() (CP) are timed with random "
                        "factors instead of fitted ones (marked *): same cost, no minutes-long fit")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    rows = []
    where = f"{args.threads} thread(s)" if device.type == "cpu" else str(device)
    print(f"{args.edges} edges, float32, {where}, best of {args.repeats}; ms")
    print(f"{'impl':<28}{'C':>5}{'L':>4}{'fwd ms':>10}{'fwd+bwd ms':>12}")
    for c in args.channels:
        for lmax in args.lmax:
            for path in args.impl:
                if path.startswith("e3nn-") or path == "cueq":
                    if path == "cueq" and device.type != "cuda" and args.cueq_method is None:
                        print(f"{path:<28}{c:>5}{lmax:>4}   skipped (cuEquivariance's kernels need CUDA)")
                        continue
                    try:
                        tp = (CueqReference(lmax, c, device, args.cueq_method) if path == "cueq"
                              else E3nnReference(lmax, c, path).to(device))
                    except ImportError as err:
                        print(f"{path:<28}{c:>5}{lmax:>4}   skipped ({err})")
                        continue
                    g = torch.Generator().manual_seed(0)
                    mb = args.edges * (tp.dim1 + max(tp.weight_numel, 1)) * 4 / 2**20
                    if mb > args.max_mb:
                        print(f"{path:<28}{c:>5}{lmax:>4}   skipped (~{mb:.0f} MB inputs)")
                        continue
                    x1, x2, w = (torch.randn(args.edges, k, generator=g).to(device).requires_grad_(True)
                                 for k in (tp.dim1, tp.dim2, max(tp.weight_numel, 1)))
                    with torch.no_grad():
                        fwd = timed(lambda tp=tp, x1=x1, x2=x2, w=w: tp(x1, x2, w), args.repeats, device)
                    both = timed(lambda tp=tp, x1=x1, x2=x2, w=w: tp(x1, x2, w).square().sum().backward(),
                                 args.repeats, device)
                    rows.append((path, c, lmax, fwd, both))
                    print(f"{path:<28}{c:>5}{lmax:>4}{fwd * 1e3:>10.2f}{both * 1e3:>12.2f}", flush=True)
                    continue
                cls = resolve_tensor_product(path)
                name = cls.__name__.replace("TensorProduct", "")
                tp = (cls(lmax, lmax, lmax, shared_operand="native") if args.native and "Gaunt" in name
                      else cls(lmax, lmax, lmax)).to(device)
                mark = ""
                if callable(getattr(tp, "prepare", None)):
                    if lmax <= args.fit_max_lmax:
                        tp.prepare()  # e.g. CP factors (fitted once, then cached)
                    else:  # timing does not depend on the factor values
                        with torch.no_grad():
                            for buf in tp.buffers():
                                if buf.is_floating_point():
                                    buf.normal_()
                        mark = "*"
                d = num_components(lmax)
                mb = args.edges * c * d * max(d, tp.weight_numel) * 4 / 2**20
                if name == "CG":  # the shared-operand path: (E, D1, P, Dout) + (E, C, D1, P)
                    mb = args.edges * d * tp.weight_numel * (d + c) * 4 / 2**20
                if "Fourier" in name:  # complex (4L+1)^2 arrays, a few alive at once
                    mb = args.edges * c * (4 * lmax + 1) ** 2 * 8 * 4 / 2**20
                if mb > args.max_mb:
                    print(f"{name:<28}{c:>5}{lmax:>4}   skipped (~{mb:.0f} MB intermediate)")
                    continue
                g = torch.Generator().manual_seed(0)
                x1, x2, w = (torch.randn(*shape, generator=g).to(device).requires_grad_(True)
                             for shape in ((args.edges, c, d), (args.edges, 1, d),
                                           (args.edges, c, tp.weight_numel)))
                with torch.no_grad():
                    fwd = timed(lambda tp=tp, x1=x1, x2=x2, w=w: tp(x1, x2, w), args.repeats, device)
                both = timed(lambda tp=tp, x1=x1, x2=x2, w=w: tp(x1, x2, w).square().sum().backward(),
                             args.repeats, device)
                rows.append((name, c, lmax, fwd, both))
                print(f"{name + mark:<28}{c:>5}{lmax:>4}{fwd * 1e3:>10.2f}{both * 1e3:>12.2f}",
                      flush=True)
    names = sorted({r[0] for r in rows})
    for c in args.channels:
        for other in names:
            if other == "CG":
                continue
            wins = [lm for (n, cc, lm, _, b) in rows if n == other and cc == c
                    and any(r[0] == "CG" and r[1] == c and r[2] == lm and b < r[4] for r in rows)]
            print(f"C={c}: {other} faster than CG (fwd+bwd) at L = {wins or 'none measured'}")
    if args.png:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, len(args.channels), figsize=(5 * len(args.channels), 4), dpi=110,
                                 squeeze=False)
        for ax, c in zip(axes[0], args.channels, strict=True):
            for n in names:
                pts = [(lm, b * 1e3) for (nn, cc, lm, _, b) in rows if nn == n and cc == c]
                if pts:
                    ax.plot(*zip(*pts, strict=True), marker="o", label=n)
            ax.set_yscale("log")
            ax.set_xlabel("L")
            ax.set_ylabel("forward + backward [ms]")
            ax.set_title(f"{args.edges} edges, {c} channel(s), {args.threads} thread(s)")
            ax.legend()
        fig.tight_layout()
        fig.savefig(args.png)
        print(f"wrote {args.png}")


if __name__ == "__main__":
    main()
