"""The JVM packages Spark needs beyond its own jars (Delta Lake, the Kafka connector, hadoop-aws), fetched
once per machine and cached.

Several jobs often start together on an empty cache (docker compose, the crash tests, an operator starting
ingest and batch at once): one resolves, with Spark's own resolver in a child process, under a lock; the
others wait for the manifest it records, and later starts read the jar paths from it without Ivy.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from lambda_pipeline.core.cache import cache_dir
from lambda_pipeline.core.errors import EnvironmentProblem
from lambda_pipeline.core.verbosity import verbose

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

__all__ = [
    "DELTA_COORDINATE",
    "KAFKA_COORDINATE",
    "MSK_IAM_COORDINATE",
    "TOKEN_PROVIDER",
    "classpath_probes",
    "hadoop_aws_coordinate",
    "hadoop_version",
    "ivy_jar_name",
    "required_packages",
    "resolve_jars",
    "token_provider_jar",
]

SCALA_BINARY = "2.13"


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


# Amazon MSK IAM authentication for the Kafka client (SASL mechanism AWS_MSK_IAM).
MSK_IAM_COORDINATE = "software.amazon.msk:aws-msk-iam-auth:2.3.5"


def classpath_probes(coordinate: str) -> tuple[tuple[str, str], ...]:
    """(class, jar that holds it) for the classes a package brings that its users load: how a driver that
    spark-submit started, with whatever ``--jars`` it was given, finds a missing jar before a job fails on it."""
    _, artifact, version = coordinate.split(":")[:3]
    if artifact.startswith("delta-spark_"):
        return (
            ("io.delta.sql.DeltaSparkSessionExtension", f"{artifact}-{version}.jar"),
            ("io.delta.storage.LogStore", f"delta-storage-{version}.jar"),
        )
    if artifact.startswith("spark-sql-kafka-0-10_"):
        return (
            ("org.apache.spark.sql.kafka010.KafkaSourceProvider", f"{artifact}-{version}.jar"),
            ("org.apache.spark.kafka010.KafkaTokenUtil", f"{TOKEN_PROVIDER[1]}-<version>.jar"),
            ("org.apache.kafka.clients.consumer.KafkaConsumer", "kafka-clients-<version>.jar"),
            ("org.apache.commons.pool2.impl.GenericKeyedObjectPool", "commons-pool2-<version>.jar"),
        )
    if artifact == "hadoop-aws":
        return (
            ("org.apache.hadoop.fs.s3a.S3AFileSystem", f"{artifact}-{version}.jar"),
            ("software.amazon.awssdk.services.s3.S3Client", "bundle-<version>.jar (the AWS SDK v2)"),
        )
    if artifact == "aws-msk-iam-auth":
        return (("software.amazon.msk.auth.iam.IAMLoginModule", f"{artifact}-{version}.jar"),)
    return ()


def token_provider_jar() -> Path:
    """The token-provider jar: at pyspark's version if Maven Central has it, else the fallback release."""
    import urllib.error
    import urllib.request

    import pyspark

    group, artifact = TOKEN_PROVIDER
    folder = cache_dir() / "jars"
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
    """Delta Lake, then ``extra``: the packages a session of this project is started with."""
    return (DELTA_COORDINATE, *extra)


def ivy_jar_name(coordinate: str) -> str:
    """The file name Spark's resolver gives the jar of ``group:artifact:version`` (``group_artifact-version.jar``):
    how ``spark.jars`` of a running session shows which packages it holds."""
    group, artifact, version = coordinate.split(":")[:3]
    return f"{group}_{artifact}-{version}.jar"


def _manifest(packages: tuple[str, ...]) -> Path:
    digest = hashlib.sha256("\n".join(packages).encode()).hexdigest()[:16]
    return cache_dir() / f"jars-{digest}.txt"


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

    with file_lock(cache_dir() / "resolve.lock", RESOLVE_TIMEOUT_SECONDS, "fetching the JVM packages"):
        cached = _cached_jars(packages)  # another process may have finished meanwhile
        if cached:
            return cached
        s3a = any(":hadoop-aws:" in p for p in packages)
        size = "about 90 MB" + (", and about 690 MB for the AWS SDK bundle of hadoop-aws" if s3a else "")
        ivy = conf.get("spark.jars.ivy", str(Path.home() / ".ivy2.5.2"))
        log = cache_dir() / "resolve.log"
        print(
            f"lambda-pipeline: fetching the JVM packages from Maven Central, once for this machine ({size}; "
            f"cached in {ivy}): {', '.join(packages)}",
            file=sys.stderr,
            flush=True,
        )
        command = [sys.executable, "-m", "lambda_pipeline.core.jvm_packages", "--resolve", *packages]
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


if __name__ == "__main__":  # the resolver child of resolve_jars
    import argparse

    parser = argparse.ArgumentParser(prog="python -m lambda_pipeline.core.jvm_packages")
    parser.add_argument("--resolve", nargs="+", required=True, metavar="COORDINATE")
    parser.add_argument("--conf", action="append", default=[], metavar="KEY=VALUE")
    parsed = parser.parse_args()
    _resolve_here(tuple(parsed.resolve), dict(item.split("=", 1) for item in parsed.conf))
