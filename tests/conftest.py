"""Shared fixtures: the test data, generated at test time (no data outside the repository).

* ``bundled_acac``: the acac data set bundled with the repository (``data/acac``).
* ``session_cache`` (automatic): $MLIP_CACHE_DIR set to a session folder, so the suite
  leaves the user's cache alone.
* ``tiny``: a session folder of small files written from the bundled acac text and ASE's EMT
  calculator: ``acac_20.xyz`` (acac frames 0-19), the bad inputs ``malformed.xyz``,
  ``nan_forces.xyz``, ``no_forces.xyz``, a periodic Cu set ``cu_emt_10.xyz`` with energy,
  forces and stress, and ``cu_isolated_atom.xyz`` (one Cu atom, energy only).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import ase.io
import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator

REPO_ROOT = Path(__file__).resolve().parents[1]
ACAC_ATOMS = 15  # atoms per acac frame; a frame is 2 + 15 lines of extended XYZ
ACAC_FORCES_PROPERTIES = "Properties=species:S:1:pos:R:3:forces:R:3"

# Cu frames of ``cu_emt_10.xyz``: (variant, temperature [K]) -> 8 cells of 108 atoms and two
# 107-atom vacancy cells; frame 0 is bulk, frame 3 expanded, frame 6 sheared (non-orthogonal).
CU_FRAMES = [("bulk", 300), ("bulk", 800), ("bulk", 1400), ("iso+3", 800), ("iso-3", 300),
             ("iso-3", 1400), ("shear", 300), ("shear", 800), ("vacancy", 800),
             ("vacancy", 1400)]
CU_A0 = 3.59  # Å, close to EMT's equilibrium lattice constant (3.5898 Å)
CU_SHEAR = np.array([[1.0, 0.02, 0.0], [0.02, 1.0, 0.01], [0.0, 0.01, 1.0]])


@pytest.fixture(scope="session", autouse=True)
def session_cache(tmp_path_factory):
    """The suite never writes to the user's cache folder: $MLIP_CACHE_DIR (CP factors,
    compiled packages, converted data) is a fresh session folder, shared by the tests (and
    inherited by the processes they start); tests that need their own set it again."""
    patch = pytest.MonkeyPatch()
    folder = tmp_path_factory.mktemp("mlip-cache")
    patch.setenv("MLIP_CACHE_DIR", str(folder))
    yield folder
    patch.undo()


@pytest.fixture(scope="session")
def bundled_acac() -> Path:
    """The acac data set bundled with the repository (``data/acac``)."""
    path = REPO_ROOT / "data" / "acac"
    assert (path / "train_300K.xyz").is_file(), f"the bundled acac data is missing from {path}"
    return path


def _acac_frames(bundled_acac: Path, count: int) -> list[list[str]]:
    """The first ``count`` frames of ``train_300K.xyz`` as lists of text lines (with newlines)."""
    lines = (bundled_acac / "train_300K.xyz").read_text().splitlines(keepends=True)
    size = ACAC_ATOMS + 2
    return [lines[k * size:(k + 1) * size] for k in range(count)]


def _without_forces(frame: list[str]) -> list[str]:
    header = frame[1].replace(ACAC_FORCES_PROPERTIES, "Properties=species:S:1:pos:R:3")
    assert header != frame[1]
    atoms = ["    ".join(line.split()[:4]) + "\n" for line in frame[2:]]
    return [frame[0], header, *atoms]


def _with_nan_forces(frame: list[str], atom: int) -> list[str]:
    out = list(frame)
    out[2 + atom] = "    ".join(frame[2 + atom].split()[:4] + ["nan"] * 3) + "\n"
    return out


def write_cu_emt(path: Path, seed: int = 0) -> list[Atoms]:
    """fcc Cu cells (3x3x3 cubic, a = 3.59 Å) of :data:`CU_FRAMES` with EMT labels.

    Variants: ``bulk``; ``iso+3`` / ``iso-3`` (lengths x1.03 / x0.97); ``shear`` (cell and
    atoms deformed by :data:`CU_SHEAR`); ``vacancy`` (atom 0 removed). Atoms are displaced
    from their sites by Gaussian noise of 0.05 Å sqrt(T / 300 K) per component, roughly the
    thermal spread of EMT Cu. Written as extended XYZ with a SinglePointCalculator (energy
    [eV], forces [eV/Å], stress [eV/Å^3]), so ASE reads them back as calculator results.
    """
    rng = np.random.default_rng(seed)
    frames = []
    for variant, temperature in CU_FRAMES:
        atoms = bulk("Cu", "fcc", a=CU_A0, cubic=True).repeat((3, 3, 3))
        deform = {"iso+3": 1.03 * np.eye(3), "iso-3": 0.97 * np.eye(3), "shear": CU_SHEAR}
        if variant in deform:
            atoms.set_cell(atoms.cell.array @ deform[variant].T, scale_atoms=True)
        if variant == "vacancy":
            del atoms[0]
        atoms.positions += rng.normal(scale=0.05 * np.sqrt(temperature / 300), size=(len(atoms), 3))
        atoms.wrap()
        atoms.calc = EMT()
        results = {"energy": atoms.get_potential_energy(), "forces": atoms.get_forces(),
                   "stress": atoms.get_stress()}
        atoms.calc = SinglePointCalculator(atoms, **results)
        atoms.info.update(config_type=f"{variant}_{temperature}K", variant=variant,
                          md_temperature_K=float(temperature))
        frames.append(atoms)
    ase.io.write(path, frames, format="extxyz")
    return frames


@pytest.fixture(scope="session")
def tiny(bundled_acac: Path, tmp_path_factory) -> Path:
    """A folder of small test files (see the module docstring), written once per session."""
    folder = tmp_path_factory.mktemp("tiny")
    frames = _acac_frames(bundled_acac, 20)
    (folder / "acac_20.xyz").write_text("".join(sum(frames, [])))
    # Frame 0, then a frame announcing 15 atoms with 8 full atom lines and half a 9th.
    ninth = frames[1][10]
    truncated = frames[1][:10] + [ninth[:len(ninth) // 2]]
    (folder / "malformed.xyz").write_text("".join(frames[0] + truncated))
    nan = [frames[0], _with_nan_forces(frames[1], 3), frames[2]]
    (folder / "nan_forces.xyz").write_text("".join(sum(nan, [])))
    (folder / "no_forces.xyz").write_text("".join(sum(map(_without_forces, frames[:3]), [])))
    write_cu_emt(folder / "cu_emt_10.xyz")
    atom = Atoms("Cu")
    atom.calc = EMT()
    atom.calc = SinglePointCalculator(atom, energy=atom.get_potential_energy())
    atom.info["config_type"] = "isolated_atom"
    ase.io.write(folder / "cu_isolated_atom.xyz", atom, format="extxyz")
    return folder


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


@pytest.fixture(scope="session")
def load_tool():
    """A loader for the scripts under tools/ (not a package): ``load_tool("make_box")``."""
    tools = Path(__file__).resolve().parents[1] / "tools"

    def load(name: str):
        spec = importlib.util.spec_from_file_location(name, tools / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load
