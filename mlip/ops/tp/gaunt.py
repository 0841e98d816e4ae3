"""Gaunt tensor products (Luo, Chen, Krishnapriyan, ICLR 2024) in both published forms:
on a spherical quadrature grid ("The Price of Freedom", Xie et al. 2025;
:class:`GauntGridTensorProduct`) and through the 2D Fourier basis with FFT convolution
(the ICLR paper; :class:`GauntFourierTensorProduct`). Both compute the same product, with the
same weights and normalisation, to float precision (tested).

Coefficient vectors are read as functions on the sphere, f(s) = sum_lm x_lm Y_lm(s); the
Gaunt product multiplies two such functions pointwise and projects the product back onto
SH of degree <= L_out. On a Gauss-Legendre (in cos theta) x uniform (azimuth) grid this is
exact when the grid resolves the integrand f1 f2 Y_out (degree L1 + L2 + L_out):
n_theta = ceil((L1 + L2 + L_out + 1) / 2) nodes and n_phi = L1 + L2 + L_out + 1 angles.

Weights act per degree, not per path: per channel, one weight for each degree of x1
and one for each output degree, so ``weight_numel = (lmax_in1 + 1) + (lmax_out + 1)``
(x2 is left unweighted so a shared edge operand is evaluated on the grid once per edge).

Natural parity in, natural parity out: only l1 + l2 + l3 even couplings exist, so the
cross product of two vectors (1o x 1o -> 1e) is not representable (tested).
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch

from mlip.ops.sh import degree_of_components, num_components, per_component, spherical_harmonics
from mlip.ops.tp.base import SharedFactors, TensorProduct, matmul_rows


def grid_size(lmax_in1: int, lmax_in2: int, lmax_out: int) -> tuple[int, int]:
    """(n_theta, n_phi) of the smallest exact product grid.

    >>> grid_size(2, 2, 2)
    (4, 7)
    """
    degree = lmax_in1 + lmax_in2 + lmax_out
    return math.ceil((degree + 1) / 2), degree + 1


@functools.lru_cache(maxsize=64)
def sphere_grid(n_theta: int, n_phi: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Grid points (G, 3) on the unit sphere and quadrature weights (G,) summing to 1
    (float64): Gauss-Legendre in cos theta times the trapezoidal rule in phi."""
    nodes, weights = np.polynomial.legendre.leggauss(n_theta)
    phi = 2 * np.pi * np.arange(n_phi) / n_phi
    cos_t = np.repeat(nodes, n_phi)
    sin_t = np.sqrt(1 - cos_t**2)
    ph = np.tile(phi, n_theta)
    points = np.stack([sin_t * np.cos(ph), sin_t * np.sin(ph), cos_t], axis=1)
    w = np.repeat(weights, n_phi) / (2 * n_phi)  # sum(weights) = 2 over cos theta
    return torch.from_numpy(points), torch.from_numpy(w)


