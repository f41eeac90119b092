"""The packed virtual environment: the project's compiled dependencies, shipped to spark-submit via ``--archives``.

Compiled packages (pydantic-core, confluent-kafka) cannot be imported from the ``--py-files`` zip, so they
travel as a relocatable venv whose ``bin/python`` points at the interpreter the cluster nodes have.
"""

from __future__ import annotations

import gzip
import io
import os
import re
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from lambda_pipeline.core.errors import EnvironmentProblem
from lambda_pipeline.core.reproducible import FIXED_EPOCH
from lambda_pipeline.deploy.project import ProjectInfo

__all__ = ["build_env", "requirement_name"]

# Provided by the cluster's Spark: installing them in the packed environment would shadow it.
_PROVIDED_BY_SPARK = ("pyspark",)
# Its Python half is needed, but its pyspark requirement is the cluster's own Spark.
_INSTALL_WITHOUT_DEPS = ("delta-spark",)


def requirement_name(requirement: str) -> str:
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    return re.sub(r"[-_.]+", "-", match.group(1)).lower() if match else requirement


def _run(command: list[str], what: str) -> None:
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-5:]
        raise EnvironmentProblem(f"{what} failed ({' '.join(command[:6])} ...): {' | '.join(tail)}")


def build_env(info: ProjectInfo, target: Path, python_path: str) -> str:
    """Create a fresh venv with the project's dependencies (from pyproject.toml) and pack it for --archives.

    The project's own packages are not installed in it: they come from the zip alone, so two copies can
    never shadow each other.
    pyspark is left out (the cluster's Spark provides it, matching its JVM), and so are pip, caches and
    console scripts: Spark only ever runs ``bin/python``, which is pointed at ``python_path``, the
    interpreter the cluster nodes have (same minor version as this one). Returns the Python version.
    """
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    with tempfile.TemporaryDirectory(prefix="lambda-env-") as tmp:
        env = Path(tmp) / "env"
        _run([sys.executable, "-m", "venv", "--without-pip", str(env)], "creating the virtual environment")
        pip = [sys.executable, "-m", "pip", "--python", str(env / "bin" / "python"), "install", "--quiet"]
        pip += ["--no-compile", "--disable-pip-version-check"]
        wanted = [r for r in info.dependencies if requirement_name(r) not in _PROVIDED_BY_SPARK]
        with_deps = [r for r in wanted if requirement_name(r) not in _INSTALL_WITHOUT_DEPS]
        without_deps = [r for r in wanted if requirement_name(r) in _INSTALL_WITHOUT_DEPS]
        if with_deps:
            _run([*pip, *with_deps], "pip install of the dependencies")
        if without_deps:
            _run([*pip, "--no-deps", *without_deps], "pip install of the dependencies without their pyspark")
        _pack_env(env, target, python_path, version)
    return version


def _pack_env(env: Path, target: Path, python_path: str, version: str) -> None:
    """Tar the venv under ``env/``-relative names, relocatable: bin/python points at ``python_path``."""
    skip_top = {"bin", "include"}  # bin/ is rewritten below; console scripts carry the build's paths
    skip_site = {"pip", "setuptools", "_distutils_hack", "pkg_resources"}
    skip_files = {"distutils-precedence.pth"}
    entries: list[tarfile.TarInfo] = []
    payload: dict[str, bytes | Path] = {}  # file contents are streamed from disk when tarred

    def add_dir(name: str) -> None:
        info = tarfile.TarInfo(name)
        info.type, info.mode = tarfile.DIRTYPE, 0o755
        entries.append(info)

    def add_file(name: str, data: bytes | Path, mode: int = 0o644) -> None:
        info = tarfile.TarInfo(name)
        info.size, info.mode = (len(data) if isinstance(data, bytes) else data.stat().st_size), mode
        entries.append(info)
        payload[name] = data

    def add_link(name: str, link: str) -> None:
        info = tarfile.TarInfo(name)
        info.type, info.linkname, info.mode = tarfile.SYMTYPE, link, 0o777
        entries.append(info)

    add_dir("bin")
    add_link(f"bin/python{version}", python_path)
    add_link("bin/python3", f"python{version}")
    add_link("bin/python", f"python{version}")
    home = posix_dirname(python_path)
    add_file("pyvenv.cfg", f"home = {home}\ninclude-system-site-packages = false\nversion = {version}\n".encode())
    for folder, dirs, files in os.walk(env):
        here = Path(folder)
        relative = here.relative_to(env).as_posix()
        site = relative.endswith("site-packages")
        kept = []
        for name in sorted(dirs):
            top_skip = relative == "." and name in skip_top
            site_skip = site and (name in skip_site or name.startswith(("pip-", "setuptools-")))
            if top_skip or site_skip or name == "__pycache__":
                continue
            if (here / name).is_symlink():  # lib64 -> lib in a venv: kept as the link it is
                add_link(name if relative == "." else f"{relative}/{name}", os.readlink(here / name))
            else:
                kept.append(name)
        dirs[:] = kept
        if relative != ".":
            add_dir(relative)
        for name in sorted(files):
            if relative == "." or name in skip_files or name.endswith(".pyc"):
                continue
            file = here / name
            if file.is_symlink():
                add_link(f"{relative}/{name}", os.readlink(file))
            else:
                add_file(f"{relative}/{name}", file, 0o755 if os.access(file, os.X_OK) else 0o644)
    partial = target.with_name(target.name + ".part")
    with (
        partial.open("wb") as raw,
        gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=FIXED_EPOCH) as zipped,
        tarfile.open(fileobj=zipped, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        for info in sorted(entries, key=lambda i: i.name):
            info.mtime, info.uid, info.gid, info.uname, info.gname = FIXED_EPOCH, 0, 0, "", ""
            data = payload.get(info.name)
            if isinstance(data, Path):
                with data.open("rb") as handle:
                    tar.addfile(info, handle)
            else:
                tar.addfile(info, io.BytesIO(data) if data is not None else None)
    partial.replace(target)


def posix_dirname(path: str) -> str:
    return path.rsplit("/", 1)[0] or "/"
