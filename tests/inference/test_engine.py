"""The inference engine: one object behind every adapter, its checks and their messages."""

from __future__ import annotations

import ase
import ase.io
import numpy as np
import pytest
import torch
from ase.build import bulk

from mlip.calculator import MLIPCalculator
from mlip.data import keys
from mlip.data.readers import atoms_to_structure
from mlip.graph.build import atoms_to_batch
from mlip.inference import AtomsTooCloseError, ForceField, NonFiniteOutputError, UnknownElementError
from mlip.md.ase_driver import MDSettings
from mlip.md.replicas import run_replicas


def _copper(shift: float = 0.0) -> ase.Atoms:
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
    atoms.positions[1] += [shift, 0.05, -0.03]
    return atoms


def test_predict_equals_the_model_for_many_structures(trained_acac_model, copper_model):
    """One batched predict() == the model on each structure alone (float64)."""
    model, frames = trained_acac_model
    engine = ForceField(model, device="cpu")
    results = engine.predict(frames[:3])
    for atoms, r in zip(frames[:3], results, strict=True):
        ref = model(atoms_to_batch([atoms], model.cutoff, dtype=torch.float64))
        assert r["energy"] == pytest.approx(float(ref[keys.ENERGY][0]), abs=1e-9)
        np.testing.assert_allclose(r["forces"], ref[keys.FORCES].detach().numpy(), atol=1e-10)
        assert "stress" not in r
    cells = [_copper(0.0), _copper(0.1)]
    got = ForceField(copper_model, device="cpu").predict(cells)
    for atoms, r in zip(cells, got, strict=True):
        ref = copper_model(atoms_to_batch([atoms], copper_model.cutoff, dtype=torch.float64),
                           compute_stress=True)
        np.testing.assert_allclose(r["stress"], ref[keys.STRESS][0].detach().numpy(), atol=1e-12)


def test_every_adapter_drives_one_engine(trained_acac_model):
    """The calculator and the replicas given one ForceField use its model and settings and
    give the same energies; neither builds a second engine."""
    model, frames = trained_acac_model
    engine = ForceField(model, device="cpu", skin=0.3, min_distance=None)
    atoms = frames[4].copy()
    atoms.calc = MLIPCalculator(engine)
    assert atoms.calc.engine is engine and atoms.calc.model is engine.model
    energy = atoms.get_potential_energy()
    assert energy == pytest.approx(engine.predict(atoms)[0]["energy"], abs=1e-9)
    settings = MDSettings(ensemble="nve", temperature_K=0.0, timestep_fs=0.5, steps=0, progress=False)
    calls = engine.timings["calls"]
    run_replicas(engine, frames[4], settings, k=2)
    assert engine.timings["calls"] == calls + 1  # the replicas' first force call went through it
    with pytest.raises(ValueError, match=r"set \['skin'\] on the ForceField"):
        MLIPCalculator(engine, skin=1.0)


def test_the_caller_model_is_never_modified(trained_acac_model):
    model, _ = trained_acac_model
    model.train()
    try:
        engine = ForceField(model, device="cpu", dtype="float32")
        assert engine.model is not model and not engine.model.training
        assert engine.dtype == torch.float32 and next(model.parameters()).dtype == torch.float64
        assert model.training and all(p.requires_grad for p in model.parameters())
    finally:
        model.eval()
    assert ForceField(model, device="cpu").model is model  # eval mode, same device and dtype