@functools.lru_cache(maxsize=64)
def gaunt_grid_matrices(
    lmax_in1: int, lmax_in2: int, lmax_out: int, normalize: bool = True
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(to_grid1 (D1, G), to_grid2 (D2, G), from_grid (G, Dout)) in float64.

    ``from_grid`` projects with component normalisation: coefficient_a = mean over the
    sphere of f * Y_a; each output degree is then rescaled so unit-variance inputs give
    unit-variance outputs (the same convention as the CG product).
    """
    points, w = sphere_grid(*grid_size(lmax_in1, lmax_in2, lmax_out))
    lmax = max(lmax_in1, lmax_in2, lmax_out)
    y = spherical_harmonics(points, lmax).T  # (D, G), component-normalised
    to1, to2 = y[: num_components(lmax_in1)], y[: num_components(lmax_in2)]
    proj = (y[: num_components(lmax_out)] * w).T  # (G, Dout)
    if not normalize:
        return to1, to2, proj
    scale = output_scale(lmax_in1, lmax_in2, lmax_out)
    return to1, to2, proj * scale[degree_of_components(lmax_out)]


@functools.lru_cache(maxsize=64)
def output_scale(lmax_in1: int, lmax_in2: int, lmax_out: int) -> torch.Tensor:
    """(lmax_out + 1,) per-degree factors that make unit-variance inputs give unit-variance
    outputs, from the exact coupling tensor G_abc = sum_g Y_b Y_c Y_a w (float64)."""
    to1, to2, proj = gaunt_grid_matrices(lmax_in1, lmax_in2, lmax_out, normalize=False)
    coupling = torch.einsum("bg,cg,ga->abc", to1, to2, proj)
    var = coupling.square().sum(dim=(1, 2))  # (Dout,)
    degree = degree_of_components(lmax_out)
    per_degree = torch.zeros(lmax_out + 1, dtype=torch.float64).index_add_(0, degree, var)
    per_degree = per_degree / (2 * torch.arange(lmax_out + 1, dtype=torch.float64) + 1)
    return torch.where(per_degree > 0, per_degree.rsqrt(), torch.zeros_like(per_degree))


def gaunt_grid_product(
    x1: torch.Tensor, x2: torch.Tensor, to1: torch.Tensor, to2: torch.Tensor,
    from_grid: torch.Tensor,
) -> torch.Tensor:
    """Pointwise product on the grid (pure function).

    Args:
        x1: (..., C, D1); x2: (..., C or 1, D2); matrices from :func:`gaunt_grid_matrices`.

    Returns:
        (..., C, Dout).
    """
    return matmul_rows(matmul_rows(x1, to1) * matmul_rows(x2, to2), from_grid)


@functools.lru_cache(maxsize=64)
def gaunt_coupling(lmax_in1: int, lmax_in2: int, lmax_out: int) -> torch.Tensor:
    """The normalised Gaunt coupling tensor G[j, i, k] = sum_g to1[i, g] to2[j, g] proj[g, k]
    as (D2, D1 * Dout) float64: the product is out_k = sum_ij G[j, i, k] x1_i x2_j."""
    to1, to2, proj = gaunt_grid_matrices(lmax_in1, lmax_in2, lmax_out)
    coupling = torch.einsum("ig,jg,gk->jik", to1, to2, proj)
    return coupling.reshape(coupling.shape[0], -1)


class _GauntTensorProduct(TensorProduct):
    """Per-degree weights around a Gaunt product; subclasses provide the three product
    matrices (``build_constants``: to_grid1, to_grid2, from_grid) and ``_product``.

    Weights: per channel, one for each degree of x1 (applied before the product) and one
    for each output degree (after), ``weight_numel = (lmax_in1 + 1) + (lmax_out + 1)``.

    A shared second operand (x2 with one channel, the edge SH of a message) is contracted
    with the exact coupling tensor first, once per row, giving a (D1, Dout) matrix that
    every channel then multiplies (``shared_operand="coupling"``, the default): the same
    product to float rounding, at D1 * Dout multiply-adds per channel instead of the
    subclass's transform to the grid or Fourier basis and back (252 vs 36 for the
    (1, 2, 2) message of the benchmark models; docs/benchmarks.md, Tensor products).
    ``shared_operand="native"`` keeps the subclass's own form for every input.
    """

    def __init__(self, lmax_in1: int, lmax_in2: int, lmax_out: int,
                 shared_operand: str = "coupling") -> None:
        super().__init__(lmax_in1, lmax_in2, lmax_out)
        if shared_operand not in ("coupling", "native"):
            raise ValueError(f"shared_operand must be 'coupling' or 'native', got {shared_operand!r}")
        self.shared_operand = shared_operand
        self.weight_numel = (lmax_in1 + 1) + (lmax_out + 1)
        self.register_buffer("deg1", degree_of_components(lmax_in1), persistent=False)
        self.register_buffer("deg_out", degree_of_components(lmax_out), persistent=False)
        self.register_buffer("out_weight_index", self.deg_out + (lmax_in1 + 1), persistent=False)
        self.register_constants()

    def build_constants(self) -> dict[str, torch.Tensor]:
        if self.shared_operand != "coupling":
            return {}
        return {"coupling": gaunt_coupling(self.lmax_in1, self.lmax_in2, self.lmax_out)}

    def _product(self, x1: torch.Tensor, x2: torch.Tensor, *matrices: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError  # pragma: no cover - abstract

    def shared_operand_factors(self, x2: torch.Tensor) -> SharedFactors | None:
        if self.shared_operand != "coupling":
            return None
        u = (x2 @ self.constant("coupling", x2)).unflatten(-1, (self.deg1.shape[0], -1))  # (..., D1, Dout)
        return SharedFactors(u, None, self.deg1, self.out_weight_index)

    def forward(
        self, x1: torch.Tensor, x2: torch.Tensor, weight: torch.Tensor | None = None
    ) -> torch.Tensor:
        shared = self.shared_forward(x1, x2, weight)
        if shared is not None:
            return shared
        if weight is not None:
            w1, w_out = weight[..., : self.lmax_in1 + 1], weight[..., self.lmax_in1 + 1 :]
            x1 = x1 * per_component(w1, self.deg1)
        matrices = [self.constant(name, x1) for name in ("to1", "to2", "proj")]
        out = self._product(x1, x2, *matrices)
        if weight is not None:
            out = out * per_component(w_out, self.deg_out)
        return out


class GauntGridTensorProduct(_GauntTensorProduct):
    """Gaunt tensor product evaluated on an exact spherical quadrature grid.

    >>> tp = GauntGridTensorProduct(1, 2, 2)
    >>> tp(torch.randn(4, 3, 4), torch.randn(4, 1, 9), torch.ones(4, 3, tp.weight_numel)).shape
    torch.Size([4, 3, 9])
    """

    short_names = ("gaunt", "gaunt-grid")  # accepted wherever a class path is (mlip.ops.tp.short_names)

    def build_constants(self) -> dict[str, torch.Tensor]:
        matrices = gaunt_grid_matrices(self.lmax_in1, self.lmax_in2, self.lmax_out)
        return {**super().build_constants(), **dict(zip(("to1", "to2", "proj"), matrices, strict=True))}

    def _product(self, x1: torch.Tensor, x2: torch.Tensor, *matrices: torch.Tensor) -> torch.Tensor:
        return gaunt_grid_product(x1, x2, *matrices)


# -- 2D Fourier form ----------------------------------------------------------------------------
#
# A real SH of degree l is a homogeneous polynomial of degree l in (x, y, z); with
# x = sin t cos p, y = sin t sin p, z = cos t it is a trigonometric polynomial of degree <= l
# in t and in p over the torus [0, 2 pi)^2, so (2l + 1)^2 uniform samples give its 2D Fourier
# coefficients exactly. Products of sphere functions are then 2D convolutions of coefficient
# arrays (FFT), and the projection back onto SH integrates e^{i(u t + v p)} Y_lm sin t over
# the sphere (t in [0, pi]) in closed form.


def _fourier_coefficients(values: torch.Tensor) -> torch.Tensor:
    """(..., M, M) samples on the uniform torus grid -> (..., M, M) coefficients c[u, v]
    (frequency u at index u mod M) with f(t, p) = sum c[u, v] e^{i(u t + v p)}."""
    m = values.shape[-1]
    return torch.fft.fft2(values.to(torch.complex128)) / (m * m)


def _torus_sh(lmax: int, m: int, times_sin: bool = False) -> torch.Tensor:
    """(D, M, M) real SH (optionally times sin t) on the uniform M x M torus grid (float64)."""
    angles = 2 * np.pi * np.arange(m) / m
    t, p = np.meshgrid(angles, angles, indexing="ij")
    points = np.stack([np.sin(t) * np.cos(p), np.sin(t) * np.sin(p), np.cos(t)], axis=-1)
    y = spherical_harmonics(torch.from_numpy(points.reshape(-1, 3)), lmax)
    y = y.T.reshape(-1, m, m)
    if times_sin:
        y = y * torch.from_numpy(np.sin(t))
    return y


def _to_fft_layout(coeffs: torch.Tensor, degree: int, n: int) -> torch.Tensor:
    """Move coefficients of frequencies |u|, |v| <= degree from an M-periodic layout
    (M = coeffs.shape[-1]) into an n-periodic one (index u mod n), zero elsewhere."""
    m = coeffs.shape[-1]
    out = torch.zeros(*coeffs.shape[:-2], n, n, dtype=coeffs.dtype)
    freqs = torch.arange(-degree, degree + 1)
    src, dst = freqs % m, freqs % n
    out[..., dst[:, None], dst[None, :]] = coeffs[..., src[:, None], src[None, :]]
    return out


@functools.lru_cache(maxsize=64)
def gaunt_fourier_matrices(
    lmax_in1: int, lmax_in2: int, lmax_out: int, normalize: bool = True
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(to_fourier1 (D1, n*n), to_fourier2 (D2, n*n), from_fourier (n*n, Dout)), complex128.

    ``n = 2 (L1 + L2) + 1`` is the smallest FFT size that holds the product's frequencies
    without wrap-around. ``to_fourier`` maps SH coefficients to 2D Fourier coefficients in
    FFT layout (sparse: a real SH of order m only has azimuthal frequencies +-m);
    ``from_fourier`` projects Fourier coefficients of the product onto SH with the
    component normalisation of :func:`gaunt_grid_matrices` (mean over the sphere of f Y).
    """
    n = 2 * (lmax_in1 + lmax_in2) + 1
    to = []
    for lmax in (lmax_in1, lmax_in2):
        coeffs = _fourier_coefficients(_torus_sh(lmax, 2 * lmax + 1))
        to.append(_to_fft_layout(coeffs, lmax, n).reshape(-1, n * n))
    # Y_a(t, p) sin t = sum_{a', b} h[a', b] e^{i(a' t + b p)}, degree <= L_out + 1 in t.
    degree = lmax_out + 1
    m = 2 * degree + 1
    h = _fourier_coefficients(_torus_sh(lmax_out, m, times_sin=True))  # index a mod m
    # (1 / 4 pi) int_0^pi int_0^2pi e^{i(u t + v p)} e^{i(a t + b p)} dp dt
    #   = (1 / 2) delta(v + b) I(u + a), I(k) = int_0^pi e^{ikt} dt.
    freqs_n = torch.arange(n)
    u = torch.where(freqs_n > n // 2, freqs_n - n, freqs_n)  # signed frequency of index
    a = torch.where(torch.arange(m) > m // 2, torch.arange(m) - m, torch.arange(m))
    k = u[:, None] + a[None, :]  # (n, m)
    k_c = k.to(torch.complex128)
    odd = (k % 2 != 0)
    integral = torch.where(k == 0, torch.full_like(k_c, np.pi),
                           torch.where(odd, 2j / k_c.where(k != 0, torch.ones_like(k_c)),
                                       torch.zeros_like(k_c)))
    # sum over a: J[u, b, lm] = sum_a I(u + a) h[lm, a, b]
    j = torch.einsum("ua,dab->ubd", integral, h)  # (n, m, Dout)
    proj = torch.zeros(n, n, h.shape[0], dtype=torch.complex128)
    for v in range(-(lmax_in1 + lmax_in2), lmax_in1 + lmax_in2 + 1):
        b = -v
        if abs(b) <= degree:
            proj[:, v % n, :] = 0.5 * j[:, b % m, :]
    proj = proj.reshape(n * n, -1)
    if normalize:
        proj = proj * output_scale(lmax_in1, lmax_in2, lmax_out)[degree_of_components(lmax_out)]
    return to[0], to[1], proj


def gaunt_fourier_product(
    x1: torch.Tensor, x2: torch.Tensor, to1: torch.Tensor, to2: torch.Tensor,
    from_fourier: torch.Tensor,
) -> torch.Tensor:
    """SH -> 2D Fourier -> FFT convolution -> SH (pure function).

    Args:
        x1: (..., C, D1) real; x2: (..., C or 1, D2) real; complex matrices from
            :func:`gaunt_fourier_matrices` (in the complex dtype matching x1's precision).

    Returns:
        (..., C, Dout) real.
    """
    n2 = to1.shape[-1]
    n = math.isqrt(n2)
    f1 = matmul_rows(x1.to(to1.dtype), to1).unflatten(-1, (n, n))
    f2 = matmul_rows(x2.to(to2.dtype), to2).unflatten(-1, (n, n))
    # Linear 2D convolution of the coefficient arrays (n >= both supports summed, so the
    # circular convolution of the FFT has no wrap-around): ifft2 * ifft2 -> fft2.
    shape = torch.broadcast_shapes(f1.shape, f2.shape)
    if 0 in shape:  # e.g. no edges (a lone atom): MKL's FFT rejects empty batches
        return x1.new_zeros(*shape[:-2], from_fourier.shape[-1])
    conv = torch.fft.fft2(torch.fft.ifft2(f1) * torch.fft.ifft2(f2)) * n2
    return matmul_rows(conv.flatten(-2), from_fourier).real


class GauntFourierTensorProduct(_GauntTensorProduct):
    """Gaunt tensor product through the 2D Fourier basis and FFT convolution (Luo et al.).

    Same product, weights and normalisation as :class:`GauntGridTensorProduct`.

    >>> tp = GauntFourierTensorProduct(1, 2, 2)
    >>> tp(torch.randn(4, 3, 4), torch.randn(4, 1, 9), torch.ones(4, 3, tp.weight_numel)).shape
    torch.Size([4, 3, 9])
    """

    short_names = ("gaunt-fourier",)  # accepted wherever a class path is (mlip.ops.tp.short_names)

    def build_constants(self) -> dict[str, torch.Tensor]:
        matrices = gaunt_fourier_matrices(self.lmax_in1, self.lmax_in2, self.lmax_out)
        return {**super().build_constants(), **dict(zip(("to1", "to2", "proj"), matrices, strict=True))}

    def _product(self, x1: torch.Tensor, x2: torch.Tensor, *matrices: torch.Tensor) -> torch.Tensor:
        return gaunt_fourier_product(x1, x2, *matrices)
