"""The one Spark session factory: every setting in one place.

Jobs, the demo and the tests all get their session here, so a setting that
matters for correctness (time zone, shuffle partitions frozen into streaming
checkpoints, the state store) is never chosen twice.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

from lambda_pipeline.core.class_archive import note_recording_jvm, quick_start_options
from lambda_pipeline.core.config import SparkSettings
from lambda_pipeline.core.errors import EnvironmentProblem
from lambda_pipeline.core.java import check_java
from lambda_pipeline.core.jvm import hadoop_setting, missing_classes, set_context_setting
from lambda_pipeline.core.jvm_packages import (
    KAFKA_COORDINATE,
    TOKEN_PROVIDER,
    classpath_probes,
    ivy_jar_name,
    required_packages,
    resolve_jars,
    token_provider_jar,
)
from lambda_pipeline.core.log_store import S3A_LOG_STORE_KEY
from lambda_pipeline.core.pinned import PINNED_SESSION
from lambda_pipeline.core.project_jars import LOG_STORE_CLASS, dedup_jar, log_store_jar
from lambda_pipeline.core.verbosity import quiet_log4j, quiet_pyspark_loggers, verbose

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

__all__ = ["get_spark"]

_RUNTIME_PREFIXES = ("spark.databricks.delta.",)
"""Settings Spark does not register but reads from the session while it runs (Delta's, its table defaults)."""


def _session_conf(settings: SparkSettings, extra_conf: dict[str, str] | None) -> dict[str, str]:
    """Every Spark setting of the project's sessions: ``settings.conf`` and ``extra_conf`` win over the defaults,
    and the pinned settings win over everything."""
    return {
        "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
        "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
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
        # Spark's cache of compiled stages holds 100 classes by default, fewer than one ingest cycle uses (its
        # driver and its tasks each compile a stage, and Guava's cache evicts per quarter): a micro-batch of
        # 10,000 messages compiled 8 to 28 classes again (80-110 ms). Read once per JVM, at the first compile.
        "spark.sql.codegen.cache.maxEntries": "1024",
        "spark.ui.showConsoleProgress": "false",
        "spark.sql.streaming.forceDeleteTempCheckpointLocation": "true",
        **settings.conf,
        **(extra_conf or {}),
        **PINNED_SESSION,
    }


def _running_value(spark: SparkSession, key: str) -> str | None:
    """The value a setting has in the running session (Spark's default if not set), or None if it has none."""
    from pyspark.errors import SparkNoSuchElementException

    if key.startswith("spark.hadoop."):  # copied into Hadoop's configuration when the context started
        return hadoop_setting(spark, key.removeprefix("spark.hadoop."))
    try:
        return spark.conf.get(key)
    except SparkNoSuchElementException:
        return None


def _reuse(spark: SparkSession, settings: SparkSettings, conf: dict[str, str], packages: tuple[str, ...]) -> None:
    """Apply to a running session the settings it can take while it runs, and say which it cannot.

    Runtime SQL settings (shuffle partitions, the time zone, Delta's) are set on the session. The master,
    the packages, driver and other JVM options, static SQL and Hadoop settings were fixed when its JVM
    started: when one of them differs, one line on stderr names it, rather than ignoring it silently.
    """
    fixed = []
    master = spark.sparkContext.master
    if master != settings.master:
        fixed.append(f"spark.master ({settings.master}; it runs {master})")
    loaded = f"{_running_value(spark, 'spark.jars') or ''},{_running_value(spark, 'spark.jars.packages') or ''}"
    fixed += [f"package {p}" for p in packages if ivy_jar_name(p) not in loaded and p not in loaded]
    for key, value in conf.items():
        if _running_value(spark, key) == value:
            continue
        if not key.startswith("spark.hadoop.") and (spark.conf.isModifiable(key) or key.startswith(_RUNTIME_PREFIXES)):
            spark.conf.set(key, value)
        else:
            fixed.append(key)  # the key alone: a value may be a credential
    if fixed:
        origin = "that spark-submit started" if launched_by_submit() else "already running here"
        print(
            f"lambda-pipeline: reusing the Spark session {origin}; these settings need a new session and are "
            f"not applied: {', '.join(fixed)}",
            file=sys.stderr,
            flush=True,
        )


def get_spark(
    settings: SparkSettings | None = None,
    *,
    app_name: str | None = None,
    extra_conf: dict[str, str] | None = None,
    packages: tuple[str, ...] = (),
    short_lived: bool = False,
) -> SparkSession:
    """Create the Spark session with Delta enabled, or return the one already running in this process.

    A running session (a test's, the demo's earlier job, or one spark-submit's driver started) is returned
    with the runtime settings applied; the settings its JVM fixed at start are kept, and named on stderr
    when they differ (:func:`_reuse`).

    ``short_lived``: a driver that answers one request and exits (a cold ``query``) starts with the quick-start
    options of :func:`~lambda_pipeline.core.class_archive.quick_start_options`: about half the start and
    first-job time. Long-running jobs keep the JVM's defaults, which are faster after warm-up.

    The first call on a machine fetches the JVM packages from Maven Central
    (:func:`~lambda_pipeline.core.jvm_packages.resolve_jars`: about 90 MB, cached under ~/.ivy2.5.2; with
    hadoop-aws for ``s3a://`` about 690 MB more), once, under a lock; later starts read the recorded jar
    paths. Under ``spark-submit`` nothing is fetched (a cluster may have no internet): its JVM already runs
    with the jars it was given (``--jars``, the artifact's ``jars/``), and a missing one is named in one line
    (:func:`_check_submitted_jars`). Spark's start-up log lines are dropped unless
    :func:`~lambda_pipeline.core.verbosity.verbose` (its errors stay).
    """
    from pyspark.sql import SparkSession

    settings = settings or SparkSettings()
    wanted = required_packages(packages)
    conf = _session_conf(settings, extra_conf)
    active = SparkSession.getActiveSession()
    if active is not None:
        _reuse(active, settings, conf, wanted)
        return active
    check_java()
    if settings.master.startswith("local"):
        # Local runs talk to loopback only (and skip the "hostname resolves to a loopback address" warning).
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    if not launched_by_submit():
        extra_jars = []
        if KAFKA_COORDINATE in wanted:
            conf = {"spark.jars.excludes": ":".join(TOKEN_PROVIDER), **conf}
            extra_jars.append(str(token_provider_jar()))
        jars = resolve_jars(wanted, conf)
        dedup = dedup_jar(required=False)  # ingest's dedup (without a JDK only ingest fails, and says why)
        if dedup is not None:
            extra_jars.append(str(dedup))
        if _wants_s3a(wanted) and not _log_store_named(conf):
            built = log_store_jar(jars, required=False)
            if built is not None:
                extra_jars.append(str(built))
                conf[S3A_LOG_STORE_KEY] = LOG_STORE_CLASS
        conf["spark.jars"] = ",".join(dict.fromkeys([*jars, *extra_jars]))
        if "spark.driver.extraJavaOptions" not in conf:
            options = [] if verbose() else [f"-Dlog4j2.configurationFile=file:{quiet_log4j()}"]
            if short_lived:
                options += quick_start_options(conf["spark.jars"])
            if options:
                conf["spark.driver.extraJavaOptions"] = " ".join(options)
    builder = SparkSession.builder.appName(app_name or settings.app_name)
    if not launched_by_submit():  # spark-submit's --master is what runs: the config's must not override it
        builder = builder.master(settings.master)
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
        quiet_pyspark_loggers()
    if launched_by_submit():
        _check_submitted_jars(spark, wanted)
        if _wants_s3a(wanted):
            _list_from_under_submit(spark)
    _check_delta(spark)
    note_recording_jvm()
    return spark


def _wants_s3a(packages: tuple[str, ...]) -> bool:
    return any(":hadoop-aws:" in package for package in packages)


def _log_store_named(conf: dict[str, str]) -> bool:
    """Whether the settings name an S3 log store themselves (Delta's ``S3DynamoDBLogStore``, say): theirs wins."""
    return any(key.removeprefix("spark.").startswith("delta.logStore.") for key in conf)


def _list_from_under_submit(spark: SparkSession) -> None:
    """Under spark-submit, use :data:`LOG_STORE_CLASS` for ``s3a://`` if the driver was given its jar (the artifact's
    ``jars/`` holds it) and spark-submit's ``--conf`` names no log store; else Delta's own store stays.

    Set in the running context, before any Delta table is opened: Delta reads the store's class from the
    context's settings when it opens a table's log, and the session builder's settings would override ``--conf``.
    """
    submitted = dict(spark.sparkContext.getConf().getAll())
    if _log_store_named(submitted) or missing_classes(spark, [LOG_STORE_CLASS]):
        return
    set_context_setting(spark, S3A_LOG_STORE_KEY, LOG_STORE_CLASS)


def launched_by_submit() -> bool:
    """Whether spark-submit started this process's JVM: pyspark then connects to the gateway port it was
    handed (``PYSPARK_GATEWAY_PORT``, what ``pyspark.java_gateway.launch_gateway`` reads) instead of
    launching a JVM, so the classpath is spark-submit's and nothing this process asks for can be added."""
    return "PYSPARK_GATEWAY_PORT" in os.environ


def _check_submitted_jars(spark: SparkSession, packages: tuple[str, ...]) -> None:
    """Name, in one line, every jar of ``packages`` that spark-submit's classpath lacks, before a job fails
    on a missing class; nothing is fetched under spark-submit (a cluster in a private subnet has no internet)."""
    probes = dict(probe for package in packages for probe in classpath_probes(package))
    missing = missing_classes(spark, list(probes))
    if missing:
        jars = ", ".join(dict.fromkeys(probes[name] for name in missing))
        raise EnvironmentProblem(
            f"spark-submit started this driver without {jars} (missing {', '.join(missing)}): pass "
            "--jars with the jars/ folder of the artifact ('lambda-pipeline package' lists them in manifest.json); "
            "nothing is downloaded under spark-submit"
        )


def _check_delta(spark: SparkSession) -> None:
    from delta.tables import DeltaTable

    try:  # a missing jar shows as "'JavaPackage' object is not callable"
        DeltaTable.isDeltaTable(spark, "file:///nonexistent-lambda-pipeline-probe")
    except Exception:
        raise EnvironmentProblem(
            "the Delta Lake jars are not on Spark's classpath; under spark-submit pass the artifact's jars/ with --jars"
        ) from None
