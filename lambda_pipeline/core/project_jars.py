"""The project's own JVM classes, compiled once per machine with ``javac`` and cached like the Maven jars.

Two small classes do what Spark's and Delta's Python APIs cannot do fast enough, each in its own jar because
each links against different jars (the sources sit beside this module):

- ``io.lambdapipeline.delta.ListFromS3LogStore`` (:func:`log_store_jar`): Delta's S3 log store, listing a
  table's log from a version instead of whole, so readers of a table that commits every few seconds do not
  make more S3 requests every hour (``docs/s3.md``). Compiled against hadoop-aws, its AWS SDK and Delta.
- ``io.lambdapipeline.dedup.FirstCopies`` (:func:`dedup_jar`): ingest's dedup, state with a time to live, whose
  cost per micro-batch does not grow with the keys it holds (``docs/architecture.md``). Compiled against Spark.

``lambda-pipeline package`` ships them in the artifact's ``jars/``, so a cluster compiles nothing. A jar's name
carries a digest of its source and of the jars it was compiled against, so a new release or a new Spark
compiles again.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path

from lambda_pipeline.core.cache import cache_dir
from lambda_pipeline.core.errors import EnvironmentProblem
from lambda_pipeline.core.reproducible import write_zip

__all__ = [
    "DEDUP_CLASS",
    "DEDUP_JAR_PREFIX",
    "LOG_STORE_CLASS",
    "LOG_STORE_JAR_PREFIX",
    "dedup_jar",
    "log_store_jar",
]

LOG_STORE_CLASS = "io.lambdapipeline.delta.ListFromS3LogStore"
LOG_STORE_JAR_PREFIX = "lambda-pipeline-s3-log-store-"
DEDUP_CLASS = "io.lambdapipeline.dedup.FirstCopies"
DEDUP_JAR_PREFIX = "lambda-pipeline-dedup-"
_HERE = Path(__file__).parent
_COMPILE_TIMEOUT_SECONDS = 300
_INSTALL_JDK = "install a JDK 17 (Debian: apt-get install openjdk-17-jdk-headless)"


def log_store_jar(classpath: Iterable[str | Path], *, required: bool = True) -> Path | None:
    """The jar of :data:`LOG_STORE_CLASS`, compiled against ``classpath`` (hadoop-aws's resolved jars) and Spark's.

    Without ``javac``: an :class:`EnvironmentProblem` naming what to install if ``required`` (packaging an
    artifact), else None (a local session then keeps Delta's own S3 store, and says so).
    """
    return _compiled(
        "ListFromS3LogStore.java",
        LOG_STORE_JAR_PREFIX,
        [Path(jar) for jar in classpath],
        required=required,
        without=(
            "javac (a JDK) was not found, so the S3 log store that lists a table's log from a version could not be "
            f"built; {_INSTALL_JDK}"
        ),
        fallback="Delta's own S3 log store is used",
    )


def dedup_jar(*, required: bool = True) -> Path | None:
    """The jar of :data:`DEDUP_CLASS`, compiled against Spark's jars: every ingest needs it.

    Without ``javac``: an :class:`EnvironmentProblem` if ``required`` (packaging), else None: a session then
    starts without it, and only an ingest fails, naming what to install
    (:func:`~lambda_pipeline.core.jvm.first_copies`).
    """
    return _compiled(
        "FirstCopies.java",
        DEDUP_JAR_PREFIX,
        [],
        required=required,
        without=f"javac (a JDK) was not found, and ingest's dedup is a class compiled on first use; {_INSTALL_JDK}",
        fallback=None,  # the session says nothing: only an ingest needs the class, and says why
    )


def _compiled(
    source_name: str,
    prefix: str,
    classpath: list[Path],
    *,
    required: bool,
    without: str,
    fallback: str | None,
) -> Path | None:
    """The cached jar of ``source_name``, compiled if absent. Without ``javac``: ``without`` as an
    :class:`EnvironmentProblem` if ``required``, else None, after printing ``without; fallback`` unless
    ``fallback`` is None."""
    import pyspark

    source = _HERE / source_name
    spark_jars = Path(pyspark.__file__).parent / "jars"
    linked = [*sorted({jar.name for jar in classpath}), f"pyspark-{pyspark.__version__}"]
    digest = hashlib.sha256(source.read_bytes() + "\n".join(linked).encode()).hexdigest()[:16]
    target = cache_dir() / "jars" / f"{prefix}{digest}.jar"
    if target.is_file():
        return target
    javac = shutil.which("javac")
    if javac is None:
        if required:
            raise EnvironmentProblem(without)
        if fallback is not None:
            print(f"lambda-pipeline: {without}; {fallback}", file=sys.stderr, flush=True)
        return None
    from lambda_pipeline.core.locks import file_lock

    with file_lock(cache_dir() / "project-jars.lock", _COMPILE_TIMEOUT_SECONDS, f"compiling {source_name}"):
        if target.is_file():  # another process compiled it meanwhile
            return target
        with tempfile.TemporaryDirectory(prefix="lambda-pipeline-javac-") as work:
            classes = Path(work) / "classes"
            path = ":".join([*(str(jar) for jar in sorted(set(classpath))), f"{spark_jars}/*"])
            command = [javac, "--release", "17", "-nowarn", "-cp", path, "-d", str(classes), str(source)]
            try:
                done = subprocess.run(command, capture_output=True, text=True, timeout=_COMPILE_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                raise EnvironmentProblem(f"javac took over {_COMPILE_TIMEOUT_SECONDS}s on {source}") from None
            if done.returncode != 0:
                tail = " | ".join(line for line in done.stderr.splitlines()[-6:] if line.strip())
                raise EnvironmentProblem(
                    f"javac could not compile {source}: {tail}; the Spark, Delta or Hadoop release installed "
                    "may have changed an API the class uses"
                )
            target.parent.mkdir(parents=True, exist_ok=True)
            write_zip(target, [(file.relative_to(classes).as_posix(), file) for file in classes.rglob("*.class")])
    return target
