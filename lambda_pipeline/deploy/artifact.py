"""``lambda-pipeline package``: the deployable artifact that spark-submit runs, built by one command.

spark-submit takes the job's main file as a ``.py`` path and the project's code through ``--py-files``
(a zip, imported by zipimport); compiled third-party packages (pydantic-core, confluent-kafka) cannot
be imported from a zip, so they travel as a packed virtual environment through ``--archives``.
Everything a deployment tool needs to know (file names, version, Maven coordinates) is written once,
in ``manifest.json``, and read from there by ``emr-steps`` and the docs' commands.

The output is deterministic: entries sorted, fixed timestamps and permissions, so an unchanged source
tree gives byte-identical files (and unchanged S3 uploads).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lambda_pipeline.core.errors import ConfigError, EnvironmentProblem, LambdaError

__all__ = [
    "MANIFEST",
    "ProjectInfo",
    "add_package_parser",
    "build_artifact",
    "load_manifest",
    "maven_coordinates",
    "read_project",
    "run_package",
]

ROOT = Path(__file__).resolve().parents[2]
MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1
# 1980-01-01, the earliest time a zip entry can carry: the same for every file of every build.
FIXED_TIME = (1980, 1, 1, 0, 0, 0)
FIXED_EPOCH = 315532800
# Amazon MSK IAM authentication for the Kafka client (SASL mechanism AWS_MSK_IAM).
MSK_IAM_COORDINATE = "software.amazon.msk:aws-msk-iam-auth:2.3.5"
# Provided by the cluster's Spark: installing them in the packed environment would shadow it.
_PROVIDED_BY_SPARK = ("pyspark",)
# Its Python half is needed, but its pyspark requirement is the cluster's own Spark.
_INSTALL_WITHOUT_DEPS = ("delta-spark",)


@dataclass(frozen=True)
class ProjectInfo:
    """What pyproject.toml says about the project: the one list of packages and dependencies."""

    name: str
    version: str
    packages: tuple[str, ...]
    dependencies: tuple[str, ...]
    # [tool.setuptools.package-dir]: the packages whose folder is not their dotted name (pipelines/ and the
    # layers' folders at the top of the repository, installed under lambda_pipeline).
    package_dir: tuple[tuple[str, str], ...] = ()
    # [tool.setuptools.package-data]: files besides modules that a package ships (py.typed, conf/*.yaml).
    package_data: tuple[tuple[str, tuple[str, ...]], ...] = ()

    def folder(self, root: Path, package: str) -> Path:
        """Where a package's files are in the checkout, following package-dir like setuptools does."""
        best = max(
            (name for name, _ in self.package_dir if package == name or package.startswith(name + ".")),
            key=len,
            default=None,
        )
        if best is None:
            return root / package.replace(".", "/")
        rest = package[len(best) + 1 :].replace(".", "/") if package != best else ""
        return root / dict(self.package_dir)[best] / rest

    @property
    def dist_name(self) -> str:
        return re.sub(r"[^A-Za-z0-9]+", "_", self.name).lower()

    @property
    def zip_name(self) -> str:
        return f"{self.dist_name}-{self.version}.zip"

    @property
    def env_name(self) -> str:
        return f"{self.dist_name}-{self.version}-env.tar.gz"


def read_project(root: Path = ROOT) -> ProjectInfo:
    """Read pyproject.toml; the artifact is built from a source checkout, never from an installed copy."""
    pyproject = root / "pyproject.toml"
    if not pyproject.is_file():
        raise EnvironmentProblem(f"{pyproject} not found: 'package' runs from a source checkout of the project")
    if sys.version_info >= (3, 11):
        import tomllib
    else:
        try:
            import tomli as tomllib
        except ModuleNotFoundError:
            raise EnvironmentProblem("'package' reads pyproject.toml: use Python 3.11+, or pip install tomli") from None
    data = tomllib.loads(pyproject.read_text(encoding="utf-8"))
    project = data["project"]
    packages = data.get("tool", {}).get("setuptools", {}).get("packages")
    if not packages:
        raise EnvironmentProblem(f"{pyproject}: [tool.setuptools] packages is empty; list the project's packages there")
    setuptools = data["tool"]["setuptools"]
    return ProjectInfo(
        project["name"],
        project["version"],
        tuple(packages),
        tuple(project.get("dependencies", ())),
        tuple(sorted(setuptools.get("package-dir", {}).items())),
        tuple(sorted((name, tuple(globs)) for name, globs in setuptools.get("package-data", {}).items())),
    )


