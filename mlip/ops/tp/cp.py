"""CP-decomposed tensor product with path-weight sharing (after TDN, Lin et al. 2025).

All CG paths (l1, l2, l3) are summed into one 3-way tensor M (D1, D2, Dout) (the normalised
path tensor of :mod:`mlip.ops.tp.cg`), replaced by a rank-R CP decomposition

    M_ijk ~ sum_r B_ir C_jr A_kr,   out = ((x1 B) * (x2 C)) A^T,

O(R (D1 + D2 + Dout)) per channel instead of O(D1 D2 Dout). Path weights are shared: per
channel one weight per degree of x1 and one per output degree (as for the Gaunt product),
``weight_numel = (lmax_in1 + 1) + (lmax_out + 1)``. Below full rank the product is only
approximately equivariant; the error shrinks with the decomposition error (measured in
tests and by ``mlip eval --equivariance``).

Path-weight sharing off (``share_weights=False``): the CP decomposition is of the stacked
path tensor M_ij(pk) (D1, D2, P Dout) instead, with one weight per (channel, CG path) as in
the CG product: out_k = sum_p w_p sum_r A_(pk)r (x1 B)_r (x2 C)_r, O(R (D1 + D2 + P Dout))
per channel. At full rank it equals :class:`mlip.ops.tp.cg.CGTensorProduct` exactly. This
is the ablation of the paper's sharing: the stacked tensor is not low-rank (relative error
0.35 at L = 1, 0.44 at L = 2 for R = 7 L^2), so its default rank is the exact D1 D2 and it
is not faster than CG; sharing is what makes CP cheap.

The factors are persistent exact float64 buffers (:mod:`mlip.ops.buffers`; saved models
carry them). ``__init__`` only allocates; :meth:`CPTensorProduct.prepare` (the protocol's
fitting step) fills them: exactly at full rank (R >= D1 D2), otherwise from a cache file in
:func:`mlip.cache.cache_dir` ``("cp")`` or by a deterministic ALS fit that writes the cache.
"""

from __future__ import annotations

import os
import time

import numpy as np
import torch

from mlip.cache import cache_dir
from mlip.ops.buffers import exact, register_exact, set_exact
from mlip.ops.sh import degree_of_components, num_components, per_component
from mlip.ops.tp.base import SharedFactors, TensorProduct, matmul_rows
from mlip.ops.tp.cg import cg_path_tensor, cg_paths


def default_rank(lmax_in1: int, lmax_in2: int, lmax_out: int) -> int:
    """TDN's choice R = 7 L^2 with L the largest degree (at least 7)."""
    return 7 * max(1, lmax_in1, lmax_in2, lmax_out) ** 2


def shared_path_tensor(lmax_in1: int, lmax_in2: int, lmax_out: int) -> np.ndarray:
    """M = sum over CG paths, (D1, D2, Dout) float64."""
    return cg_path_tensor(lmax_in1, lmax_in2, lmax_out).sum(0).numpy()


def path_tensor(lmax_in1: int, lmax_in2: int, lmax_out: int, share_weights: bool = True) -> np.ndarray:
    """The tensor to decompose: shared (D1, D2, Dout) or per path (D1, D2, P Dout)."""
    if share_weights:
        return shared_path_tensor(lmax_in1, lmax_in2, lmax_out)
    paths = cg_path_tensor(lmax_in1, lmax_in2, lmax_out)  # (P, D1, D2, Dout)
    p, d1, d2, d3 = paths.shape
    return paths.permute(1, 2, 0, 3).reshape(d1, d2, p * d3).numpy()


