"""The ML-IAP unified object (``pair_style mliap unified``) against the ASE calculator.

LAMMPS with ML-IAP's Python coupling is not installable here, so LAMMPS's side is a fake
``data`` object with the attributes, dtypes, units and write semantics of LAMMPS's
(``src/ML-IAP/mliap_unified_couple.pyx``, ``src/KOKKOS/mliap_unified_couple_kokkos.pyx``):
owned atoms are the structure's atoms, ghosts are periodic images within a ghost cutoff,
the pair list is full (every owned i with every owned or ghost j within the cutoff,
rij = x_j - x_i), and the results are collected as LAMMPS does: pair forces onto both atoms
(ghost forces folded onto their owners, as LAMMPS's reverse communication does) and the
virial tallied from the pairs.
"""

from __future__ import annotations

import pickle

import ase.io
import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk
from ase.neighborlist import neighbor_list

from mlip.calculator import MLIPCalculator
from mlip.integrations.lammps.mliap import GhostExchangeError, MLIAPUnifiedMLIP
from mlip.model.build import build_potential
from mlip.model.io import save_model

SKIN = 0.5  # Å: LAMMPS's default ghost cutoff is the pair cutoff plus the neighbour skin
TRANSIP = {"class_path": "mlip.backbones.transip.TransIPBackbone",
           "init_args": {"width": 16, "depth": 2, "heads": 2, "num_radial": 4, "edge_width": 8,
                         "embedding_channels": 4, "embedding_lmax": 1, "readout_hidden": 8}}


# --- LAMMPS's side ------------------------------------------------------------------------------
class PlainData:
    """The plain (non-Kokkos) coupling's data for one structure: no ghost exchange, and
    ``eatoms`` / ``energy`` are write-only properties.

    Args:
        atoms: the owned atoms (wrapped into the cell when periodic).
        elements: the model's element_types (``elems`` indexes them).
        cutoff: the pair cutoff 2 rcutfac [Å].
        ghost_cutoff: periodic images within this distance of an owned atom become ghosts [Å].
    """

    def __init__(self, atoms: Atoms, elements: list[str], cutoff: float, ghost_cutoff: float) -> None:
        pos = atoms.positions
        nlocal = len(atoms)
        if atoms.pbc.any():
            _, j, shift = neighbor_list("ijS", atoms, ghost_cutoff)
            images = np.unique(np.column_stack([j, shift])[np.any(shift != 0, axis=1)], axis=0)
            self.owner = images[:, 0]
            ghosts = pos[self.owner] + images[:, 1:] @ atoms.cell.array
        else:
            self.owner = np.zeros(0, dtype=np.int64)
            ghosts = np.zeros((0, 3))
        x = np.concatenate([pos, ghosts])  # (ntotal, 3) coordinates of owned atoms, then ghosts
        self.x = x
        self.nlocal = self.nlistatoms = nlocal
        self.ntotal = len(x)
        dist = np.linalg.norm(x[None, :, :] - pos[:, None, :], axis=-1)
        dist[np.arange(nlocal), np.arange(nlocal)] = np.inf
        pair_i, pair_j = np.nonzero(dist < cutoff)  # grouped by i, like LAMMPS's list
        self.pair_i = pair_i.astype(np.int32)
        self.pair_j = pair_j.astype(np.int32)
        self.npairs = len(pair_i)
        self.rij = np.ascontiguousarray(x[pair_j] - x[pair_i])
        index = {s: k for k, s in enumerate(elements)}
        symbols = atoms.get_chemical_symbols()
        self.elems = np.array([index[s] for s in symbols] + [index[symbols[o]] for o in self.owner],
                              dtype=np.int32)
        self.iatoms = np.arange(nlocal, dtype=np.int32)
        self.f = np.zeros((self.ntotal, 3))
        self.virial = np.zeros(6)  # xx yy zz xy xz yz, LAMMPS's order
        self.virial_full = np.zeros((3, 3))  # -sum rij fij^T, all nine (not LAMMPS's)
        self._eatoms = np.zeros(nlocal)
        self.energy_value: float | None = None
        self.force_calls = 0

    def _set_energy(self, value: float) -> None:
        self.energy_value = float(value)

    def _set_eatoms(self, value: np.ndarray) -> None:  # a double[:] memoryview copy in LAMMPS
        assert isinstance(value, np.ndarray) and value.dtype == np.float64
        assert value.shape == (self.nlistatoms,)
        self._eatoms[:] = value

    energy = property(None, _set_energy)
    eatoms = property(None, _set_eatoms)

    def update_pair_forces(self, fij: np.ndarray) -> None:
        """LAMMPS's update_pair_forces: f[i] += fij, f[j] -= fij for owned i, and the
        virial tally v = -rij fij^T (PairMLIAP::v_tally)."""
        assert isinstance(fij, np.ndarray) and fij.dtype == np.float64  # a double[:, ::1] view
        assert fij.flags.c_contiguous and fij.shape == (self.npairs, 3)
        self.force_calls += 1
        own = self.pair_i < self.nlocal
        i, j, f, r = self.pair_i[own], self.pair_j[own], fij[own], self.rij[own]
        np.add.at(self.f, i, f)
        np.subtract.at(self.f, j, f)
        self.virial -= np.array([r[:, 0] @ f[:, 0], r[:, 1] @ f[:, 1], r[:, 2] @ f[:, 2],
                                 r[:, 0] @ f[:, 1], r[:, 0] @ f[:, 2], r[:, 1] @ f[:, 2]])
        self.virial_full -= r.T @ f

    # what the test reads back
    def forces(self) -> np.ndarray:
        """(nlocal, 3) forces on the owned atoms, the ghosts' share folded onto their owners."""
        out = self.f[:self.nlocal].copy()
        np.add.at(out, self.owner, self.f[self.nlocal:])
        return out

    def atom_energies(self) -> np.ndarray:
        return self._eatoms


