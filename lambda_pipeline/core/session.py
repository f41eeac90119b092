"""The one Spark session factory: Java check, Delta jars, and every setting in one place.

Jobs, the demo and the tests all get their session here, so a setting that
matters for correctness (time zone, shuffle partitions frozen into streaming
checkpoints, the state store) is never chosen twice.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from lambda_pipeline.core.config import SparkSettings
from lambda_pipeline.core.errors import EnvironmentProblem
from lambda_pipeline.core.locks import process_alive

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

__all__ = [
    "DELTA_COORDINATE",
    "KAFKA_COORDINATE",
    "ClassArchive",
    "check_java",
    "enable_verbose",
    "get_spark",
    "hadoop_aws_coordinate",
    "hadoop_version",
    "required_packages",
    "resolve_jars",
    "token_provider_jar",
    "verbose",
]

SCALA_BINARY = "2.13"
MIN_JAVA = 17


def _delta_coordinate() -> str:
    """Maven coordinate of the Delta jar that matches the installed pyspark and delta-spark."""
    import pyspark

    spark_minor = ".".join(pyspark.__version__.split(".")[:2])
    delta_version = importlib.metadata.version("delta-spark")
    return f"io.delta:delta-spark_{spark_minor}_{SCALA_BINARY}:{delta_version}"


DELTA_COORDINATE = _delta_coordinate()


def _kafka_coordinate() -> str:
    """Spark's own Kafka connector, at the installed pyspark's version."""
    import pyspark

    return f"org.apache.spark:spark-sql-kafka-0-10_{SCALA_BINARY}:{pyspark.__version__}"


KAFKA_COORDINATE = _kafka_coordinate()

_HADOOP_CLIENT_JAR = re.compile(r"^hadoop-client-api-(\d+\.\d+\.\d+)\.jar$")


def hadoop_version() -> str:
    """The Hadoop release Spark runs on, read from its ``hadoop-client-api-<version>.jar``.

    hadoop-aws must be exactly that release (it links against Hadoop internals), so the version is
    taken from the jars Spark really loads: ``$SPARK_HOME/jars`` under spark-submit, else pyspark's own.
    """
    import pyspark

    folders = [Path(pyspark.__file__).parent / "jars"]
    if os.environ.get("SPARK_HOME"):
        folders.insert(0, Path(os.environ["SPARK_HOME"]) / "jars")
    for folder in folders:
        matches = (_HADOOP_CLIENT_JAR.match(jar.name) for jar in folder.glob("hadoop-client-api-*.jar"))
        found = sorted((m.group(1) for m in matches if m), key=lambda v: tuple(int(n) for n in v.split(".")))
        if found:
            return found[-1]
    raise EnvironmentProblem(
        f"no hadoop-client-api-<version>.jar in {' or '.join(map(str, folders))}, so the hadoop-aws release that "
        "matches Spark is unknown; pass --packages org.apache.hadoop:hadoop-aws:<Spark's Hadoop version> yourself"
    )


def hadoop_aws_coordinate() -> str:
    """``org.apache.hadoop:hadoop-aws`` at Spark's Hadoop version: the ``s3a://`` file system.

    Its dependency ``software.amazon.awssdk:bundle`` (AWS SDK v2, every service) is large: about 690 MB
    for Hadoop 3.5.0, fetched once into ``~/.ivy2.5.2`` and reused from there.
    """
    return f"org.apache.hadoop:hadoop-aws:{hadoop_version()}"


# The Kafka connector's one Spark-internal dependency, spark-token-provider-kafka-0-10, is not on Maven
# Central for every Spark release (none for 4.1.x or 4.2.0 when this was written), so resolving the
# connector alone fails. It is excluded from resolution and the newest published release that the
# connector links against is fetched directly instead (the connector uses only its stable helpers).
TOKEN_PROVIDER = ("org.apache.spark", f"spark-token-provider-kafka-0-10_{SCALA_BINARY}")
TOKEN_PROVIDER_FALLBACK = "4.0.0"
MAVEN_REPO = os.environ.get("LAMBDA_PIPELINE_MAVEN_REPO", "https://repo1.maven.org/maven2")


def token_provider_jar() -> Path:
    """The token-provider jar: at pyspark's version if Maven Central has it, else the fallback release."""
    import urllib.error
    import urllib.request

    import pyspark

    group, artifact = TOKEN_PROVIDER
    folder = _cache_dir() / "jars"
    errors = []
    for version in dict.fromkeys((pyspark.__version__, TOKEN_PROVIDER_FALLBACK)):
        name = f"{artifact}-{version}.jar"
        target = folder / name
        if target.is_file():
            return target
        url = f"{MAVEN_REPO}/{group.replace('.', '/')}/{artifact}/{version}/{name}"
        try:
            with urllib.request.urlopen(url, timeout=60) as response:
                data = response.read()
            with urllib.request.urlopen(url + ".sha1", timeout=60) as response:
                expected = response.read().decode().split()[0].strip()
        except (urllib.error.URLError, OSError) as exc:
            errors.append(f"{url}: {exc}")
            continue
        if hashlib.sha1(data).hexdigest() != expected:
            raise EnvironmentProblem(f"checksum mismatch for {url}; retry, or check the Maven mirror")
        folder.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(".part")
        partial.write_bytes(data)
        partial.replace(target)
        return target
    raise EnvironmentProblem(f"could not fetch {group}:{artifact} from Maven Central: {'; '.join(errors)}")