def exact_factors(m: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A rank-(D1 D2) decomposition that is exact: one component per (i, j) pair."""
    d1, d2, d3 = m.shape
    b = np.kron(np.eye(d1), np.ones((1, d2)))  # (D1, D1 D2)
    c = np.kron(np.ones((1, d1)), np.eye(d2))  # (D2, D1 D2)
    a = m.reshape(d1 * d2, d3).T  # (Dout, D1 D2)
    return a, b, c


def reconstruct(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    return np.einsum("ir,jr,kr->ijk", b, c, a)


def fit_cp(
    m: np.ndarray, rank: int, seed: int = 0, max_iter: int = 3000, tol: float = 1e-7,
    ridge: float = 1e-10, restarts: int = 4,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Rank-``rank`` CP decomposition of ``m`` (D1, D2, Dout) by alternating least squares.

    Deterministic for a given seed (``restarts`` seeded starts, the best kept).

    Returns:
        (A (Dout, R), B (D1, R), C (D2, R), relative error ||M - CP|| / ||M||).
    """
    d1, d2, d3 = m.shape
    norm = np.linalg.norm(m)
    m1 = m.reshape(d1, d2 * d3)  # mode-1 unfolding (i | j k)
    m2 = m.transpose(1, 0, 2).reshape(d2, d1 * d3)  # (j | i k)
    m3 = m.transpose(2, 0, 1).reshape(d3, d1 * d2)  # (k | i j)
    best = None
    for start in range(restarts):
        rng = np.random.default_rng(seed + 1000 * start)
        b, c, a = (rng.standard_normal((d, rank)) for d in (d1, d2, d3))
        prev = np.inf
        eye = ridge * np.eye(rank)
        for _ in range(max_iter):
            # Khatri-Rao products in the unfoldings' orders.
            b = m1 @ _khatri_rao(c, a) @ np.linalg.inv((c.T @ c) * (a.T @ a) + eye)
            c = m2 @ _khatri_rao(b, a) @ np.linalg.inv((b.T @ b) * (a.T @ a) + eye)
            a = m3 @ _khatri_rao(b, c) @ np.linalg.inv((b.T @ b) * (c.T @ c) + eye)
            err = np.linalg.norm(m - reconstruct(a, b, c)) / norm
            if prev - err < tol * max(err, 1e-12) or err < 1e-12:
                break
            prev = err
        if best is None or err < best[3]:
            best = (a, b, c, float(err))
    return best


def _khatri_rao(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Column-wise Kronecker product: rows ordered (x index, y index)."""
    return (x[:, None, :] * y[None, :, :]).reshape(-1, x.shape[1])


def load_or_fit(lmax_in1: int, lmax_in2: int, lmax_out: int, rank: int,
                verbose: bool = False, share_weights: bool = True,
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Factors for (L1, L2, Lout, R, sharing): exact at full rank, else cached or fitted
    (then cached). Cache files are raw numpy arrays (``allow_pickle=False``)."""
    m = path_tensor(lmax_in1, lmax_in2, lmax_out, share_weights)
    if rank >= m.shape[0] * m.shape[1]:
        a, b, c = exact_factors(m)
        pad = rank - a.shape[1]
        a, b, c = (np.pad(x, ((0, 0), (0, pad))) for x in (a, b, c))
        return a, b, c, 0.0
    kind = "" if share_weights else "_paths"
    path = cache_dir("cp") / f"cp_l{lmax_in1}_{lmax_in2}_{lmax_out}_r{rank}{kind}.npz"
    if path.is_file():
        with np.load(path, allow_pickle=False) as f:
            return f["a"], f["b"], f["c"], float(f["error"])
    t = time.perf_counter()
    a, b, c, err = fit_cp(m, rank)
    if verbose:
        print(f"fitted CP rank {rank} for (L1, L2, Lout) = ({lmax_in1}, {lmax_in2}, {lmax_out})"
              f"{'' if share_weights else ' per path'}: "
              f"relative error {err:.2e} in {time.perf_counter() - t:.1f} s")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.stem}.partial-{os.getpid()}.npz")
    np.savez(tmp, a=a, b=b, c=c, error=np.array(err))
    os.replace(tmp, path)
    return a, b, c, err


class CPTensorProduct(TensorProduct):
    """Rank-R CP tensor product, path weights shared (default) or one per CG path.

    Args:
        lmax_in1, lmax_in2, lmax_out: degrees.
        rank: CP rank R (default 7 L^2 shared, D1 D2 unshared); R >= D1 D2 is exact.
        share_weights: True: per-degree weights shared by all paths,
            ``weight_numel = (lmax_in1 + 1) + (lmax_out + 1)``; False: one weight per CG
            path (``weight_numel = P``, as CG), decomposing the stacked path tensor.

    >>> tp = CPTensorProduct(1, 1, 1, rank=16)
    >>> tp.prepare()
    >>> tp(torch.randn(3, 2, 4), torch.randn(3, 1, 4)).shape
    torch.Size([3, 2, 4])
    """

    short_names = ("cp",)  # accepted wherever a class path is (mlip.ops.tp.short_names)

    def __init__(self, lmax_in1: int, lmax_in2: int, lmax_out: int, rank: int | None = None,
                 share_weights: bool = True) -> None:
        super().__init__(lmax_in1, lmax_in2, lmax_out)
        self.share_weights = bool(share_weights)
        d1, d2, d3 = (num_components(x) for x in (lmax_in1, lmax_in2, lmax_out))
        # Unshared, the stacked per-path tensor is far from low rank (relative error 0.35
        # at L = 1 and 0.44 at L = 2 for 7 L^2), so its default is the exact rank D1 D2.
        default = default_rank(lmax_in1, lmax_in2, lmax_out) if self.share_weights else d1 * d2
        self.rank = int(rank or default)
        self.num_paths = len(cg_paths(lmax_in1, lmax_in2, lmax_out))
        self.weight_numel = ((lmax_in1 + 1) + (lmax_out + 1) if self.share_weights
                             else self.num_paths)
        rows_a = d3 if self.share_weights else self.num_paths * d3
        for name, rows in (("factor_a", rows_a), ("factor_b", d1), ("factor_c", d2)):
            register_exact(self, name, torch.zeros(rows, self.rank), persistent=True)
        register_exact(self, "fit_error", torch.tensor(float("nan")), persistent=True)
        self.register_buffer("deg1", degree_of_components(lmax_in1), persistent=False)
        self.register_buffer("deg_out", degree_of_components(lmax_out), persistent=False)
        if self.share_weights:
            x1_index, weight_index = None, self.deg1
            out_index = self.deg_out + (lmax_in1 + 1)
        else:  # term k = (component i, path p), k = i P + p
            x1_index = torch.arange(d1).repeat_interleave(self.num_paths)
            weight_index, out_index = torch.arange(self.num_paths).repeat(d1), None
        for name, value in (("x1_index", x1_index), ("weight_index", weight_index),
                            ("out_weight_index", out_index)):
            self.register_buffer(name, value, persistent=False)
        self.prepared = False  # set by prepare() and by loading a state dict
        self.register_load_state_dict_post_hook(_mark_prepared)

    def prepare(self) -> None:
        """Fill the factors (the explicit step; see module docstring)."""
        a, b, c, err = load_or_fit(self.lmax_in1, self.lmax_in2, self.lmax_out, self.rank,
                                   share_weights=self.share_weights)
        with torch.no_grad():
            for name, val in (("factor_a", a), ("factor_b", b), ("factor_c", c)):
                set_exact(self, name, torch.from_numpy(np.ascontiguousarray(val)))
            set_exact(self, "fit_error", torch.tensor(err))
        self.prepared = True

    def extra_repr(self) -> str:
        return (super().extra_repr() + f", rank={self.rank}, share_weights={self.share_weights}, "
                f"fit_error={float(exact(self, 'fit_error')):.2e}")

    def _check_prepared(self) -> None:
        if not self.prepared:
            raise RuntimeError("CPTensorProduct factors are not set: call prepare() (build_potential "
                               "does) or load a saved model")

    def shared_operand_factors(self, x2: torch.Tensor) -> SharedFactors:
        # The sum over the rank reassociated into u = b diag(x2 c) a^T, (..., D1, Dout) shared,
        # (..., D1 P, Dout) per path.
        self._check_prepared()
        a, b, c = (self.constant(name, x2) for name in ("factor_a", "factor_b", "factor_c"))
        u = ((x2 @ c).unsqueeze(-2) * b) @ a.T
        if not self.share_weights:
            u = u.reshape(*u.shape[:-2], -1, u.shape[-1] // self.num_paths)
        return SharedFactors(u, self.x1_index, self.weight_index, self.out_weight_index)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        self._check_prepared()
        shared = self.shared_forward(x1, x2, weight)
        if shared is not None:
            return shared
        a, b, c = (self.constant(name, x1) for name in ("factor_a", "factor_b", "factor_c"))
        if not self.share_weights:
            per_path = matmul_rows(matmul_rows(x1, b) * matmul_rows(x2, c), a.T)
            per_path = per_path.unflatten(-1, (self.num_paths, -1))
            if weight is None:
                return per_path.sum(-2)
            return (per_path * weight.unsqueeze(-1)).sum(-2)
        if weight is not None:
            x1 = x1 * per_component(weight[..., : self.lmax_in1 + 1], self.deg1)
        out = matmul_rows(matmul_rows(x1, b) * matmul_rows(x2, c), a.T)
        if weight is not None:
            out = out * per_component(weight[..., self.lmax_in1 + 1 :], self.deg_out)
        return out


def _mark_prepared(module: CPTensorProduct, incompatible_keys) -> None:
    """Loading a state dict that carries the factors counts as the prepare step."""
    if not torch.isnan(exact(module, "fit_error")):
        module.prepared = True
