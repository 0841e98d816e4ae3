"""The backbone suite (:mod:`mlip.testing.backbone_suite`) on the equivariant backbone with
the e3nn Clebsch-Gordan tensor product, the reference: exact, default tolerances."""

from __future__ import annotations

from mlip.testing.backbone_suite import BackboneTests


class TestCG(BackboneTests):
    backbone = {
        "class_path": "mlip.backbones.equivariant.EquivariantBackbone",
        "init_args": {"channels": 8, "lmax_hidden": 1, "lmax_sh": 2, "correlation": 3,
                      "num_layers": 2, "num_radial": 6, "radial_hidden": 16,
                      "readout_hidden": 8, "avg_num_neighbors": 10.0,
                      "tensor_product": "mlip.ops.tp.cg.CGTensorProduct"},
    }
    # The compiled check traces and exports the force function only: the equivariant
    # backbone is compiled in full in test_physics_gaunt_grid.py, and a trained CG model in
    # tests/calculator/test_compile.py.
    compile_mode = "export"
    # The compiled check's model: fewer channels and one product less, every code path kept.
    compile_init_args = {"channels": 4, "correlation": 2, "num_radial": 4, "radial_hidden": 8,
                         "readout_hidden": 4}
