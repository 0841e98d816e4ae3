"""A small CG model trained for a few seconds on acac frames, shared by calculator/MD tests."""

from __future__ import annotations

import ase.io
import pytest
import torch

from mlip.graph.build import atoms_to_batch
from mlip.model.build import build_potential
from mlip.training.metrics import weighted_loss

BACKBONE = {
    "class_path": "mlip.backbones.equivariant.EquivariantBackbone",
    "init_args": {"channels": 8, "lmax_hidden": 1, "lmax_sh": 1, "correlation": 2,
                  "num_layers": 2, "radial_hidden": 16},
}


@pytest.fixture(scope="session")
def acac_backbone():
    return dict(BACKBONE)


@pytest.fixture(scope="session")
def trained_acac_model(bundled_acac):
    """(Potential in float64, training frames): 150 Adam steps on 20 acac frames."""
    torch.manual_seed(0)
    frames = ase.io.read(bundled_acac / "train_300K.xyz", ":20")
    e0 = {a.numbers[0]: a.get_potential_energy()
          for a in ase.io.read(bundled_acac / "isolated_atoms.xyz", ":")}
    model = build_potential({"backbone": BACKBONE}, [1, 6, 8], [e0[1], e0[6], e0[8]],
                            1.0, -4.8, 5.0, 12.0)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    batches = [atoms_to_batch(frames[k:k + 5], 5.0, dtype=torch.float32) for k in range(0, 20, 5)]
    for step in range(150):
        data = batches[step % 4]
        opt.zero_grad()
        weighted_loss(model(data, training=True), data, 1.0, 100.0, 0.0)["loss"].backward()
        opt.step()
    return model.double().eval(), frames


@pytest.fixture(scope="session")
def copper_model():
    """An untrained (random) Cu model: stress/force identities hold for any weights."""
    torch.manual_seed(1)
    model = build_potential({"backbone": BACKBONE}, [29], [-3.5], 0.5, 0.1, 4.0, 40.0)
    return model.double().eval()
