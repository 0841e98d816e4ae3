"""Tabulated radial networks (inference copies): the same energies, forces and stress as
the network to the table's measured error, forces still -dE/dr, the ZBL core built in, and
the compiled path tabulates float32 models only."""

from __future__ import annotations

import copy

import ase.io
import numpy as np
import pytest
import torch
from ase.build import bulk

from mlip.inference import compiled as compiled_module
from mlip.model.build import build_potential
from mlip.testing import physics


def small_model(tensor_product: str, **tp_args) -> torch.nn.Module:
    torch.manual_seed(0)
    backbone = {"class_path": "mlip.backbones.equivariant.EquivariantBackbone",
                "init_args": {"channels": 8, "lmax_hidden": 1, "lmax_sh": 2, "correlation": 2,
                              "num_layers": 2, "radial_hidden": 16, "tensor_product": tensor_product,
                              "tensor_product_args": tp_args}}
    config = {"backbone": backbone, "repulsion": {"reference": "covalent", "inner": 0.35, "outer": 0.6}}
    return build_potential(config, [1, 6, 8, 29], [-13.6, -1029.0, -2041.0, -1.0], 1.0, 0.0, 5.0,
                           12.0).double()


def squeezed_frame(bundled_acac):
    frame = ase.io.read(bundled_acac / "train_300K.xyz", 1)
    # O 3 inside the C-O switch region of C 4 (0.40-0.69 Å), O 5 in the core of C 6.
    frame.positions[3] = frame.positions[4] + [0.35, 0.4, 0.1]
    frame.positions[5] = frame.positions[6] + [0.0, 0.3, 0.0]
    return frame


@pytest.mark.parametrize("tensor_product,tp_args", [
    ("gaunt-grid", {}), ("gaunt-grid", {"shared_operand": "native"}), ("cg", {}), ("cp", {})])
def test_tabulated_equals_network(tensor_product, tp_args, bundled_acac):
    model = small_model(tensor_product, **tp_args)
    table_model = copy.deepcopy(model)
    table = table_model.tabulate_radial(1e-8)
    assert table is not None and table_model.backbone.radial_table is table
    assert table.max_error <= 1e-8 and table.spacing <= 0.02
    frames = [squeezed_frame(bundled_acac), ase.io.read(bundled_acac / "train_300K.xyz", 7)]
    ref = physics.predict(model, frames)
    got = physics.predict(table_model, frames)
    assert np.abs(got["energy"] - ref["energy"]).max() < 1e-7
    assert np.abs(got["forces"] - ref["forces"]).max() < 1e-7 * np.abs(ref["forces"]).max()
    # conservative: the forces are -dE/dr of the tabulated energy, also inside the switch
    assert physics.measure_force_fd_error(table_model, frames[0], h=1e-4, num_atoms=15) < 1e-6


def test_tabulated_stress_and_the_core(bundled_acac):
    model = small_model("gaunt-grid")
    table_model = copy.deepcopy(model)
    table_model.tabulate_radial(1e-8)
    cu = bulk("Cu", "fcc", a=3.6, cubic=True)
    cu.rattle(0.05, seed=1)
    ref = physics.predict(model, [cu], stress=True)
    got = physics.predict(table_model, [cu], stress=True)
    assert np.abs(got["stress"] - ref["stress"]).max() < 1e-7 * np.abs(ref["stress"]).max()
    assert physics.measure_stress_fd_error(table_model, cu) < 1e-6
    # A pair deep inside the core: the learned part sees nothing, with or without the table.
    dimer = ase.Atoms("CO", positions=[[0, 0, 0], [0, 0, 0.3]])
    assert physics.predict(table_model, [dimer])["energy"][0] == pytest.approx(
        physics.predict(model, [dimer])["energy"][0], abs=1e-9)


def test_compiled_copies_tabulate_float32_only(bundled_acac):
    model = small_model("gaunt-grid")
    frozen32 = compiled_module.frozen_copy(copy.deepcopy(model).float(), radial_table=True)
    assert frozen32.backbone.radial_table is not None  # exact to float32's epsilon
    assert frozen32.backbone.radial_table.coefficients.dtype == torch.float32
    frozen64 = compiled_module.frozen_copy(model, radial_table=True)
    assert frozen64.backbone.radial_table is None  # float64 packages keep the networks
    assert copy.deepcopy(model).tabulate_radial(torch.finfo(torch.float64).eps) is None  # why
    assert compiled_module.frozen_copy(copy.deepcopy(model).float(), radial_table=False
                                        ).backbone.radial_table is None
    assert model.backbone.radial_table is None  # the caller's model untouched


def test_backbones_without_a_table_form_are_left_alone():
    torch.manual_seed(0)
    backbone = {"class_path": "mlip.backbones.transip.TransIPBackbone",
                "init_args": {"width": 16, "depth": 1, "heads": 2, "edge_width": 16}}
    model = build_potential({"backbone": backbone}, [1, 6, 8], [-13.6, -1029.0, -2041.0], 1.0, 0.0,
                            5.0, 12.0)
    assert model.tabulate_radial(1.0) is None