class KokkosData(PlainData):
    """The Kokkos coupling's data (host arrays): ``eatoms`` is a view of LAMMPS's array, and
    forward_exchange / reverse_exchange work on torch tensors through raw pointers."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.exchanges = {"forward": 0, "reverse": 0}

    eatoms = property(lambda self: self._eatoms)

    def _views(self, src: torch.Tensor, dst: torch.Tensor, vec_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        assert isinstance(src, torch.Tensor) and isinstance(dst, torch.Tensor)
        assert src.dtype == dst.dtype and src.dtype in (torch.float32, torch.float64)
        assert src.is_contiguous() and dst.is_contiguous() and src.data_ptr() != dst.data_ptr()
        assert src.numel() == dst.numel() == self.ntotal * vec_len  # raw (ntotal, vec_len) memory
        return src.view(self.ntotal, vec_len), dst.view(self.ntotal, vec_len)

    def forward_exchange(self, src: torch.Tensor, dst: torch.Tensor, vec_len: int) -> None:
        """dst = src, then every ghost row of dst = its owner's row."""
        src, dst = self._views(src, dst, vec_len)
        dst.copy_(src)
        dst[self.nlocal:] = src[torch.as_tensor(self.owner)]
        self.exchanges["forward"] += 1

    def reverse_exchange(self, src: torch.Tensor, dst: torch.Tensor, vec_len: int) -> None:
        """dst = src, every ghost row added to its owner's, ghost rows zeroed."""
        src, dst = self._views(src, dst, vec_len)
        dst.copy_(src)
        dst.index_add_(0, torch.as_tensor(self.owner), src[self.nlocal:])
        dst[self.nlocal:] = 0
        self.exchanges["reverse"] += 1


# --- structures and models -----------------------------------------------------------------------
def _copper(triclinic: bool) -> Atoms:
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(2)
    if triclinic:  # LAMMPS's triclinic form: a along x, b in the xy plane
        atoms.set_cell([[7.2, 0.0, 0.0], [1.4, 7.0, 0.0], [-0.9, 1.1, 7.3]], scale_atoms=True)
    atoms.rattle(0.1, seed=3 if triclinic else 2)
    atoms.wrap()
    return atoms


@pytest.fixture(scope="module")
def acac(bundled_acac) -> Atoms:
    return ase.io.read(bundled_acac / "train_300K.xyz", index=0)


def _with_layers(backbone: dict, layers: int) -> dict:
    return {**backbone, "init_args": {**backbone["init_args"], "num_layers": layers}}


