"""The deployable artifact: what ``lambda-pipeline package`` builds, and spark-submit running from it alone.

The project is installed editable in the test venv, so "runs from the artifact" is only shown by a
Python that cannot import the project any other way: ``isolated_python`` (tests/submit_support.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from lambda_pipeline.core.config_loader import load_settings
from lambda_pipeline.deploy.artifact import MANIFEST, build_artifact
from lambda_pipeline.deploy.project import read_project
from tests.submit_support import spark_submit

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    dist = tmp_path_factory.mktemp("dist")
    return dist, build_artifact(dist)


def test_zip_holds_the_packages_pyproject_lists_and_the_conf(artifact: tuple[Path, dict]) -> None:
    dist, manifest = artifact
    info = read_project(ROOT)
    with zipfile.ZipFile(dist / manifest["zip"]) as archive:
        names = set(archive.namelist())
        times = {entry.date_time for entry in archive.infolist()}
    for package in info.packages:
        assert f"{package.replace('.', '/')}/__init__.py" in names, package
    assert {
        "lambda_pipeline/conf/local.yaml",
        "lambda_pipeline/conf/emr.yaml",
        "lambda_pipeline/deploy/artifact.py",
        "lambda_pipeline/core/config.py",
        "lambda_pipeline/py.typed",
    } <= names
    assert not any("__pycache__" in n or n.endswith(".pyc") for n in names)
    assert times == {(1980, 1, 1, 0, 0, 0)}
    assert manifest["packages"] == list(info.packages) and manifest["version"] == info.version
    assert set(manifest["jobs"]) >= {"ingest", "speed", "batch", "query"}
    assert manifest["includes"] == [] and {n.split("/")[0] for n in names} == {"lambda_pipeline"}  # nothing else


def test_manifest_lists_every_file_with_its_digest(artifact: tuple[Path, dict]) -> None:
    import hashlib

    dist, manifest = artifact
    on_disk = {p.relative_to(dist).as_posix() for p in dist.rglob("*") if p.is_file()} - {MANIFEST}
    assert {e["path"] for e in manifest["files"]} == on_disk
    for entry in manifest["files"]:
        assert hashlib.sha256((dist / entry["path"]).read_bytes()).hexdigest() == entry["sha256"], entry["path"]
    assert json.loads((dist / MANIFEST).read_text()) == manifest
    assert manifest["maven"]["delta"].startswith("io.delta:delta-spark_")
    assert manifest["maven"]["hadoop_aws"].startswith("org.apache.hadoop:hadoop-aws:")


def test_the_jars_folder_carries_every_jar_the_jobs_load_by_group(artifact: tuple[Path, dict]) -> None:
    """A cluster in a private subnet has no internet: Delta, the Kafka connector and their dependencies travel in
    jars/, by group; hadoop-aws (690 MB with the AWS SDK) and MSK IAM only when asked."""
    dist, manifest = artifact
    groups = manifest["jars"]
    assert set(groups) == {"delta", "kafka"}
    listed = {entry["path"] for entry in manifest["files"]}
    on_disk = {f"jars/{p.name}" for p in (dist / "jars").iterdir()}
    assert on_disk == set(groups["delta"]) | set(groups["kafka"]) <= listed
    assert not set(groups["delta"]) & set(groups["kafka"])  # the kafka group is what Kafka adds to Delta's

    def holds(group: str, *prefixes: str) -> None:
        names = [jar.removeprefix("jars/") for jar in groups[group]]
        for prefix in prefixes:
            assert any(name.startswith(prefix) for name in names), (group, prefix, names)

    holds("delta", "io.delta_delta-spark_4.2_2.13-", "io.delta_delta-storage-")
    holds(
        "kafka",
        "org.apache.spark_spark-sql-kafka-0-10_2.13-",
        "org.apache.kafka_kafka-clients-",
        "org.apache.commons_commons-pool2-",
        "spark-token-provider-kafka-0-10_2.13-",
    )
    assert not any("hadoop-aws" in name or "awssdk" in name for name in on_disk)


def test_rebuild_is_byte_identical_and_removes_stale_files(artifact: tuple[Path, dict], tmp_path: Path) -> None:
    dist, manifest = artifact
    again = tmp_path / "again"
    build_artifact(again)
    stale = again / "lambda_pipeline-0.0.1.zip"
    stale.write_bytes(b"old")
    listing = json.loads((again / MANIFEST).read_text())
    listing["files"].append({"path": stale.name, "bytes": 3, "sha256": ""})
    (again / MANIFEST).write_text(json.dumps(listing))
    unrelated = again / "notes.txt"
    unrelated.write_text("kept")
    rebuilt = build_artifact(again)
    assert rebuilt == manifest
    assert (again / manifest["zip"]).read_bytes() == (dist / manifest["zip"]).read_bytes()
    assert not stale.exists() and unrelated.exists()  # only what a build wrote is removed


def test_default_config_loads_from_inside_the_zip(artifact: tuple[Path, dict], isolated_python: Path) -> None:
    dist, manifest = artifact
    code = (
        "import lambda_pipeline.core.config_loader as c; s = c.load_settings(); "
        "print(c.__file__); print(s.pipeline, s.spark.master, s.batch.interval)"
    )
    result = subprocess.run(
        [str(isolated_python), "-c", code],
        capture_output=True,
        text=True,
        cwd=dist,
        env={**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, "PYTHONPATH": str(dist / manifest["zip"])},
    )
    assert result.returncode == 0, result.stderr
    where, values = result.stdout.splitlines()
    assert where == str(dist / manifest["zip"] / "lambda_pipeline" / "core" / "config_loader.py")
    expected = load_settings(ROOT / "conf" / "local.yaml")
    assert values == f"{expected.pipeline} {expected.spark.master} {expected.batch.interval}"


@pytest.mark.integration
def test_spark_submit_with_the_artifacts_jars_ingests_from_kafka_without_fetching_anything(
    artifact: tuple[Path, dict], isolated_python: Path, kafka_broker, kafka_topic: str, tmp_path: Path, request
) -> None:
    """Under spark-submit the driver fetches nothing (no internet on the cluster): not through Ivy, which is pointed
    at an empty folder, and not the token-provider jar, whose cache is empty and whose repository is unreachable."""
    from lambda_pipeline.cli.main import main

    dist, _ = artifact
    kafka = [f"ingest.kafka.bootstrap_servers={kafka_broker.bootstrap_servers}", f"ingest.kafka.topic={kafka_topic}"]
    sets = [item for s in ["ingest.source=kafka", *kafka] for item in ("--set", s)]
    sent = ["generate", "--to", "kafka", "--rate", "50", "--seconds", "1", "--seed", "9", "--workdir", str(tmp_path)]
    assert main([*sent, *sets]) == 0
    ivy, cache, workdir = tmp_path / "ivy", tmp_path / "cache", tmp_path / "work"
    result = spark_submit(
        dist,
        isolated_python,
        "ingest",
        "--once",
        "--workdir",
        str(workdir),
        *sets,
        cwd=tmp_path,
        groups=("delta", "kafka"),
        conf={"spark.jars.ivy": str(ivy)},
        env={"LAMBDA_PIPELINE_CACHE": str(cache), "LAMBDA_PIPELINE_MAVEN_REPO": "http://127.0.0.1:9/unreachable"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    assert "resolving dependencies" not in output and "fetching the JVM packages" not in output
    assert not ivy.exists() and not list(cache.rglob("*.jar"))
    from lambda_pipeline.core.config_loader import load_settings as load
    from lambda_pipeline.core.locations import Locations

    spark = request.getfixturevalue("spark")  # started only now: no idle JVM beside the submitted one
    master = spark.read.format("delta").load(Locations.create(load(None), workdir).master)
    assert master.count() >= 50  # 50 valid events (and repeats) came through the connector from --jars


def test_a_jar_missing_under_spark_submit_is_named_in_one_line(
    artifact: tuple[Path, dict], isolated_python: Path, tmp_path: Path
) -> None:
    dist, _ = artifact
    sets = ["--set", "ingest.source=kafka", "--set", "ingest.kafka.bootstrap_servers=127.0.0.1:9"]
    result = spark_submit(
        dist, isolated_python, "ingest", "--once", "--workdir", str(tmp_path / "w"), *sets, cwd=tmp_path
    )
    assert result.returncode != 0
    output = result.stdout + result.stderr  # spark-submit passes the Python driver's stderr on to its stdout
    (line,) = [line for line in output.splitlines() if "spark-submit started this driver without" in line]
    assert "spark-sql-kafka-0-10_2.13-" in line and "kafka-clients-<version>.jar" in line and "--jars" in line
    assert "Traceback" not in output


@pytest.mark.integration
def test_packed_env_runs_the_dependencies_without_pyspark_or_the_project(tmp_path: Path) -> None:
    base = os.path.realpath(sys._base_executable)  # type: ignore[attr-defined]
    dist = tmp_path / "dist"
    manifest = build_artifact(dist, with_env=True, env_python=base)
    env = manifest["env"]
    assert env is not None and env["interpreter"] == base and env["archive"] in {e["path"] for e in manifest["files"]}
    with tarfile.open(dist / env["archive"]) as tar:
        members = {m.name: m for m in tar.getmembers()}
        assert members[f"bin/python{env['python_version']}"].linkname == base
        assert {m.mtime for m in members.values()} == {315532800}
        tar.extractall(tmp_path / "env", filter="tar")
    code = (
        # delta's Python half is there but imports pyspark, which spark-submit adds from SPARK_HOME.
        "import sys, importlib.util as u; import pydantic_core, yaml, confluent_kafka; "
        "print(sys.prefix); "
        "print(u.find_spec('delta') is not None, u.find_spec('pyspark'), u.find_spec('lambda_pipeline'))"
    )
    result = subprocess.run(
        [str(tmp_path / "env" / "bin" / "python"), "-c", code],
        capture_output=True,
        text=True,
        cwd=tmp_path,  # not the source tree: 'python -c' puts the working directory on sys.path
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [str(tmp_path / "env"), "True None None"]