def required_packages(extra: tuple[str, ...] = ()) -> tuple[str, ...]:
    return (DELTA_COORDINATE, *extra)


def check_java() -> str:
    """Return the Java version string, or explain how to get Java 17+."""
    java_home = os.environ.get("JAVA_HOME")
    java = str(Path(java_home) / "bin" / "java") if java_home else shutil.which("java")
    hint = (
        "install OpenJDK 17 or newer (Debian/Ubuntu: apt-get install openjdk-17-jre-headless; "
        "macOS: brew install openjdk@17) and put it on PATH or set JAVA_HOME"
    )
    if not java or not Path(java).exists():
        where = f"JAVA_HOME={java_home}" if java_home else "PATH"
        raise EnvironmentProblem(f"Java was not found on {where}: Spark needs Java {MIN_JAVA}+; {hint}.")
    try:
        out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise EnvironmentProblem(f"could not run '{java} -version' ({exc}); {hint}.") from None
    text = out.stderr + out.stdout
    match = re.search(r'version "(\d+)(?:\.(\d+))?', text)
    if not match:
        raise EnvironmentProblem(f"could not read the Java version from '{java} -version': {text.strip()!r}")
    major = int(match.group(1))
    if major == 1 and match.group(2):  # "1.8" style
        major = int(match.group(2))
    if major < MIN_JAVA:
        raise EnvironmentProblem(f"{java} is Java {major}; Spark 4 needs Java {MIN_JAVA}+: {hint}.")
    return match.group(0)


def _cache_dir() -> Path:
    base = os.environ.get("LAMBDA_PIPELINE_CACHE") or os.environ.get("XDG_CACHE_HOME")
    return Path(base) / "lambda-pipeline" if base else Path.home() / ".cache" / "lambda-pipeline"


def _manifest(packages: tuple[str, ...]) -> Path:
    digest = hashlib.sha256("\n".join(packages).encode()).hexdigest()[:16]
    return _cache_dir() / f"jars-{digest}.txt"


def _cached_jars(packages: tuple[str, ...]) -> list[str] | None:
    """The jars a finished resolution recorded, if every one is still there at its recorded size.

    A manifest is written only once Spark has loaded every jar, and each line carries the jar's size, so
    a jar that another process is still writing, or that was truncated or removed since, is never trusted.
    """
    manifest = _manifest(packages)
    try:
        lines = [line.split("\t") for line in manifest.read_text().splitlines() if line]
    except OSError:
        return None
    if not lines or any(len(parts) != 2 or not parts[1].isdigit() for parts in lines):
        return None  # absent, or written by an older release without sizes
    for path, size in lines:
        try:
            if os.path.getsize(path) != int(size):
                return None
        except OSError:
            return None
    return [path for path, _ in lines]


