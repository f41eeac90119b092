"""The project's one JVM class, ``io.lambdapipeline.delta.ListFromS3LogStore``: compiled once per machine.

Delta's S3 log store lists a table's whole ``_delta_log`` each time a reader refreshes the table, so the query
server and the dashboard make more S3 requests every hour a table commits (see ``ListFromS3LogStore.java``
beside this module). The class is compiled here with ``javac`` against the jars it links to (Delta's storage
jar, hadoop-aws and its AWS SDK, Spark's Hadoop) and cached like the Maven jars; ``lambda-pipeline package``
ships it in the artifact's ``jars/``, so a cluster compiles nothing. Without a JDK a local ``s3a://`` session
keeps Delta's own store and says so once.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterable
from pathlib import Path

from lambda_pipeline.core.cache import cache_dir
from lambda_pipeline.core.errors import EnvironmentProblem

__all__ = ["LOG_STORE_CLASS", "LOG_STORE_JAR_PREFIX", "log_store_jar"]

LOG_STORE_CLASS = "io.lambdapipeline.delta.ListFromS3LogStore"
LOG_STORE_JAR_PREFIX = "lambda-pipeline-s3-log-store-"
_SOURCE = Path(__file__).with_name("ListFromS3LogStore.java")
_FIXED_TIME = (1980, 1, 1, 0, 0, 0)  # same classes, same jar bytes: the artifact stays reproducible
_COMPILE_TIMEOUT_SECONDS = 300


def log_store_jar(classpath: Iterable[str | Path], *, required: bool = True) -> Path | None:
    """The jar of :data:`LOG_STORE_CLASS`, compiled against ``classpath`` (hadoop-aws's resolved jars) on
    first use and cached under a name that depends on the source and on those jars.

    Without ``javac``: an :class:`EnvironmentProblem` naming what to install if ``required`` (packaging an
    artifact), else None (a local session then keeps Delta's own S3 store).
    """
    jars = sorted({str(Path(jar)) for jar in classpath} | {str(jar) for jar in _spark_jars()})
    linked = sorted(Path(jar).name for jar in jars)
    digest = hashlib.sha256(_SOURCE.read_bytes() + "\n".join(linked).encode()).hexdigest()[:16]
    target = cache_dir() / "jars" / f"{LOG_STORE_JAR_PREFIX}{digest}.jar"
    if target.is_file():
        return target
    javac = shutil.which("javac")
    if javac is None:
        message = (
            "javac (a JDK) was not found, so the S3 log store that lists a table's log from a version could not be "
            "built; install a JDK 17 (Debian: apt-get install openjdk-17-jdk-headless)"
        )
        if required:
            raise EnvironmentProblem(message)
        print(f"lambda-pipeline: {message}; Delta's own S3 log store is used", file=sys.stderr, flush=True)
        return None
    from lambda_pipeline.core.locks import file_lock

    with file_lock(cache_dir() / "log-store-jar.lock", _COMPILE_TIMEOUT_SECONDS, "compiling the S3 log store"):
        if target.is_file():  # another process compiled it meanwhile
            return target
        with tempfile.TemporaryDirectory(prefix="lambda-pipeline-javac-") as work:
            classes = Path(work) / "classes"
            command = [javac, "--release", "17", "-nowarn", "-cp", ":".join(jars), "-d", str(classes), str(_SOURCE)]
            try:
                done = subprocess.run(command, capture_output=True, text=True, timeout=_COMPILE_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                raise EnvironmentProblem(f"javac took over {_COMPILE_TIMEOUT_SECONDS}s on {_SOURCE.name}") from None
            if done.returncode != 0:
                tail = " | ".join(line for line in done.stderr.splitlines()[-6:] if line.strip())
                raise EnvironmentProblem(
                    f"javac could not compile {_SOURCE} against the hadoop-aws and Delta jars: {tail}; "
                    "the Hadoop release Spark ships may have changed its S3A API"
                )
            partial = target.with_name(target.name + ".part")
            target.parent.mkdir(parents=True, exist_ok=True)
            with zipfile.ZipFile(partial, "w", compression=zipfile.ZIP_DEFLATED) as archive:
                for file in sorted(classes.rglob("*.class")):
                    info = zipfile.ZipInfo(file.relative_to(classes).as_posix(), date_time=_FIXED_TIME)
                    info.external_attr = 0o644 << 16
                    info.compress_type = zipfile.ZIP_DEFLATED
                    archive.writestr(info, file.read_bytes())
            partial.replace(target)
    return target


def _spark_jars() -> list[Path]:
    """Spark's own Hadoop jar (``hadoop-client-api``), which the class links against beside hadoop-aws."""
    import pyspark

    return sorted((Path(pyspark.__file__).parent / "jars").glob("hadoop-client-api-*.jar"))