@pytest.fixture(scope="module")
def models(acac_backbone, copper_model) -> dict:
    """Random float64 models: acac (H, C, O; cutoff 5 Å) and Cu (cutoff 4 Å) with 2 layers
    (ghost exchange) and 1 layer, and a 2-block TransIP Cu model."""
    torch.manual_seed(7)
    e0s = [-13.6, -1029.8, -2041.8]
    acac = {n: build_potential({"backbone": _with_layers(acac_backbone, n)}, [1, 6, 8], e0s,
                               1.0, -4.8, 5.0, 12.0).double().eval() for n in (1, 2)}
    cu1 = build_potential({"backbone": _with_layers(acac_backbone, 1)}, [29], [-3.5], 0.5, 0.1,
                          4.0, 40.0).double().eval()
    transip = build_potential({"backbone": TRANSIP}, [29], [-3.5], 0.5, 0.1, 4.0, 40.0).double().eval()
    return {"acac-2": acac[2], "acac-1": acac[1], "cu-2": copper_model, "cu-1": cu1,
            "cu-transip": transip}


def _reference(model, atoms: Atoms) -> dict[str, np.ndarray]:
    """Energy, per-atom energies, forces and (periodic) LAMMPS-order virial from the ASE
    calculator in float64."""
    atoms = atoms.copy()
    atoms.calc = MLIPCalculator(model, device="cpu", dtype="float64")
    out = {"energy": atoms.get_potential_energy(), "energies": atoms.get_potential_energies(),
           "forces": atoms.get_forces()}
    if atoms.pbc.all():  # -dE/d(symmetric strain); ASE's Voigt order is xx yy zz yz xz xy
        w = -atoms.get_stress(voigt=False) * atoms.get_volume()
    else:  # no ghosts: the virial is sum_i x_i F_i^T
        w = atoms.positions.T @ out["forces"]
    out["virial_full"] = w
    out["virial"] = w[[0, 1, 2, 0, 0, 1], [0, 1, 2, 1, 2, 2]]  # LAMMPS's xx yy zz xy xz yz
    return out


def _run(model, atoms: Atoms, data_cls=KokkosData, ghost_cutoff: float | None = None):
    unified = MLIAPUnifiedMLIP(model, device="cpu", dtype="float64")
    cutoff = 2 * unified.rcutfac
    data = data_cls(atoms, unified.element_types, cutoff,
                    cutoff + SKIN if ghost_cutoff is None else ghost_cutoff)
    unified.compute_descriptors(data)  # LAMMPS calls all three, in this order
    unified.compute_gradients(data)
    unified.compute_forces(data)
    assert model.backbone.exchange is None  # the hook lives for one call only
    return data


def _assert_matches(data: PlainData, ref: dict[str, np.ndarray], invariant: bool = True) -> None:
    """``invariant=False``: a model that is not rotation-invariant (TransIP) has a virial
    -sum rij fij^T that is not symmetric, so LAMMPS's six components (the upper triangle)
    differ from the symmetric-strain virial by the antisymmetric part: only the diagonal and
    the symmetric part of the full tensor are compared."""
    assert data.force_calls == 1
    np.testing.assert_allclose(data.energy_value, ref["energy"], rtol=1e-10)
    np.testing.assert_allclose(data.atom_energies(), ref["energies"], rtol=1e-8,
                               atol=1e-8 * np.abs(ref["energies"]).max())
    scale = np.abs(ref["forces"]).max()
    np.testing.assert_allclose(data.forces(), ref["forces"], rtol=1e-8, atol=1e-9 * scale)
    vscale = 1e-9 * np.abs(ref["virial"]).max()
    full = data.virial_full
    np.testing.assert_allclose(0.5 * (full + full.T), 0.5 * (ref["virial_full"] + ref["virial_full"].T),
                               rtol=1e-8, atol=vscale)
    compared = slice(None) if invariant else slice(0, 3)
    np.testing.assert_allclose(data.virial[compared], ref["virial"][compared], rtol=1e-8, atol=vscale)


# --- tests ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("data_cls", [PlainData, KokkosData])
def test_molecule_matches_calculator(models, acac, layers, data_cls):
    """acac (no ghosts): exact with or without the exchange, for 1 and 2 layers."""
    data = _run(models[f"acac-{layers}"], acac, data_cls)
    assert data.ntotal == data.nlocal == 15
    _assert_matches(data, _reference(models[f"acac-{layers}"], acac))