def _remember_jars(spark: SparkSession, packages: tuple[str, ...]) -> None:
    listed = spark.conf.get("spark.jars", "") or ""
    jars = [j.removeprefix("file://").removeprefix("file:") for j in listed.split(",")]
    jars = [j for j in jars if j.endswith(".jar") and Path(j).is_file()]
    if jars:
        manifest = _manifest(packages)
        manifest.parent.mkdir(parents=True, exist_ok=True)
        partial = manifest.with_suffix(f".{os.getpid()}.part")
        partial.write_text("".join(f"{jar}\t{os.path.getsize(jar)}\n" for jar in jars))
        partial.replace(manifest)  # readers see the whole manifest or none


RESOLVE_TIMEOUT_SECONDS = 1800
"""How long a first resolution (and a process waiting for another's) may take: the AWS SDK is 690 MB."""
_RESOLVER_CONF = ("spark.jars.ivy", "spark.jars.repositories", "spark.jars.ivySettings", "spark.jars.excludes")


def enable_verbose() -> None:
    """``--verbose``: this process and the jobs it starts (the jar resolver, the JVM) print everything."""
    os.environ["LAMBDA_PIPELINE_VERBOSE"] = "1"


def verbose() -> bool:
    """``LAMBDA_PIPELINE_VERBOSE=1`` (or ``--verbose``): Ivy's report, Spark's own log lines, all of it."""
    return os.environ.get("LAMBDA_PIPELINE_VERBOSE", "").strip().lower() in {"1", "true", "yes", "on"}


def resolve_jars(packages: tuple[str, ...], conf: dict[str, str]) -> list[str]:
    """Local paths of ``packages`` and their dependencies, fetched once per machine, under a lock.

    Several jobs often start together on an empty cache (docker compose, the crash tests, an operator
    starting ingest and batch at once). Only one resolves, in a child process whose Ivy report goes to
    ``resolve.log`` in the cache (or to the terminal with :func:`verbose`); the others wait for its
    manifest. ``conf`` passes the resolver settings on (``spark.jars.ivy``, repositories, excludes).
    """
    cached = _cached_jars(packages)
    if cached:
        return cached
    from lambda_pipeline.core.locks import file_lock

    with file_lock(_cache_dir() / "resolve.lock", RESOLVE_TIMEOUT_SECONDS, "fetching the JVM packages"):
        cached = _cached_jars(packages)  # another process may have finished meanwhile
        if cached:
            return cached
        s3a = any(":hadoop-aws:" in p for p in packages)
        size = "about 90 MB" + (", and about 690 MB for the AWS SDK bundle of hadoop-aws" if s3a else "")
        ivy = conf.get("spark.jars.ivy", str(Path.home() / ".ivy2.5.2"))
        log = _cache_dir() / "resolve.log"
        print(
            f"lambda-pipeline: fetching the JVM packages from Maven Central, once for this machine ({size}; "
            f"cached in {ivy}): {', '.join(packages)}",
            file=sys.stderr,
            flush=True,
        )
        command = [sys.executable, "-m", "lambda_pipeline.core.session", "--resolve", *packages]
        for key in _RESOLVER_CONF:
            if key in conf:
                command += ["--conf", f"{key}={conf[key]}"]
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("w") as out:
            quiet = not verbose()
            try:
                done = subprocess.run(
                    command,
                    timeout=RESOLVE_TIMEOUT_SECONDS,
                    check=False,
                    stdout=out if quiet else None,
                    stderr=subprocess.STDOUT if quiet else None,
                )
            except subprocess.TimeoutExpired:
                raise EnvironmentProblem(f"fetching the JVM packages took over {RESOLVE_TIMEOUT_SECONDS}s") from None
        cached = _cached_jars(packages)
        if done.returncode != 0 or not cached:
            tail = " | ".join(line.strip() for line in _tail(log, 6)) if log.exists() else ""
            raise EnvironmentProblem(
                f"could not fetch the JVM packages {', '.join(packages)} (see {log}): {tail or 'no output'}; "
                f"check access to Maven Central, or pre-fetch with: mvn dependency:get -Dartifact={packages[0]}"
            )
        print("lambda-pipeline: JVM packages fetched; later starts reuse them", file=sys.stderr, flush=True)
        return cached


