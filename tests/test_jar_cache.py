"""The first run cannot race: JVM packages are fetched once, under a lock, and verified before use."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from lambda_pipeline.core import class_archive, jvm_packages

ROOT = Path(__file__).resolve().parents[1]


def _manifest(cache: Path, packages: tuple[str, ...], lines: list[str]) -> None:
    path = jvm_packages._manifest(packages)
    assert str(path).startswith(str(cache))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{line}\n" for line in lines))


def test_a_manifest_is_trusted_only_while_every_jar_has_its_recorded_size(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("LAMBDA_PIPELINE_CACHE", str(tmp_path))
    packages = ("g:a:1",)
    jar = tmp_path / "a.jar"
    jar.write_bytes(b"x" * 100)
    _manifest(tmp_path, packages, [f"{jar}\t100"])
    assert jvm_packages._cached_jars(packages) == [str(jar)]
    jar.write_bytes(b"x" * 40)  # truncated, or still being written by another process
    assert jvm_packages._cached_jars(packages) is None
    jar.unlink()
    assert jvm_packages._cached_jars(packages) is None
    jar.write_bytes(b"x" * 100)
    _manifest(tmp_path, packages, [str(jar)])  # an older release's manifest, without sizes
    assert jvm_packages._cached_jars(packages) is None


_PROBE = textwrap.dedent(
    """
    import sys
    from lambda_pipeline.core.config import SparkSettings
    from lambda_pipeline.core.jvm_packages import KAFKA_COORDINATE
    from lambda_pipeline.core.session import get_spark
    spark = get_spark(
        SparkSettings(master="local[1]", shuffle_partitions=1, conf={"spark.ui.enabled": "false",
                      "spark.jars.ivy": sys.argv[1]}),
        packages=(KAFKA_COORDINATE,),
    )
    lookup = spark._jvm.org.apache.spark.sql.execution.datasources.DataSource.lookupDataSource
    sql_conf = spark._jsparkSession.sessionState().conf()
    for source in ("kafka", "delta"):  # the data sources Spark finds on the classpath it was given
        print(source, lookup(source, sql_conf).getName(), flush=True)
    print("READY", flush=True)
    spark.stop()
    """
)


@pytest.mark.integration
def test_processes_started_together_on_an_empty_cache_all_get_delta_and_kafka(tmp_path) -> None:
    """Three jobs start at once on an empty jar cache and an empty Ivy cache: one fetches, the others wait."""
    cache, ivy = tmp_path / "cache", tmp_path / "ivy"
    env = {**os.environ, "LAMBDA_PIPELINE_CACHE": str(cache), "PYTHONPATH": str(ROOT)}
    env.pop("LAMBDA_PIPELINE_VERBOSE", None)
    env.pop("PYSPARK_SUBMIT_ARGS", None)
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", _PROBE, str(ivy)],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    outputs = []
    for process in processes:
        try:
            out, err = process.communicate(timeout=900)
        except subprocess.TimeoutExpired:
            for p in processes:
                p.kill()
            raise
        outputs.append((process.returncode, out, err))
    for code, out, err in outputs:
        assert code == 0 and "READY" in out, err[-2000:]
        assert "repos.spark-packages.org" not in err and ":: resolving dependencies" not in err, err[-2000:]
        assert len((out + err).strip().splitlines()) < 30, err
    fetchers = [err for _, _, err in outputs if "fetching the JVM packages" in err]
    assert len(fetchers) == 1, [err[-500:] for _, _, err in outputs]
    assert "resolving dependencies" in (cache / "lambda-pipeline" / "resolve.log").read_text()  # Ivy, kept aside


def _archive_files(archive: class_archive.ClassArchive, pid: int, *, magic: bool, jvm: int | None) -> Path:
    dump = archive.path.with_name(f"{archive.path.name}.{pid}.part")
    dump.parent.mkdir(parents=True, exist_ok=True)
    dump.write_bytes((class_archive._ARCHIVE_MAGIC if magic else b"\0\0\0\0") + b"x" * 100)
    if jvm is not None:
        dump.with_suffix(".jvm").write_text(str(jvm))
    return dump


def test_a_class_archive_is_recorded_once_and_adopted_only_whole_and_finished(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("LAMBDA_PIPELINE_CACHE", str(tmp_path))
    archive = class_archive.ClassArchive.for_jars("/jars/a.jar,/jars/b.jar")
    assert archive != class_archive.ClassArchive.for_jars("/jars/a.jar")  # other jars, another archive
    recording = archive.options()
    assert any(o.startswith("-XX:ArchiveClassesAtExit=") for o in recording)
    class_archive._recording.clear()

    # A recording whose JVM still runs (this test's own process) is left alone, and none is started beside it.
    dump = next(archive.path.parent.glob("*.part"), None) or _archive_files(archive, 1, magic=True, jvm=None)
    dump.write_bytes(class_archive._ARCHIVE_MAGIC)
    dump.with_suffix(".jvm").write_text(str(os.getpid()))
    assert archive.options() == [] and not archive.path.exists()

    # Its JVM gone but the file cut short (no header): dropped, and the next run records again.
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    dump.write_bytes(b"\0\0\0\0")
    dump.with_suffix(".jvm").write_text(str(dead_pid))
    assert any(o.startswith("-XX:ArchiveClassesAtExit=") for o in archive.options())
    assert not dump.exists() and not archive.path.exists()
    class_archive._recording.clear()

    # A whole recording of a JVM that has exited: moved into place and mapped from then on.
    _archive_files(archive, 2, magic=True, jvm=dead_pid)
    options = archive.options()
    assert f"-XX:SharedArchiveFile={archive.path}" in options and archive.path.is_file()
    assert not list(archive.path.parent.glob("*.part")) and not list(archive.path.parent.glob("*.jvm"))
    assert archive.options() == options