def maven_coordinates() -> dict[str, str]:
    """The JVM packages the jobs may need, by purpose; the step generator picks per job and config."""
    from lambda_pipeline.core.jvm_packages import (
        DELTA_COORDINATE,
        KAFKA_COORDINATE,
        TOKEN_PROVIDER,
        hadoop_aws_coordinate,
    )

    return {
        "delta": DELTA_COORDINATE,
        "kafka": KAFKA_COORDINATE,
        # Not on Maven Central at pyspark's version: excluded, and shipped as a jar (see core/jvm_packages.py).
        "kafka_exclude": ":".join(TOKEN_PROVIDER),
        "hadoop_aws": hadoop_aws_coordinate(),
        "msk_iam": MSK_IAM_COORDINATE,
    }


def _package_files(root: Path, info: ProjectInfo) -> Iterator[tuple[str, Path]]:
    """(name in the zip, file) for each module and data file of the listed packages, at the place its
    dotted name gives (as the wheel installs it); subpackages are listed separately in pyproject.toml."""
    data = dict(info.package_data)
    for package in info.packages:
        folder = info.folder(root, package)
        if not (folder / "__init__.py").is_file():
            raise EnvironmentProblem(f"package {package!r} of pyproject.toml has no {folder}/__init__.py")
        prefix = package.replace(".", "/")
        for file in sorted(folder.iterdir()):
            shipped = file.suffix == ".py" or any(file.match(glob) for glob in data.get(package, ()))
            if file.is_file() and shipped:
                yield f"{prefix}/{file.name}", file


def _conf_files(root: Path) -> list[tuple[str, Path]]:
    return [(f"conf/{f.name}", f) for f in sorted((root / "conf").glob("*.yaml"))]


def _write_zip(target: Path, entries: Iterable[tuple[str, Path]]) -> None:
    """A zip with sorted entries, a fixed time and fixed permissions: same input, same bytes."""
    partial = target.with_name(target.name + ".part")
    with zipfile.ZipFile(partial, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        for name, file in sorted(entries):
            info = zipfile.ZipInfo(name, date_time=FIXED_TIME)
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, file.read_bytes())
    partial.replace(target)


def _copy(source: Path, target: Path, mode: int = 0o644) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    target.chmod(mode)
    os.utime(target, (FIXED_EPOCH, FIXED_EPOCH))


def _sha256(file: Path) -> str:
    digest = hashlib.sha256()
    with file.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _requirement_name(requirement: str) -> str:
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    return re.sub(r"[-_.]+", "-", match.group(1)).lower() if match else requirement


def _run(command: list[str], what: str) -> None:
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-5:]
        raise EnvironmentProblem(f"{what} failed ({' '.join(command[:6])} ...): {' | '.join(tail)}")


def _build_env(info: ProjectInfo, target: Path, python_path: str) -> str:
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
        wanted = [r for r in info.dependencies if _requirement_name(r) not in _PROVIDED_BY_SPARK]
        with_deps = [r for r in wanted if _requirement_name(r) not in _INSTALL_WITHOUT_DEPS]
        without_deps = [r for r in wanted if _requirement_name(r) in _INSTALL_WITHOUT_DEPS]
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


def _bootstrap_script(python_version: str) -> str:
    return f"""#!/bin/bash
# EMR bootstrap action: install the Python the packed environment was built for (its bin/python
# points at /usr/bin/python{python_version}). Runs on every node before YARN starts.
set -euo pipefail
if ! command -v python{python_version} >/dev/null 2>&1; then
  sudo dnf install -y python{python_version} || sudo yum install -y python{python_version}
fi
python{python_version} --version
"""


def _previous_files(out: Path) -> list[Path]:
    """Files an earlier build wrote to ``out`` (and only those), so a rebuild leaves no stale version."""
    manifest = out / MANIFEST
    if not manifest.is_file():
        return []
    try:
        listed = json.loads(manifest.read_text())["files"]
        return [out / entry["path"] for entry in listed]
    except (ValueError, KeyError, TypeError):
        return []


