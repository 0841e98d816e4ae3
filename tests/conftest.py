"""Shared fixtures: where the test data lives.

The repository is expected beside a ``shared/`` folder (``<parent>/shared/data``) holding
the reference data sets; tests that need them are skipped when it is absent. A copy of
the acac data set is bundled in the repository under ``data/acac``.
"""

from __future__ import annotations

from pathlib import Path

import ase.io
import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``<repo>/../shared/data`` (acac, ethanol, cu_emt, tiny/); skip the test if missing."""
    path = REPO_ROOT.parent / "shared" / "data"
    if not path.is_dir():
        pytest.skip(f"shared test data not found at {path}")
    return path


@pytest.fixture(scope="session")
def bundled_acac() -> Path:
    """The acac data set bundled with the repository (``data/acac``)."""
    path = REPO_ROOT / "data" / "acac"
    if not path.is_dir():
        pytest.skip(f"bundled acac data not found at {path}")
    return path


# --- a small trained model shared by the calculator and MD tests ---------------------------
SMALL_CG_BACKBONE = {
    "class_path": "mlip.backbones.equivariant.EquivariantBackbone",
    "init_args": {"channels": 8, "lmax_hidden": 1, "lmax_sh": 1, "correlation": 2,
                  "num_layers": 2, "radial_hidden": 16},
}


@pytest.fixture(scope="session")
def acac_backbone():
    return dict(SMALL_CG_BACKBONE)


@pytest.fixture(scope="session")
def trained_acac_model(bundled_acac):
    """(Potential in float64, training frames): 150 Adam steps on 20 acac frames."""
    from mlip.graph.build import atoms_to_batch
    from mlip.model.build import build_potential
    from mlip.training.metrics import weighted_loss

    torch.manual_seed(0)
    frames = ase.io.read(bundled_acac / "train_300K.xyz", ":20")
    e0 = {a.numbers[0]: a.get_potential_energy()
          for a in ase.io.read(bundled_acac / "isolated_atoms.xyz", ":")}
    model = build_potential({"backbone": SMALL_CG_BACKBONE}, [1, 6, 8], [e0[1], e0[6], e0[8]],
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
    from mlip.model.build import build_potential

    torch.manual_seed(1)
    model = build_potential({"backbone": SMALL_CG_BACKBONE}, [29], [-3.5], 0.5, 0.1, 4.0, 40.0)
    return model.double().eval()


@pytest.fixture(scope="session")
def md_quality_model(bundled_acac):
    """(float64 Potential, frames): 16 channels, trained 1500 steps on 100 acac frames
    (force RMSE ~0.11 eV/Å): stable in MD, unlike the few-second models above."""
    from mlip.graph.build import atoms_to_batch
    from mlip.model.build import build_potential
    from mlip.training.metrics import weighted_loss

    torch.manual_seed(0)
    frames = ase.io.read(bundled_acac / "train_300K.xyz", ":100")
    e0 = {a.numbers[0]: a.get_potential_energy()
          for a in ase.io.read(bundled_acac / "isolated_atoms.xyz", ":")}
    backbone = {**SMALL_CG_BACKBONE, "init_args": {**SMALL_CG_BACKBONE["init_args"],
                                                   "channels": 16, "lmax_sh": 2}}
    model = build_potential({"backbone": backbone}, [1, 6, 8], [e0[1], e0[6], e0[8]],
                            1.05, -4.86, 5.0, 12.1)
    steps = 1500
    opt = torch.optim.Adam(model.parameters(), lr=0.01, amsgrad=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.01, total_steps=steps)
    batches = [atoms_to_batch(frames[k:k + 5], 5.0, dtype=torch.float32) for k in range(0, 100, 5)]
    for step in range(steps):
        data = batches[step % len(batches)]
        opt.zero_grad()
        weighted_loss(model(data, training=True), data, 1.0, 100.0, 0.0)["loss"].backward()
        opt.step()
        sched.step()
    return model.double().eval(), frames