def _tail(path: Path, lines: int) -> list[str]:
    kept = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    return kept[-lines:]


def _resolve_here(packages: tuple[str, ...], conf: dict[str, str]) -> None:
    """In the child of :func:`resolve_jars`: let Spark's resolver fetch ``packages``, record the jars."""
    from pyspark.sql import SparkSession

    builder = SparkSession.builder.master("local[1]").appName("lambda-pipeline-resolve")
    for key, value in {**conf, "spark.jars.packages": ",".join(packages), "spark.ui.enabled": "false"}.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    try:
        _remember_jars(spark, packages)
    finally:
        spark.stop()


def _quiet_log4j() -> Path:
    """A log4j2 configuration that keeps Spark's errors and drops its start-up INFO and WARN lines."""
    path = _cache_dir() / "log4j2-quiet.properties"
    text = (
        "rootLogger.level = error\n"
        "rootLogger.appenderRef.stderr.ref = console\n"
        "appender.console.type = Console\n"
        "appender.console.name = console\n"
        "appender.console.target = SYSTEM_ERR\n"
        "appender.console.layout.type = PatternLayout\n"
        "appender.console.layout.pattern = %d{HH:mm:ss} %p %c{1}: %m%n%ex\n"
        # PySpark's gateway starts logging as a shell would: without a level of its own for the gateway's
        # logger, Spark prints "Setting default log level to WARN" and how to change it.
        "logger.repl.name = org.apache.spark.api.python.PythonGatewayServer\n"
        "logger.repl.level = error\n"
    )
    if not path.is_file() or path.read_text() != text:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".{os.getpid()}.part")
        partial.write_text(text)
        partial.replace(path)
    return path


