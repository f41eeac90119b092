"""The deployable artifact that spark-submit runs (``lambda-pipeline package``), and its manifest.

spark-submit takes the job's main file as a ``.py`` path and the project's code through ``--py-files``
(a zip, imported by zipimport); compiled third-party packages (pydantic-core, confluent-kafka) cannot
be imported from a zip, so they travel as a packed virtual environment through ``--archives``.
Everything a deployment tool needs to know (file names, version, jars) is written once, in ``manifest.json``,
and read from there by ``emr-steps`` and the docs' commands.

The artifact carries every jar the jobs load beyond Spark's own, in ``jars/``, resolved from Maven Central here,
at package time (:func:`jar_groups`): a cluster in a private subnet has no internet, and spark-submit's
``--packages`` would need it at every start. The manifest lists them by group (``delta`` for every job, ``kafka``
for ingest from Kafka, and when asked ``msk_iam`` and ``hadoop_aws``), and the steps pass them with ``--jars``.

The user's pipeline travels in the same zip, at its top level (``deploy/includes.py``): the module a pipeline
reference names (``--pipeline``, or the ``pipeline`` key of a config shipped with ``--add-config``) and what
``--include`` adds; the manifest lists each with its files and digest.

The output is deterministic (``reproducible``): entries sorted, fixed timestamps and permissions, so an
unchanged source tree gives byte-identical files (and unchanged S3 uploads).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from lambda_pipeline.core.errors import ConfigError, EnvironmentProblem, LambdaError
from lambda_pipeline.core.reproducible import FIXED_EPOCH, copy_file, sha256, write_zip
from lambda_pipeline.deploy.includes import Include, find_includes
from lambda_pipeline.deploy.packed_env import build_env
from lambda_pipeline.deploy.project import ROOT, ProjectInfo, read_project

__all__ = ["JAR_GROUPS", "MANIFEST", "build_artifact", "jar_groups", "load_manifest", "maven_coordinates"]

MANIFEST = "manifest.json"
MANIFEST_FORMAT = 2
"""2: ``jars`` lists every jar by group (format 1 named the token-provider jar alone and left the rest to
``--packages``)."""
JAR_GROUPS = ("delta", "kafka", "msk_iam", "hadoop_aws")
"""The jar groups an artifact may carry; ``delta`` and ``kafka`` always, the others when asked."""


def maven_coordinates() -> dict[str, str]:
    """The Maven package each jar group of the artifact was resolved from (with its dependencies)."""
    from lambda_pipeline.core.jvm_packages import (
        DELTA_COORDINATE,
        KAFKA_COORDINATE,
        MSK_IAM_COORDINATE,
        hadoop_aws_coordinate,
    )

    return {
        "delta": DELTA_COORDINATE,
        "kafka": KAFKA_COORDINATE,
        "hadoop_aws": hadoop_aws_coordinate(),
        "msk_iam": MSK_IAM_COORDINATE,
    }


def jar_groups(*, msk_iam: bool = False, hadoop_aws: bool = False) -> dict[str, list[Path]]:
    """The jars of each group, resolved from Maven Central now (once per machine, through the session factory's
    resolver and cache, :func:`~lambda_pipeline.core.jvm_packages.resolve_jars`).

    ``delta``: Delta Lake and its dependencies, and the project's dedup class (``core/project_jars.py``), for
    every job. Each other group is what its package adds to
    Delta's jars when resolved together (as a session resolves them), so a job passes ``delta`` plus the groups
    it needs. ``kafka`` also holds the connector's token-provider jar, which resolution excludes (see
    core/jvm_packages.py). ``hadoop_aws`` (``s3a://``) is about 690 MB, for its AWS SDK bundle: EMR reaches S3
    through EMRFS (``s3://``) without it.
    """
    from lambda_pipeline.core.jvm_packages import TOKEN_PROVIDER, required_packages, resolve_jars, token_provider_jar
    from lambda_pipeline.core.project_jars import dedup_jar, log_store_jar

    coordinates = maven_coordinates()
    delta = [Path(jar) for jar in resolve_jars(required_packages(), {})]
    delta.append(_built(dedup_jar(required=True)))  # ingest's dedup class (core/project_jars.py)
    names = {jar.name for jar in delta}
    groups = {"delta": delta}
    wanted = {"kafka": True, "msk_iam": msk_iam, "hadoop_aws": hadoop_aws}
    for group, asked in wanted.items():
        if not asked:
            continue
        conf = {"spark.jars.excludes": ":".join(TOKEN_PROVIDER)} if group == "kafka" else {}
        jars = [Path(jar) for jar in resolve_jars(required_packages((coordinates[group],)), conf)]
        groups[group] = [jar for jar in jars if jar.name not in names]
        if group == "hadoop_aws":  # the s3a log store that lists a table's log from a version (core/project_jars.py)
            groups[group].append(_built(log_store_jar(jars, required=True)))
    groups["kafka"].append(token_provider_jar())
    return groups


def _built(jar: Path | None) -> Path:
    assert jar is not None, "required=True raises instead of returning None"
    return jar


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
    pipelines: Iterable[str] = (),
    includes: Iterable[Path] = (),
    with_msk_iam: bool = False,
    with_hadoop_aws: bool = False,
) -> dict[str, Any]:
    """Build the artifact in ``out`` and return its manifest (also written to ``out/manifest.json``).

    ``out`` gets: the project's zip (for ``--py-files``) with the user's modules (``pipelines``' modules and
    ``includes``) at its top level, the jobs' entry files (spark-submit's main), ``conf/*.yaml`` (for
    ``--files``), every jar the jobs load in ``jars/`` (for ``--jars``, :func:`jar_groups`; MSK IAM and
    hadoop-aws when asked), a bootstrap script and, with ``with_env``, the packed environment (for
    ``--archives ...#env``).
    """
    from lambda_pipeline.core.config_loader import load_settings

    info = read_project(root)
    configs: dict[str, Path] = {f"conf/{f.name}": f for _, f in _conf_files(root)}
    references: list[tuple[str, Path | None, str]] = [(ref, None, "--pipeline") for ref in pipelines]
    for extra in extra_configs:
        extra = Path(extra)
        if not extra.is_file():
            raise ConfigError(str(extra), None, "file not found; pass the path of a YAML config file")
        # As the jobs will read it (the builder's environment is not theirs); refused here if it would stop them.
        references.append((load_settings(extra, environ={}).pipeline, extra, str(extra)))
        name = f"conf/{extra.name}"
        if name in configs and sha256(configs[name]) != sha256(extra):
            raise ConfigError(str(extra), None, f"another {name} ships with the project: rename the file")
        configs[name] = extra
    carried = {package.split(".")[0] for package in info.packages}
    user: list[Include] = find_includes(
        [Path(p) for p in includes], references, carried=carried, requirements=info.dependencies
    )

    out.mkdir(parents=True, exist_ok=True)
    for stale in _previous_files(out):
        stale.unlink(missing_ok=True)
    written: list[str] = []

    zip_entries = list(_package_files(root, info))
    for include in user:
        zip_entries += include.entries()
    write_zip(out / info.zip_name, zip_entries)
    written.append(info.zip_name)

    jobs: dict[str, str] = {}
    for entry in sorted((root / "pipelines" / "jobs").glob("*_job.py")):
        copy_file(entry, out / entry.name)
        jobs[entry.name.removesuffix("_job.py")] = entry.name
        written.append(entry.name)

    for name, file in sorted(configs.items()):
        copy_file(file, out / name)
        written.append(name)

    jars: dict[str, list[str]] = {}
    for group, files in jar_groups(msk_iam=with_msk_iam, hadoop_aws=with_hadoop_aws).items():
        jars[group] = []
        for jar in files:
            name = f"jars/{jar.name}"
            if name not in written:
                copy_file(jar, out / name)
                written.append(name)
            jars[group].append(name)

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
        build_env(info, out / info.env_name, python_path)
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
        "includes": [include.manifest_entry() for include in user],
        "jobs": jobs,
        "conf": sorted(configs),
        "jars": jars,
        "bootstrap": bootstrap.name,
        "env": env,
        "maven": maven_coordinates(),
        "files": [
            {"path": name, "bytes": (out / name).stat().st_size, "sha256": sha256(out / name)}
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