def build_artifact(
    out: Path,
    *,
    root: Path = ROOT,
    with_env: bool = False,
    env_python: str | None = None,
    extra_configs: Iterable[Path] = (),
) -> dict[str, Any]:
    """Build the artifact in ``out`` and return its manifest (also written to ``out/manifest.json``).

    ``out`` gets: the project's zip (for ``--py-files``), the jobs' entry files (spark-submit's main),
    ``conf/*.yaml`` (for ``--files``), the Kafka token-provider jar, a bootstrap script and, with
    ``with_env``, the packed environment (for ``--archives ...#env``).
    """
    from lambda_pipeline.core.jvm_packages import token_provider_jar

    info = read_project(root)
    out.mkdir(parents=True, exist_ok=True)
    for stale in _previous_files(out):
        stale.unlink(missing_ok=True)
    written: list[str] = []

    zip_entries = list(_package_files(root, info))
    _write_zip(out / info.zip_name, zip_entries)
    written.append(info.zip_name)

    jobs: dict[str, str] = {}
    for entry in sorted((root / "pipelines" / "jobs").glob("*_job.py")):
        _copy(entry, out / entry.name)
        jobs[entry.name.removesuffix("_job.py")] = entry.name
        written.append(entry.name)

    configs: dict[str, Path] = {f"conf/{f.name}": f for _, f in _conf_files(root)}
    for extra in extra_configs:
        extra = Path(extra)
        if not extra.is_file():
            raise ConfigError(str(extra), None, "file not found; pass the path of a YAML config file")
        from lambda_pipeline.core.config_loader import load_settings

        load_settings(extra)  # a config that would stop every job is refused here already
        name = f"conf/{extra.name}"
        if name in configs and _sha256(configs[name]) != _sha256(extra):
            raise ConfigError(str(extra), None, f"another {name} ships with the project: rename the file")
        configs[name] = extra
    for name, file in sorted(configs.items()):
        _copy(file, out / name)
        written.append(name)

    jar = token_provider_jar()
    _copy(jar, out / "jars" / jar.name)
    written.append(f"jars/{jar.name}")

    python_version = f"{sys.version_info.major}.{sys.version_info.minor}"
    bootstrap = out / "bootstrap-python.sh"
    bootstrap.write_text(_bootstrap_script(python_version))
    bootstrap.chmod(0o755)
    os.utime(bootstrap, (FIXED_EPOCH, FIXED_EPOCH))
    written.append(bootstrap.name)

    env: dict[str, str] | None = None
    if with_env:
        python_path = env_python or f"/usr/bin/python{python_version}"
        if not python_path.startswith("/"):
            raise LambdaError(f"--env-python: expected an absolute path on the cluster nodes, got {python_path!r}")
        print(f"package: building the packed environment (python -> {python_path}); this takes a minute...")
        _build_env(info, out / info.env_name, python_path)
        env = {
            "archive": info.env_name,
            "python": "bin/python",
            "python_version": python_version,
            "interpreter": python_path,
        }
        written.append(info.env_name)

    manifest: dict[str, Any] = {
        "format": MANIFEST_FORMAT,
        "name": info.name,
        "version": info.version,
        "python_version": python_version,
        "packages": list(info.packages),
        "zip": info.zip_name,
        "jobs": jobs,
        "conf": sorted(configs),
        "jars": {"kafka_token_provider": f"jars/{jar.name}"},
        "bootstrap": bootstrap.name,
        "env": env,
        "maven": maven_coordinates(),
        "files": [
            {"path": name, "bytes": (out / name).stat().st_size, "sha256": _sha256(out / name)}
            for name in sorted(written)
        ],
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


def load_manifest(dist: Path) -> dict[str, Any]:
    """The manifest of a built artifact; a missing one says how to build it."""
    file = dist / MANIFEST
    if not file.is_file():
        raise ConfigError(str(file), None, "not found: build the artifact first with 'lambda-pipeline package'")
    try:
        manifest = json.loads(file.read_text())
    except ValueError as exc:
        raise ConfigError(str(file), None, f"not valid JSON ({exc}): rebuild with 'lambda-pipeline package'") from None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise ConfigError(str(file), None, "written by another version: rebuild with 'lambda-pipeline package'")
    return manifest


def add_package_parser(verbs: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    """Register the ``package`` verb (it takes no --config/--workdir: the artifact serves every config)."""
    package = verbs.add_parser(
        "package",
        help="build the deployable artifact for spark-submit (zip, job entry files, conf, manifest)",
        description="Builds in --out: the project's zip for --py-files, the jobs' entry files, conf/*.yaml, "
        "manifest.json and, with --with-env, a packed virtual environment for --archives.",
    )
    package.add_argument("--out", default="dist", help="output folder (default: dist)")
    package.add_argument(
        "--with-env", action="store_true", help="also pack a virtual environment with the dependencies (slow)"
    )
    package.add_argument(
        "--env-python",
        metavar="PATH",
        help="interpreter the packed env runs on the cluster nodes (default: /usr/bin/python3.<this minor>)",
    )
    package.add_argument(
        "--add-config",
        action="append",
        default=[],
        metavar="FILE",
        help="ship this config too, as conf/<name> (conf/*.yaml always ship); repeatable",
    )
    return package


def run_package(args: argparse.Namespace) -> int:
    out = Path(args.out)
    manifest = build_artifact(
        out, with_env=args.with_env, env_python=args.env_python, extra_configs=[Path(p) for p in args.add_config]
    )
    for entry in manifest["files"]:
        print(f"{out / entry['path']}  ({entry['bytes']:,} bytes)")
    print(f"{out / MANIFEST}  (version {manifest['version']})")
    return 0