def get_spark(
    settings: SparkSettings | None = None,
    *,
    app_name: str | None = None,
    extra_conf: dict[str, str] | None = None,
    packages: tuple[str, ...] = (),
    short_lived: bool = False,
) -> SparkSession:
    """Create (or return the running) Spark session with Delta enabled.

    ``short_lived``: a driver that answers one request and exits (a cold ``query``) starts with the JIT's
    first tier only, the serial collector and a class-data archive (:class:`ClassArchive`): about half the
    start and first-job time. Long-running jobs keep the JVM's defaults, which are faster after warm-up.

    The first call on a machine fetches the JVM packages from Maven Central (:func:`resolve_jars`:
    about 90 MB, cached under ~/.ivy2.5.2; with :func:`hadoop_aws_coordinate` for ``s3a://`` about
    690 MB more), once, under a lock; later starts read the recorded jar paths. Under ``spark-submit``
    the JVM already runs: pass ``--packages`` there. Spark's start-up log lines are dropped unless
    :func:`verbose` (its errors stay).
    """
    from pyspark.sql import SparkSession

    settings = settings or SparkSettings()
    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    check_java()
    if settings.master.startswith("local"):
        # Local runs talk to loopback only (and skip the "hostname resolves to a loopback address" warning).
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    wanted = required_packages(packages)
    conf: dict[str, str] = {
        "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
        "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
        "spark.sql.session.timeZone": "UTC",
        "spark.sql.shuffle.partitions": str(settings.shuffle_partitions),
        # Delta rebuilds table state with this many tasks (default 50): far too many on 2 cores.
        "spark.databricks.delta.snapshotPartitions": str(max(1, settings.shuffle_partitions)),
        # Delta's VACUUM lists a table's files with this many tasks (default 10,000: 35 s for a small table
        # on 2 cores); Spark's own file listing uses it only past 32 paths.
        "spark.sql.sources.parallelPartitionDiscovery.parallelism": str(max(8, 4 * settings.shuffle_partitions)),
        "spark.sql.streaming.stateStore.providerClass": (
            "org.apache.spark.sql.execution.streaming.state.RocksDBStateStoreProvider"
        ),
        # Commit state changes as a changelog instead of a RocksDB snapshot every micro-batch.
        "spark.sql.streaming.stateStore.rocksdb.changelogCheckpointing.enabled": "true",
        # The ingest dedup watermark moves every micro-batch; a no-data batch after each one would only
        # evict state, which the next data batch does as well, at half the number of micro-batches.
        "spark.sql.streaming.noDataMicroBatches.enabled": "false",
        "spark.ui.showConsoleProgress": "false",
        "spark.sql.streaming.forceDeleteTempCheckpointLocation": "true",
    }
    extra_jars = []
    if KAFKA_COORDINATE in wanted:
        conf["spark.jars.excludes"] = ":".join(TOKEN_PROVIDER)
        extra_jars.append(str(token_provider_jar()))
    conf.update(settings.conf)
    conf.update(extra_conf or {})
    # spark-submit starts the JVM first and hands Python its gateway port: packages come from --packages.
    launched_by_submit = "PYSPARK_GATEWAY_PORT" in os.environ
    if not launched_by_submit:
        jars = resolve_jars(wanted, conf)
        conf["spark.jars"] = ",".join(dict.fromkeys([*jars, *extra_jars]))
        if "spark.driver.extraJavaOptions" not in conf:
            options = [] if verbose() else [f"-Dlog4j2.configurationFile=file:{_quiet_log4j()}"]
            if short_lived:
                options += QUICK_START_OPTIONS + ClassArchive.for_jars(conf["spark.jars"]).options()
            if options:
                conf["spark.driver.extraJavaOptions"] = " ".join(options)
    builder = SparkSession.builder.master(settings.master).appName(app_name or settings.app_name)
    for key, value in conf.items():
        builder = builder.config(key, value)
    try:
        spark = builder.getOrCreate()
    except Exception as exc:  # the JVM failed to start
        raise EnvironmentProblem(
            f"Spark could not start ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}). "
            "Check Java and the settings under spark: in the config"
        ) from exc
    if verbose() or settings.log_level in ("INFO", "DEBUG"):
        spark.sparkContext.setLogLevel(settings.log_level)
    else:  # Spark's WARN lines (AQE off for streams, long plan strings) are for --verbose
        spark.sparkContext.setLogLevel("ERROR")
        _quiet_pyspark_loggers()
    _check_delta(spark)
    _note_recording_jvm()
    return spark


QUICK_START_OPTIONS = ["-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC"]
"""For a driver that exits after one request: compile with C1 only, collect with one thread."""

_ARCHIVE_MAGIC = (0xF00BABA8).to_bytes(4, "little")
"""The first bytes of a finished dynamic archive: the JVM writes its header last."""


