"""torch.compile of the model for inference gives the eager forces."""

from __future__ import annotations

import numpy as np
import pytest

from mlip.calculator import MLIPCalculator


@pytest.mark.slow
def test_compiled_equals_eager(trained_acac_model):
    """Compilation takes 1-3 minutes on 2 CPU cores (C++ codegen), hence slow."""
    model, frames = trained_acac_model
    eager, compiled = frames[0].copy(), frames[0].copy()
    eager.calc = MLIPCalculator(model, device="cpu")
    compiled.calc = MLIPCalculator(model, device="cpu", compile=True)
    for step in range(3):  # a few MD-like calls with moving atoms
        for atoms in (eager, compiled):
            atoms.positions[2] += 0.01 * step
        np.testing.assert_allclose(compiled.get_forces(), eager.get_forces(), rtol=1e-9, atol=1e-9)
        assert compiled.get_potential_energy() == pytest.approx(eager.get_potential_energy(), abs=1e-9)
    assert model.backbone.__class__.__name__ == "EquivariantBackbone"  # caller's model untouched
