"""`mlip eval --equivariance`: float noise for exact backbones (CG, Gaunt), a small real error
for CP below full rank, a large one for an untrained TransIP."""

from __future__ import annotations

import json

import pytest
import torch

from mlip.cli.main import main
from mlip.model.build import build_potential
from mlip.model.io import save_model

BACKBONES = {
    "cg": {"class_path": "mlip.backbones.equivariant.EquivariantBackbone",
           "init_args": {"channels": 8, "lmax_sh": 2, "correlation": 2}},
    "gaunt-fourier": {"class_path": "mlip.backbones.equivariant.EquivariantBackbone",
                      "init_args": {"channels": 8, "lmax_sh": 2, "correlation": 2,
                                    "tensor_product": "gaunt-fourier"}},
    "cp": {"class_path": "mlip.backbones.equivariant.EquivariantBackbone",
           "init_args": {"channels": 8, "lmax_sh": 2, "correlation": 2, "tensor_product": "cp",
                         "tensor_product_args": {"rank": 10}}},
    "transip": {"class_path": "mlip.backbones.transip.TransIPBackbone",
                "init_args": {"width": 32, "depth": 2, "heads": 2, "edge_width": 16}},
}


@pytest.mark.parametrize("name", list(BACKBONES))
def test_eval_equivariance(name, bundled_acac, tmp_path, capsys):
    torch.manual_seed(0)
    config = {"backbone": BACKBONES[name]}
    model = build_potential(config, [1, 6, 8], [-13.6, -1026.9, -2037.8], 1.0, -1.0, 5.0, 12.0)
    path = save_model(tmp_path / "m.pt", model.double(), config, 12.0)
    data = tmp_path / "few.xyz"
    data.write_text("".join((bundled_acac / "test_MD_300K.xyz").read_text().splitlines(True)[:17 * 3]))
    out = tmp_path / "eq.json"
    assert main(["eval", str(path), str(data), "--equivariance", "--rotations", "4",
                 "--json", str(out)]) == 0
    assert "reflection" in capsys.readouterr().out
    eq = json.loads(out.read_text())["results"][0]["equivariance"]
    for kind in ("rotation", "reflection"):
        if name in ("cg", "gaunt-fourier"):  # exact: float64 noise
            assert eq[kind]["forces_max"] < 1e-10 and eq[kind]["energy_max"] < 1e-8
        elif name == "cp":  # rank 10 < 7 L^2: approximate, but not wildly
            assert 1e-8 < eq[kind]["forces_mean"] < 0.5
        else:  # learned equivariance, untrained: a real, measured error
            assert eq[kind]["forces_mean"] > 1e-3