def test_errors_name_the_system_and_atoms(trained_acac_model):
    model, frames = trained_acac_model
    engine = ForceField(model, device="cpu", min_distance=0.7)
    squeezed = frames[4].copy()
    squeezed.positions[3] = squeezed.positions[2] + [0.5, 0.0, 0.0]
    message = r"atoms [23] \(\w+\) and [23] \(\w+\) are 0.500 Å apart, closer than min_distance=0.7"
    squeezed.calc = MLIPCalculator(engine)
    with pytest.raises(AtomsTooCloseError, match="^" + message):
        squeezed.get_potential_energy()
    tracked = engine.track([atoms_to_structure(frames[4]), atoms_to_structure(squeezed)], where="replica")
    pos = torch.as_tensor(np.concatenate([frames[4].positions, squeezed.positions]), dtype=torch.float64)
    with pytest.raises(AtomsTooCloseError, match="^replica 1: " + message):
        tracked.compute(pos)
    silicon = bulk("Si", "diamond", a=5.43)
    with pytest.raises(UnknownElementError, match=r"^structure 1: element\(s\) \['Si'\]"):
        engine.predict([frames[0], silicon])
    with pytest.raises(UnknownElementError, match=r"^replica 0: element\(s\) \['Si'\]"):
        engine.track([atoms_to_structure(silicon)], where="replica")


def test_non_finite_outputs_name_the_structure_and_atoms(trained_acac_model):
    model, frames = trained_acac_model
    engine = ForceField(model, device="cpu", min_distance=None)
    tracked = engine.track([atoms_to_structure(a) for a in frames[:3]], where="system")
    pos = torch.as_tensor(np.concatenate([a.positions for a in frames[:3]]), dtype=torch.float64)
    out = tracked.compute(pos, check_finite=False)
    assert not tracked.non_finite(out).any()
    n = len(frames[0])
    forces = out[keys.FORCES].detach().clone()
    forces[n + 4] = float("nan")
    poisoned = {**out, keys.FORCES: forces}
    assert tracked.non_finite(poisoned).tolist() == [False, True, False]
    with pytest.raises(NonFiniteOutputError, match=r"system\(s\) \[1\] \(non-finite at atom indices \[4\]\)"):
        tracked.check_finite(poisoned)
    single = engine.track([atoms_to_structure(frames[0])])
    out = single.compute(pos[:n], check_finite=False)
    energy = out[keys.ENERGY].detach().clone()
    energy[0] = float("inf")
    with pytest.raises(NonFiniteOutputError, match=r"for C5H8O2: the structure is probably far"):
        single.check_finite({**out, keys.ENERGY: energy})


def test_fixed_shapes_drop_the_ghost_row_of_every_output(trained_acac_model):
    """Every per-atom and per-structure output of a fixed-shape batch loses the ghost's
    row, node features included (classified in mlip.data.keys, not a list in the skin list)."""
    model, frames = trained_acac_model
    structures = [atoms_to_structure(a) for a in frames[:2]]
    pos = torch.as_tensor(np.concatenate([a.positions for a in frames[:2]]), dtype=torch.float64)
    fixed = ForceField(model, device="cpu", fixed_shapes=True).track(structures).compute(pos)
    plain = ForceField(model, device="cpu").track(structures).compute(pos)
    assert set(fixed) == set(plain) and keys.NODE_FEATURES in fixed
    for k, v in plain.items():
        assert fixed[k].shape == v.shape, k
        torch.testing.assert_close(fixed[k], v, rtol=1e-10, atol=1e-10)


def test_every_batch_key_is_classified():
    names = [v for k, v in vars(keys).items() if k.isupper() and isinstance(v, str)]
    assert names and all(keys.kind(v) in ("node", "edge", "graph") for v in names)
    assert not (keys.NODE_KEYS & keys.EDGE_KEYS or keys.NODE_KEYS & keys.GRAPH_KEYS
                or keys.EDGE_KEYS & keys.GRAPH_KEYS)
    with pytest.raises(KeyError, match="not classified"):
        keys.kind("made_up")


def test_devices_and_dtypes_are_checked():
    from mlip.inference.engine import compile_mode, resolve_device, resolve_dtype

    assert resolve_device("auto").type in ("cpu", "cuda") and resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="unknown device 'gpu'"):
        resolve_device("gpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")
    assert resolve_dtype("float64") is torch.float64 and resolve_dtype(None) is None
    with pytest.raises(ValueError, match="float32' or 'float64"):
        resolve_dtype("half")
    assert compile_mode(True) == "aot" and compile_mode(False) == "none"
    with pytest.raises(ValueError, match="compile must be"):
        compile_mode("fast")
