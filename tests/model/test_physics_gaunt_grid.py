"""The backbone suite (:mod:`mlip.testing.backbone_suite`) on the equivariant backbone with
the Gaunt tensor product on the sphere grid: exact, default tolerances."""

from __future__ import annotations

from mlip.testing.backbone_suite import BackboneTests


class TestGauntGrid(BackboneTests):
    backbone = {
        "class_path": "mlip.backbones.equivariant.EquivariantBackbone",
        "init_args": {"channels": 8, "lmax_hidden": 1, "lmax_sh": 2, "correlation": 3,
                      "num_layers": 2, "num_radial": 6, "radial_hidden": 16,
                      "readout_hidden": 8, "avg_num_neighbors": 10.0,
                      "tensor_product": "mlip.ops.tp.gaunt.GauntGridTensorProduct"},
    }
    # Compiled in full (AOTInductor): the quickstart's backbone, and the one compile of the
    # equivariant backbone in this suite (CG, Gaunt Fourier and CP export only).
    # The compiled check's model: fewer channels and one product less, every code path kept.
    compile_init_args = {"channels": 4, "correlation": 2, "num_radial": 4, "radial_hidden": 8,
                         "readout_hidden": 4}