@dataclass(frozen=True)
class ClassArchive:
    """A dynamic class-data-sharing archive of the classes a short-lived driver loads (JDK 13+).

    A cold query spends seconds loading and verifying Spark's and Delta's classes; mapped from an archive
    they load in a fraction of that. The first short-lived run records the archive as its JVM exits,
    after the answer is printed and in the background (about 20 s of one core, once); the next runs map it.
    The archive is keyed by the Java version and the exact jars, so a new release or another set of
    packages records its own; a JVM that cannot use an archive ignores it (``-Xshare:auto``).
    """

    path: Path

    @classmethod
    def for_jars(cls, jars: str) -> ClassArchive:
        import pyspark

        key = "\n".join([check_java(), pyspark.__version__, os.environ.get("SPARK_HOME", ""), jars])
        return cls(_cache_dir() / "cds" / f"driver-{hashlib.sha256(key.encode()).hexdigest()[:16]}.jsa")

    def options(self) -> list[str]:
        """The JVM options that map the archive, or record it (none while another run records it)."""
        quiet = "-Xlog:cds=off,cds+dynamic=off"  # the JVM prints the classes it cannot archive on stdout
        if self.path.is_file() or self._adopt():
            return ["-Xshare:auto", f"-XX:SharedArchiveFile={self.path}", quiet]
        if self._recordings():
            return []
        self.path.parent.mkdir(parents=True, exist_ok=True)
        dump = self.path.with_name(f"{self.path.name}.{os.getpid()}.part")
        _recording.append(dump)
        return [f"-XX:ArchiveClassesAtExit={dump}", quiet]

    def _recordings(self) -> list[tuple[Path, int | None]]:
        """(dump, recording JVM's pid, None when unknown or gone) of every recording left or under way."""
        found = []
        for dump in self.path.parent.glob(f"{self.path.name}.*.part"):
            try:
                pid: int | None = int(dump.with_suffix(".jvm").read_text())
            except (OSError, ValueError):
                pid = None
            found.append((dump, pid if pid is not None and process_alive(pid) else None))
        return [(dump, pid) for dump, pid in found if pid is not None or dump.stat().st_mtime > _stale()]

    def _adopt(self) -> bool:
        """Move a recording whose JVM has exited into place, if it is whole; drop the others that ended."""
        for dump in self.path.parent.glob(f"{self.path.name}.*.part"):
            marker = dump.with_suffix(".jvm")
            try:
                pid = int(marker.read_text())
            except (OSError, ValueError):
                pid = None
            if pid is not None and process_alive(pid):
                continue
            if pid is None and dump.stat().st_mtime > _stale():
                continue  # its JVM has not reported yet
            with dump.open("rb") as head:
                whole = head.read(4) == _ARCHIVE_MAGIC
            if whole and not self.path.exists():
                dump.replace(self.path)
            dump.unlink(missing_ok=True)
            marker.unlink(missing_ok=True)
        return self.path.is_file()


_recording: list[Path] = []


def _stale() -> float:
    """Recordings older than this (epoch seconds) whose JVM never reported are abandoned."""
    import time

    return time.time() - 600


def _note_recording_jvm() -> None:
    """Tell later runs which JVM writes this run's archive, so that they adopt it only once it has exited."""
    from lambda_pipeline.core.jvm import gateway_pid

    pid = gateway_pid()
    for dump in _recording:
        if pid is not None:
            dump.with_suffix(".jvm").write_text(str(pid))
    _recording.clear()


def _quiet_pyspark_loggers() -> None:
    """PySpark logs every analysis error as a JSON record with the whole Java trace; the CLI says it in one line."""
    import logging

    from pyspark.logger import PySparkLogger

    for name in ("SQLQueryContextLogger", "DataFrameQueryContextLogger"):
        PySparkLogger.getLogger(name).setLevel(logging.CRITICAL)


def _check_delta(spark: SparkSession) -> None:
    from delta.tables import DeltaTable

    try:  # a missing jar shows as "'JavaPackage' object is not callable"
        DeltaTable.isDeltaTable(spark, "file:///nonexistent-lambda-pipeline-probe")
    except Exception:
        raise EnvironmentProblem(
            f"the Delta Lake jars are not on Spark's classpath; under spark-submit pass --packages {DELTA_COORDINATE}"
        ) from None


if __name__ == "__main__":  # the resolver child of resolve_jars
    import argparse

    parser = argparse.ArgumentParser(prog="python -m lambda_pipeline.core.session")
    parser.add_argument("--resolve", nargs="+", required=True, metavar="COORDINATE")
    parser.add_argument("--conf", action="append", default=[], metavar="KEY=VALUE")
    parsed = parser.parse_args()
    _resolve_here(tuple(parsed.resolve), dict(item.split("=", 1) for item in parsed.conf))
