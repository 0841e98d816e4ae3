"""The test suite every backbone runs: subclass :class:`BackboneTests` in a test module.

A backbone's test module gives a small model of the backbone (class path and init args)
and, where the backbone is only approximately equivariant, its measured tolerances::

    from mlip.testing.backbone_suite import BackboneTests

    class TestMyBackbone(BackboneTests):
        backbone = {"class_path": "mypackage.MyBackbone", "init_args": {"width": 16}}

pytest then runs every check below on it (the base class itself is not collected: its
name does not start with ``Test``). All checks use the :mod:`mlip.testing.physics`
metrics (energies in eV/atom, forces and stress relative to the largest reference
component) on small structures built here with ASE, so the suite needs no files:

* rotation invariance of the energy and equivariance of forces and stress, proper and
  improper rotations, on a molecule and a triclinic Cu cell, float64 and float32;
* translation and permutation of the atoms (float64, also the stress of the Cu cell);
* forces = -dE/dr (5-point central differences) on a molecule and a Cu cell;
* stress = (1/V) dE/d(strain) on a cubic and a triclinic Cu cell;
* locality: a lone atom beyond everyone's cutoff adds exactly its E0 and changes no force;
  energy and force of a dimer vanish at the cutoff; an isolated atom has exactly E0;
* periodic images: 2x1x1 and 2x2x2 supercells have 2x and 8x the energy, the cell's
  forces on every image and the same stress;
* a batch of structures of different sizes (molecules and cells) equals one at a time;
* float32 agrees with float64 (same weights);
* the compiled force path (:mod:`mlip.inference.compiled`) equals eager.

The model comes from one factory, :func:`build_model`; structures from :func:`molecule`
and :func:`copper`. Importing this module needs pytest (a development dependency).
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import ase
import ase.build
import numpy as np
import pytest
import torch

from mlip.backbones.base import Backbone
from mlip.classpath import import_class
from mlip.model.potential import Potential
from mlip.testing import physics

# The suite's model: H, C, O (molecules) and Cu (cells), E0s of the right size (total
# energies of thousands of eV, as in real data) [eV].
ELEMENTS = (1, 6, 8, 29)
E0S = (-13.6, -1029.0, -2041.0, -3.5)
CUTOFF = 4.5  # Å


def build_model(backbone: dict[str, Any], dtype: torch.dtype = torch.float64, seed: int = 0,
                cutoff: float = CUTOFF) -> Potential:
    """A small random :class:`~mlip.model.potential.Potential` around ``backbone``.

    The one place the suite builds models. The backbone class comes from its class path
    and gets ``num_elements`` and ``cutoff`` (the :class:`~mlip.backbones.base.Backbone`
    contract) besides its ``init_args``; :meth:`Potential.prepare` fills fitted
    constants. Every parameter then gets Gaussian noise (0.1) so no term hides behind a
    structured initialisation (all-ones weights, zero last layers). Built in float32 and
    cast, so the float32 and float64 models of one seed have the same weights. The global
    random state is left as it was.

    Args:
        backbone: ``{"class_path": ..., "init_args": {...}}``.
        dtype: of the returned model.
        seed: of the initialisation and the noise.
        cutoff: [Å].
    """
    cls = import_class(backbone["class_path"], base=Backbone, what="backbone")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        module = cls(num_elements=len(ELEMENTS), cutoff=cutoff, **backbone.get("init_args", {}))
        model = Potential(module, list(ELEMENTS), list(E0S), scale=0.7,
                          shift=[-0.3, -0.5, -0.4, -0.2], cutoff=cutoff, avg_num_neighbors=10.0)
        model.prepare()
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.1 * torch.randn_like(p))
    return model.to(dtype).eval()


def molecule(name: str = "CH3CH2OH", seed: int = 0) -> ase.Atoms:
    """An ASE molecule (g2 set) with every atom moved ~0.05 Å off its symmetric geometry
    (no force cancels by symmetry)."""
    atoms = ase.build.molecule(name)
    atoms.rattle(0.05, seed=seed)
    return atoms


def copper(triclinic: bool = True, seed: int = 0) -> ase.Atoms:
    """The 4-atom cubic fcc Cu cell (a = 3.6 Å, shorter than the cutoff: atoms see their
    own images), sheared to a triclinic cell unless ``triclinic=False``, atoms rattled."""
    atoms = ase.build.bulk("Cu", "fcc", a=3.6, cubic=True)
    if triclinic:
        shear = np.array([[1.0, 0.06, -0.03], [0.02, 0.97, 0.04], [0.05, -0.02, 1.03]])
        atoms.set_cell(atoms.cell.array @ shear, scale_atoms=True)
    atoms.rattle(0.08, seed=seed)
    return atoms


@dataclasses.dataclass(frozen=True)
class Tolerances:
    """Bounds of the suite's checks. Energy [eV/atom] unless stated, forces and stress
    relative (see :mod:`mlip.testing.physics`). The defaults are those of an exactly
    equivariant backbone: at least 10x the largest error measured on the CG, Gaunt (grid,
    Fourier), CP and TransIP models of the suite, model seeds 0-3 (exact identities in
    float64: energy 1e-13, forces 4e-14; float32: energy 1.3e-7, forces 8.5e-6)."""

    # rotations and reflections, per dtype: energy, forces and stress (float64 measured on
    # CG/Gaunt: energy 0, forces 1.7e-14; float32: 4.1e-8, 6.3e-6)
    rotation_energy: dict = dataclasses.field(
        default_factory=lambda: {torch.float64: 1e-11, torch.float32: 1e-6})
    rotation_forces: dict = dataclasses.field(
        default_factory=lambda: {torch.float64: 1e-11, torch.float32: 1e-4})
    # identities every backbone meets to rounding (float64): translation, permutation,
    # locality, supercells, batching
    exact_energy: float = 1e-11
    exact_forces: float = 1e-11
    # 5-point differences, h = 1e-3 Å: truncation error up to 8.5e-8 (Gaunt, ethanol)
    force_fd: float = 1e-6
    stress_fd: float = 1e-7  # measured up to 2.7e-9 (TransIP)
    cutoff_energy: float = 1e-10  # [eV], measured 0
    cutoff_forces: float = 1e-10  # [eV/Å], measured up to 3.4e-14
    isolated_atom: float = 1e-10  # [eV], measured 0
    # the float32 model against the float64 one (energies accumulate in float64)
    float32_energy: float = 1e-6
    float32_forces: float = 1e-4
    # compiled float64 against eager float64
    compiled_energy: float = 1e-11
    compiled_forces: float = 1e-10


DTYPES = (torch.float64, torch.float32)
DTYPE_IDS = ("float64", "float32")


class BackboneTests:
    """The checks every backbone passes; a test module subclasses this as ``Test<Name>``.

    Attributes (set by the subclass):
        backbone: ``{"class_path", "init_args"}`` of a small model (few channels, degree
            1-2): the suite adds ``num_elements`` and ``cutoff``.
        tolerances: :class:`Tolerances` (default: exact); approximate backbones replace
            the bounds they cannot meet with measured ones (say the measured value).
        compile_init_args: init_args merged over ``backbone``'s for the compiled check
            (AOTInductor takes ~30-50 s even for the smallest model on a CPU): as small as
            the backbone allows while every code path stays.
        compile_mode: ``"aot"`` (default): the AOTInductor package; ``"export"``: only
            the exported program it is compiled from, for a backbone whose compiled code
            another backbone's ``"aot"`` check already covers (say which).
    """

    backbone: ClassVar[dict[str, Any]]
    tolerances: ClassVar[Tolerances] = Tolerances()
    compile_init_args: ClassVar[dict[str, Any]] = {}
    compile_mode: ClassVar[str] = "aot"

    # -- fixtures ---------------------------------------------------------------------------
    @pytest.fixture(scope="class")
    @classmethod
    def models(cls) -> dict[torch.dtype, Potential]:
        """The backbone's model in float64 and float32 (same weights)."""
        return {dtype: build_model(cls.backbone, dtype) for dtype in DTYPES}

    @pytest.fixture(scope="class")
    @classmethod
    def model(cls, models) -> Potential:
        return models[torch.float64]

    # -- symmetry -----------------------------------------------------------------------------
    @pytest.mark.parametrize("reflect", [False, True], ids=["proper", "improper"])
    @pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
    def test_rotation(self, models, dtype, reflect):
        tol = self.tolerances
        for atoms in (molecule(), copper()):
            err = physics.measure_rotation_error(models[dtype], atoms, num=3, reflect=reflect)
            assert err["energy"] < tol.rotation_energy[dtype], (atoms.symbols, err)
            assert err["forces"] < tol.rotation_forces[dtype], (atoms.symbols, err)
            assert err.get("stress", 0.0) < tol.rotation_forces[dtype], (atoms.symbols, err)

    @pytest.mark.parametrize("kind", ["translation", "permutation"])
    def test_translation_and_permutation(self, model, kind):
        measure = {"translation": physics.measure_translation_error,
                   "permutation": physics.measure_permutation_error}[kind]
        for atoms in (molecule(), copper()):
            err = measure(model, atoms, seed=1)
            self._assert_exact(err, atoms)

    # -- derivatives -------------------------------------------------------------------------
    def test_forces_are_minus_energy_gradient(self, model):
        for atoms in (molecule(), copper()):
            err = physics.measure_force_fd_error(model, atoms, num_atoms=3)
            assert err < self.tolerances.force_fd, (atoms.symbols, err)

    @pytest.mark.parametrize("triclinic", [False, True], ids=["cubic", "triclinic"])
    def test_stress_matches_strained_cells(self, model, triclinic):
        err = physics.measure_stress_fd_error(model, copper(triclinic))
        assert err < self.tolerances.stress_fd, err

    # -- locality ----------------------------------------------------------------------------
    def test_distant_atom_changes_nothing(self, model):
        err = physics.measure_locality_error(model, molecule())
        self._assert_exact(err, "molecule + distant atom")

    def test_energy_and_force_vanish_at_the_cutoff(self, model):
        err = physics.measure_cutoff_continuity(model, z=(6, 8))
        assert err["energy"] < self.tolerances.cutoff_energy, err
        assert err["forces"] < self.tolerances.cutoff_forces, err

    def test_isolated_atom_is_e0(self, model):
        assert physics.measure_isolated_atom_error(model) < self.tolerances.isolated_atom

    # -- periodic images and batching ------------------------------------------------------------
    @pytest.mark.parametrize("repeat", [(2, 1, 1), (2, 2, 2)], ids=["2x1x1", "2x2x2"])
    def test_supercell(self, model, repeat):
        self._assert_exact(physics.measure_supercell_error(model, copper(), repeat), repeat)

    def test_batched_equals_one_at_a_time(self, model):
        mixed = [molecule(), molecule("H2O", seed=1), copper(), molecule("CH3COCH3", seed=2)]
        self._assert_exact(physics.measure_batch_error(model, mixed), "mixed")
        cells = [copper(triclinic=False, seed=3), copper(seed=4).repeat((1, 2, 1))]
        self._assert_exact(physics.measure_batch_error(model, cells), "cells")

    # -- dtypes and compiled code ----------------------------------------------------------------
    def test_float32_matches_float64(self, models):
        structures = [molecule(), copper(), molecule("CH3COCH3", seed=2)]
        err = physics.measure_dtype_error(models[torch.float32], models[torch.float64],
                                          structures, stress=True)
        assert err["energy"] < self.tolerances.float32_energy, err
        assert err["forces"] < self.tolerances.float32_forces, err
        assert err["stress"] < self.tolerances.float32_forces, err

    def test_compiled_matches_eager(self):
        """The compiled force path (energy, forces, stress) of the smallest model of the
        backbone against eager float64: traced on one cell, run on a larger, compressed one
        (other atom and edge counts). ``compile_mode="aot"``: the AOTInductor package
        (compiled into a temporary folder); ``"export"``: the exported program it is
        compiled from, run as a module (no C++ step)."""
        from mlip.data import keys
        from mlip.graph.build import atoms_to_batch
        from mlip.inference.compiled import INPUT_KEYS, CompiledForceField, export_force_function

        backbone = {**self.backbone, "init_args": {**self.backbone.get("init_args", {}),
                                                   **self.compile_init_args}}
        model = build_model(backbone, torch.float64)

        def batch(atoms):
            return atoms_to_batch([atoms], model.cutoff, dtype=torch.float64)

        if self.compile_mode == "aot":
            run = CompiledForceField(model, batch(copper()), stress=True, cache=False)
        else:
            program = export_force_function(model, batch(copper()), stress=True).module()

            def run(data):
                out = program(*[data[k] for k in INPUT_KEYS])
                return dict(zip((keys.ENERGY, keys.ATOMIC_ENERGIES, keys.FORCES, keys.STRESS),
                                out, strict=True))

        other = copper(seed=5).repeat((1, 1, 2))
        other.set_cell(other.cell.array * 0.97, scale_atoms=True)  # more edges per atom
        data = batch(other)
        out = physics.as_numpy(run(data))
        ref = physics.as_numpy(model(data, compute_forces=True, compute_stress=True))
        err = physics.compare(out, ref, len(other))
        assert err["energy"] < self.tolerances.compiled_energy, err
        assert err["forces"] < self.tolerances.compiled_forces, err
        assert err["stress"] < self.tolerances.compiled_forces, err

    # -- helpers -----------------------------------------------------------------------------
    def _assert_exact(self, err: dict[str, float], what: Any) -> None:
        tol = self.tolerances
        assert err["energy"] < tol.exact_energy, (what, err)
        assert err["forces"] < tol.exact_forces, (what, err)
        assert err.get("stress", 0.0) < tol.exact_forces, (what, err)
