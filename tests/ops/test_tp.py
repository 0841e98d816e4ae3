"""Tensor products: equivariance, parity with e3nn, gradients (one parametrized test per
implementation x lmax x dtype x seed, as later implementations join the list)."""

from __future__ import annotations

import pytest
import torch
from e3nn import o3
from torch.fx.experimental.proxy_tensor import make_fx

from mlip.ops.sh import irreps_of, num_components, spherical_harmonics, wigner_d
from mlip.ops.tp import resolve_tensor_product
from mlip.ops.tp.base import _UNROLL_MAX, shared_product
from mlip.ops.tp.cg import CGTensorProduct, cg_paths

IMPLEMENTATIONS = ["mlip.ops.tp.cg.CGTensorProduct", "mlip.ops.tp.gaunt.GauntGridTensorProduct",
                   "mlip.ops.tp.gaunt.GauntFourierTensorProduct"]
TOL = {torch.float64: 1e-10, torch.float32: 1e-4}


def _inputs(lmax1, lmax2, channels, shared, dtype, seed, weight_numel):
    g = torch.Generator().manual_seed(seed)
    x1 = torch.randn(6, channels, num_components(lmax1), generator=g, dtype=dtype)
    x2 = torch.randn(6, 1 if shared else channels, num_components(lmax2), generator=g, dtype=dtype)
    w = torch.randn(6, channels, weight_numel, generator=g, dtype=dtype)
    return x1, x2, w


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize("lmax", [0, 1, 2, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shared", [True, False])
@pytest.mark.parametrize("seed", [0, 1])
def test_equivariance(impl, lmax, dtype, shared, seed):
    tp = resolve_tensor_product(impl)(lmax, lmax, lmax)
    x1, x2, w = _inputs(lmax, lmax, 4, shared, dtype, seed, tp.weight_numel)
    for reflect in (False, True):
        rot = o3.rand_matrix(dtype=torch.float64) * (-1 if reflect else 1)
        d = wigner_d(lmax, rot).to(dtype)
        rotated = tp(x1 @ d.T, x2 @ d.T, w)
        expected = tp(x1, x2, w) @ d.T
        scale = expected.abs().max()
        assert ((rotated - expected).abs().max() / scale) < TOL[dtype]


@pytest.mark.parametrize("lmax", [1, 2])
def test_cg_matches_e3nn_tensor_product(lmax):
    """Our CG product equals e3nn's uvu TensorProduct with the same path weights."""
    torch.manual_seed(0)
    c = 3
    paths = cg_paths(lmax, lmax, lmax)
    irreps1 = irreps_of(lmax, c)
    irreps2 = irreps_of(lmax, 1)
    irreps_out = irreps_of(lmax, c)
    instructions = [(l1, l2, l3, "uvu", True) for (l1, l2, l3) in paths]
    # e3nn builds its 3j buffers in the default dtype: build it in float64.
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    ref = o3.TensorProduct(
        irreps1, irreps2, irreps_out, instructions, shared_weights=False, internal_weights=False,
        irrep_normalization="component", path_normalization="element",
    )
    torch.set_default_dtype(previous)
    ours = CGTensorProduct(lmax, lmax, lmax)
    x1 = torch.randn(5, c, num_components(lmax), dtype=torch.float64)
    x2 = torch.randn(5, 1, num_components(lmax), dtype=torch.float64)
    w = torch.randn(5, c, len(paths), dtype=torch.float64)

    def to_e3nn(x):  # (N, C, D) -> e3nn mul-major layout
        return torch.cat([x[:, :, l * l:(l + 1) ** 2].reshape(x.shape[0], -1)
                          for l in range(lmax + 1)], dim=1)

    # e3nn's weights: per instruction, (mul1=c, mul2=1) -> flattened in instruction order
    w_e3nn = w.permute(0, 2, 1).reshape(5, -1)
    expected = ref(to_e3nn(x1), to_e3nn(x2), w_e3nn)
    assert torch.allclose(to_e3nn(ours(x1, x2, w)), expected, atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_gradcheck(impl):
    tp = resolve_tensor_product(impl)(1, 2, 2)
    x1, x2, w = _inputs(1, 2, 2, True, torch.float64, 0, tp.weight_numel)
    for t in (x1, x2, w):
        t.requires_grad_(True)
    assert torch.autograd.gradcheck(tp, (x1, x2, w))


def test_parity_selection_rule():
    """Only l1 + l2 + l3 even paths exist: the 1o x 1o -> 1e cross product is excluded."""
    assert (1, 1, 1) not in cg_paths(1, 1, 1)
    assert all((a + b + c) % 2 == 0 for a, b, c in cg_paths(3, 3, 3))


def test_spherical_harmonics_rotate_with_wigner_d():
    vec = torch.randn(10, 3, dtype=torch.float64)
    rot = o3.rand_matrix(dtype=torch.float64)
    y = spherical_harmonics(vec, 3)
    assert torch.allclose(spherical_harmonics(vec @ rot.T, 3), y @ wigner_d(3, rot).T, atol=1e-12)


def test_resolve_rejects_non_tensor_products():
    with pytest.raises(ValueError, match="not a TensorProduct"):
        resolve_tensor_product("torch.nn.Linear")
    with pytest.raises(ValueError, match="importable"):
        resolve_tensor_product("mlip.ops.tp.nope.Nothing")


def test_every_short_name_resolves():
    """Short names come from the classes themselves: every shipped product declares one,
    each resolves to its own class, and an unknown name lists the known ones."""
    from mlip.ops.tp import short_names

    table = short_names()
    assert set(table) == {"cg", "gaunt", "gaunt-grid", "gaunt-fourier", "cp"}
    for short, path in table.items():
        assert resolve_tensor_product(short) is resolve_tensor_product(path)
        assert short in resolve_tensor_product(path).short_names
    with pytest.raises(ValueError, match="or one of cg"):
        resolve_tensor_product("cgg")


SHARED_FORMS = [(impl, {}) for impl in IMPLEMENTATIONS] + [
    ("mlip.ops.tp.cp.CPTensorProduct", {"share_weights": True}),
    ("mlip.ops.tp.cp.CPTensorProduct", {"share_weights": False}),
]


@pytest.mark.parametrize(("impl", "kwargs"), SHARED_FORMS)
@pytest.mark.parametrize("degrees", [(0, 2, 2), (1, 2, 2), (2, 3, 3)])
def test_shared_operand_factors_match_the_general_product(impl, kwargs, degrees):
    """The channel-last shared-operand form (what message passing runs on every edge)
    equals the same product evaluated with the operand copied to every channel, which takes
    each implementation's general path (grid, Fourier, CG paths, CP factors), float64."""
    tp = resolve_tensor_product(impl)(*degrees, **kwargs)
    tp.prepare()
    x1, x2, w = _inputs(degrees[0], degrees[1], 5, True, torch.float64, 3, tp.weight_numel)
    factors = tp.shared_operand_factors(x2[:, 0])
    assert factors is not None
    got = shared_product(x1.transpose(1, 2), w.transpose(1, 2), factors).transpose(1, 2)
    expected = tp(x1, x2.expand(-1, 5, -1).contiguous(), w)
    assert torch.allclose(got, expected, atol=1e-12, rtol=1e-10)
    assert torch.allclose(tp(x1, x2, w), expected, atol=1e-12, rtol=1e-10)
    unweighted = shared_product(x1.transpose(1, 2), None, factors).transpose(1, 2)
    assert torch.allclose(unweighted, tp(x1, x2.expand(-1, 5, -1).contiguous()), atol=1e-12, rtol=1e-10)
    # Traced with symbolic sizes (as the compiled force path exports it), small K takes the
    # unrolled form that inductor fuses: no batched matmul left, the same values.
    args = (x1.transpose(1, 2), w.transpose(1, 2), factors.coupling)
    traced = make_fx(lambda a, b, u: shared_product(a, b, factors._replace(coupling=u)),
                     tracing_mode="symbolic", _allow_non_fake_inputs=True)(*args)
    assert torch.allclose(traced(*args).transpose(1, 2), got, atol=1e-12, rtol=1e-10)
    k = factors.coupling.shape[-2]
    matmuls = [n for n in traced.graph.nodes if n.target in (torch.ops.aten.bmm.default, torch.ops.aten.mm.default)]
    assert (not matmuls) if k <= _UNROLL_MAX else matmuls