@pytest.mark.parametrize(("name", "triclinic", "ghost_factor"), [
    ("cu-2", False, None),  # LAMMPS's default ghost shell: cutoff + skin
    ("cu-2", True, 2.0),  # a shell of hops * cutoff
    ("cu-transip", True, None),
])
def test_periodic_with_ghost_exchange(models, name, triclinic, ghost_factor):
    """2-layer models in a periodic (cubic, triclinic) Cu cell with ghost atoms: the Kokkos
    exchange makes energy, per-atom energies, forces and virial exact."""
    model, atoms = models[name], _copper(triclinic)
    ghost_cutoff = None if ghost_factor is None else ghost_factor * model.cutoff
    data = _run(model, atoms, KokkosData, ghost_cutoff)
    assert data.ntotal > data.nlocal and (data.pair_j >= data.nlocal).any()
    assert data.exchanges == {"forward": 1, "reverse": 1}  # between the two layers
    _assert_matches(data, _reference(model, atoms), invariant=name != "cu-transip")


@pytest.mark.parametrize("triclinic", [False, True])
def test_one_layer_needs_no_exchange(models, triclinic):
    """A 1-layer model is exact on the plain coupling (no exchange) with ghost atoms."""
    atoms = _copper(triclinic)
    data = _run(models["cu-1"], atoms, PlainData)
    assert data.ntotal > data.nlocal
    _assert_matches(data, _reference(models["cu-1"], atoms))


def test_two_layers_without_exchange_raise(models):
    """2 layers, ghost atoms, no forward_exchange: one clear error, no numbers."""
    data = PlainData(_copper(False), ["Cu"], 4.0, 4.0 + SKIN)
    unified = MLIAPUnifiedMLIP(models["cu-2"], device="cpu")
    with pytest.raises(GhostExchangeError, match="Kokkos ML-IAP ghost exchange.*or a 1-layer model"):
        unified.compute_forces(data)
    assert data.energy_value is None and data.force_calls == 0


def test_hook_is_unset_when_the_exchange_fails(models):
    class Failing(KokkosData):
        def forward_exchange(self, src, dst, vec_len):
            raise RuntimeError("comm failed")

    data = Failing(_copper(False), ["Cu"], 4.0, 4.0 + SKIN)
    with pytest.raises(RuntimeError, match="comm failed"):
        MLIAPUnifiedMLIP(models["cu-2"], device="cpu").compute_forces(data)
    assert models["cu-2"].backbone.exchange is None


def test_from_model_file(models, acac_backbone, tmp_path):
    """Loaded from a file written by save_model: the contract's attributes, the same numbers,
    a lone atom (no pairs) at its E0, and no pickling."""
    path = save_model(tmp_path / "cu.pt", models["cu-2"], {"backbone": acac_backbone}, 40.0)
    unified = MLIAPUnifiedMLIP(path, device="cpu", dtype="float64")
    assert unified.element_types == ["Cu"] and unified.rcutfac == 2.0
    assert unified.ndescriptors == 1 and unified.nparams == 1 and unified.hops == 2
    atoms = _copper(True)
    data = KokkosData(atoms, ["Cu"], 4.0, 4.0 + SKIN)
    unified.compute_forces(data)
    _assert_matches(data, _reference(models["cu-2"], atoms))

    lone = KokkosData(Atoms("Cu", positions=[[0.0, 0.0, 0.0]]), ["Cu"], 4.0, 4.0 + SKIN)
    unified.compute_forces(lone)
    assert lone.npairs == 0 and lone.force_calls == 0
    assert lone.energy_value == pytest.approx(-3.5, abs=1e-12)

    with pytest.raises(TypeError, match="never pickles"):
        pickle.dumps(unified)
    with pytest.raises(TypeError, match="never pickles"):
        unified.pickle(str(tmp_path / "unified.pkl"))
    assert not (tmp_path / "unified.pkl").exists()


def test_half_list_is_refused(models):
    data = KokkosData(_copper(False), ["Cu"], 4.0, 4.0 + SKIN)
    keep = (data.pair_i > data.pair_j) | (data.pair_j >= data.nlocal)  # owned pairs once
    data.pair_i, data.pair_j, data.rij = data.pair_i[keep], data.pair_j[keep], data.rij[keep]
    data.npairs = int(keep.sum())
    with pytest.raises(ValueError, match="not a full neighbour list"):
        MLIAPUnifiedMLIP(models["cu-1"], device="cpu").compute_forces(data)
