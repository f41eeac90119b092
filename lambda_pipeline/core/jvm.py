"""The one door to the JVM: every reach into py4j from the pipeline's code goes through a function here.

PySpark's public API covers DataFrames and SQL. A few needs of the pipeline are met only by Java and Scala
objects behind py4j (``spark._jvm``, ``sparkContext._jsc``, ``DataFrame._jdf``, ``spark._jsparkSession``,
the gateway). They are all here, each behind a function named for the need, so that a Spark upgrade that
moves one of them breaks one place, and so that each can go once a public API covers it:

=============================  ==============================================  =====================================
need                           why the JVM                                     public API that would replace it
=============================  ==============================================  =====================================
:class:`HadoopPath`            small files and listings on local disk, HDFS    none in PySpark; fsspec with s3fs /
                               and S3 alike, with Spark's own credentials and  pyarrow.fs would need their own
                               settings (leases, checkpoints, Delta logs,      credentials and settings
                               landing files)
:func:`delta_snapshot`         a table's newest version, id, files and         delta-spark's ``DeltaTable.detail()``
                               properties without a Spark job (tens of ms);    (one Spark job per call), or
                               ``DeltaTable`` answers from a cached snapshot   delta-kernel's Python API
:func:`hadoop_setting`         a setting of the running context's Hadoop       none in PySpark: ``SparkConf`` holds
                               configuration, as its file systems read it      only what was given at start, without
                                                                               Hadoop's defaults
:func:`kafka_offsets`          earliest and latest offsets with the stream's   confluent-kafka's consumer, given the
                               own client and ``kafka.*`` options (SASL, SSL,  same security settings in librdkafka's
                               MSK IAM)                                        names (MSK IAM has no plugin there)
:func:`set_log_level`          silence Spark's stack trace of a failure the    ``SparkContext.setLogLevel`` (all
                               job reports itself                              loggers at once, not one)
:func:`gateway_pid`            which JVM process this Python drives            none
:func:`missing_classes`        which needed classes spark-submit's classpath   none
                               lacks (``--jars``), named before a job fails
:func:`first_copies`,          the project's own JVM classes: ingest's dedup   PySpark's ``transformWithState``
:func:`set_context_setting`    with state that expires (``transformWith-       (a Python call and a socket round
                               State`` with a TTL), Delta's log store class    trip per key: too slow at 10,000
                               set after start                                 events/s); none for the setting
:func:`parse_plan`,            the query guard's allow-list works on Spark's   none: Spark Connect's plans are
:func:`analyzed_plan`,         own parse and resolved plans, and binds the     protobuf, built client-side, with no
:func:`dataset_of_plan`,       pinned relations into them (serving)            analyzer access
:func:`frame_of_dataset`, ...
:func:`generated_code`,        whether a per-micro-batch value reaches the     none
:func:`codegen_totals`         generated code (so every micro-batch compiles
                               again), and how many compilations ran
=============================  ==============================================  =====================================

``tests/test_layout.py`` checks that no other shipped module reaches py4j.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from lambda_pipeline.core.errors import EnvironmentProblem
from lambda_pipeline.core.project_jars import DEDUP_CLASS

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

__all__ = [
    "DeltaSnapshot",
    "HadoopPath",
    "analyzed_plan",
    "codegen_totals",
    "dataset_of_plan",
    "delta_snapshot",
    "empty_scala_map",
    "expression_nodes",
    "first_copies",
    "first_line",
    "frame_of_dataset",
    "gateway_pid",
    "generated_code",
    "hadoop_setting",
    "java_exception_names",
    "kafka_offsets",
    "missing_classes",
    "parse_plan",
    "scala_list",
    "scala_tuple3",
    "set_context_setting",
    "set_log_level",
    "subquery_alias",
]


def _jvm(spark: SparkSession) -> Any:
    jvm = spark.sparkContext._jvm
    assert jvm is not None, "the Spark session has no JVM (stopped, or a Spark Connect session)"
    return jvm


# ---- errors --------------------------------------------------------------------------------------


def java_exception_names(error: BaseException) -> list[str]:
    """Simple names of the Java exceptions behind a py4j error, outermost first, then its causes."""
    java = getattr(error, "java_exception", None)
    names: list[str] = []
    while java is not None and len(names) < 8:
        names.append(str(java.getClass().getSimpleName()))
        cause = java.getCause()
        java = None if cause is None or cause.equals(java) else cause
    return names


def first_line(error: BaseException) -> str:
    """The first line of an error: the Java exception's own for a py4j error (not py4j's preamble)."""
    java = getattr(error, "java_exception", None)
    text = str(java.toString()) if java is not None else f"{type(error).__name__}: {error}"
    return text.strip().splitlines()[0] if text.strip() else type(error).__name__


# ---- Hadoop's file system --------------------------------------------------------------------------

Found = TypeVar("Found")


def _unless_missing(call: Callable[[], Found]) -> Found | None:
    """``call()``, or None when the file system says the path does not exist (``FileNotFoundException``)."""
    try:
        return call()
    except Exception as error:
        if "FileNotFoundException" in java_exception_names(error):
            return None
        raise


class HadoopPath:
    """A path reached through Hadoop's ``FileSystem`` for its scheme (local, ``hdfs://``, ``s3a://``)."""

    def __init__(self, spark: SparkSession, path: str, *, _parent: HadoopPath | None = None) -> None:
        self._spark = spark
        self._java = _jvm(spark)
        hadoop = self._java.org.apache.hadoop.fs.Path
        if _parent is None:
            self._path = hadoop(path)
            self._fs = self._path.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())
        else:
            self._path = hadoop(_parent._path, path)
            self._fs = _parent._fs
        self.uri = str(self._path.toString())

    def child(self, name: str) -> HadoopPath:
        """A path under this one, on the same file system object."""
        return HadoopPath(self._spark, name, _parent=self)

    def exists(self) -> bool:
        return bool(self._fs.exists(self._path))

    def mkdirs(self) -> None:
        self._fs.mkdirs(self._path)

    def names(self) -> list[str] | None:
        """The names of the entries of this folder, or None when it does not exist."""
        statuses = _unless_missing(lambda: self._fs.listStatus(self._path))
        return None if statuses is None else [str(status.getPath().getName()) for status in statuses]

    def read_text(self) -> str | None:
        """The whole file as UTF-8 text, or None when it does not exist (also when it vanished mid-read)."""
        stream = _unless_missing(lambda: self._fs.open(self._path))
        if stream is None:
            return None
        try:  # S3A opens lazily: the GET may find the object gone
            return _unless_missing(lambda: str(self._java.org.apache.commons.io.IOUtils.toString(stream, "UTF-8")))
        finally:
            stream.close()

    def write_new(self, data: bytes, *, if_absent_on_s3: bool = False) -> None:
        """Write a new file in one piece; an existing file is an error (``FileAlreadyExistsException``).

        ``if_absent_on_s3``: S3A's conditional PUT (``If-None-Match: *``, hadoop-aws 3.5.0's
        ``fs.option.create.conditional.overwrite``), so that S3 itself refuses an existing key, atomically.
        Elsewhere ``create(path, overwrite=false)``, atomic on HDFS.
        """
        if if_absent_on_s3:
            builder = self._fs.createFile(self._path).overwrite(False)
            stream = builder.must("fs.option.create.conditional.overwrite", "true").build()
        else:
            stream = self._fs.create(self._path, False)
        try:
            stream.write(bytearray(data))
        finally:
            stream.close()  # S3A uploads here, in one request

    def rename(self, target: HadoopPath) -> None:
        """Rename this file to ``target`` on the same file system: atomic on HDFS (one NameNode operation), so
        a reader sees the whole file under its new name or nothing. Hadoop answers a refused rename with
        ``false`` rather than an error; here it is an error."""
        if not bool(self._fs.rename(self._path, target._path)):
            raise OSError(f"the file system refused to rename {self.uri} to {target.uri} (does the target exist?)")

    def delete(self, *, recursive: bool = False) -> None:
        self._fs.delete(self._path, recursive)

    def content(self) -> tuple[int, int]:
        """(files, bytes) under this path, recursively."""
        summary = self._fs.getContentSummary(self._path)
        return int(summary.getFileCount()), int(summary.getLength())


def set_context_setting(spark: SparkSession, key: str, value: str) -> None:
    """Set a setting of the running ``SparkContext`` itself (what ``sc.getConf`` copies from): for settings a
    library reads from the context when it needs them (Delta's log store class), after the session started."""
    _jvm(spark)  # the session runs in this process's JVM
    spark.sparkContext._jsc.sc().conf().set(key, value)


def hadoop_setting(spark: SparkSession, key: str) -> str | None:
    """A setting of the running context's Hadoop configuration (``fs.s3a.endpoint``), Hadoop's default if
    unset there, or None: what a ``spark.hadoop.`` setting became when the context started."""
    value = spark.sparkContext._jsc.hadoopConfiguration().get(key)
    return None if value is None else str(value)


# ---- Delta's log ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeltaSnapshot:
    """The newest state of a Delta table's log, read fresh (not the snapshot this JVM cached)."""

    version: int
    table_id: str
    _snapshot: Any

    @property
    def live_files(self) -> int:
        return int(self._snapshot.numOfFiles())

    @property
    def live_bytes(self) -> int:
        return int(self._snapshot.sizeInBytes())

    @property
    def partition_columns(self) -> list[str]:
        text = str(self._snapshot.metadata().partitionColumns().mkString("\u0000"))
        return text.split("\u0000") if text else []

    def property(self, key: str) -> str | None:
        value = self._snapshot.metadata().configuration().get(key)
        return str(value.get()) if value.isDefined() else None


def delta_snapshot(spark: SparkSession, path: str) -> DeltaSnapshot | None:
    """The table's newest snapshot, freshly listed from its log (no Spark job), or None if nothing is committed."""
    jvm = _jvm(spark)
    none = jvm.scala.Option.empty()
    log = jvm.org.apache.spark.sql.delta.DeltaLog.forTable(spark._jsparkSession, path)
    snapshot = log.update(False, none, none)
    if int(snapshot.version()) < 0:
        return None
    return DeltaSnapshot(int(snapshot.version()), str(snapshot.metadata().id()), snapshot)


def delta_files_at(spark: SparkSession, path: str, version: int) -> tuple[str, dict[str, str], DataFrame]:
    """The table's id, its configuration and its live files at ``version`` (``path``, ``partitionValues``, ``stats``
    and ``deletionVector`` of each add action): the one Spark job a reader that follows the log needs to start."""
    jvm = _jvm(spark)
    none = jvm.scala.Option.empty()
    log = jvm.org.apache.spark.sql.delta.DeltaLog.forTable(spark._jsparkSession, path)
    snapshot = log.getSnapshotAt(version, none, none, False)
    metadata = snapshot.metadata()
    configuration = dict(jvm.scala.jdk.javaapi.CollectionConverters.asJava(metadata.configuration()))
    files = frame_of_dataset(spark, snapshot.allFiles().toDF())
    return str(metadata.id()), {str(k): str(v) for k, v in configuration.items()}, files


# ---- ingest's dedup ----------------------------------------------------------------------------------


def first_copies(
    frame: DataFrame, key: str, valid_prefix: str, order: Sequence[str], flag: str, horizon_ms: int
) -> DataFrame:
    """``frame`` with the boolean column ``flag``: true on the first copy of each key starting with ``valid_prefix``
    not seen within ``horizon_ms``, the copies of a key ordered by ``order`` (``FirstCopies.java``: state with a
    time to live, whose cost per micro-batch does not grow with the keys it holds)."""
    spark = frame.sparkSession
    if missing_classes(spark, [DEDUP_CLASS]):
        raise EnvironmentProblem(
            f"ingest's dedup class {DEDUP_CLASS} is not on the driver's classpath: a local session compiles it at "
            "start with javac (install a JDK 17: apt-get install openjdk-17-jdk-headless); under spark-submit "
            "pass the artifact's jars/ with --jars"
        )
    jvm = _jvm(spark)
    columns = spark.sparkContext._gateway.new_array(jvm.java.lang.String, len(order))  # type: ignore[union-attr]
    for index, name in enumerate(order):
        columns[index] = name
    marked = jvm.io.lambdapipeline.dedup.FirstCopies.mark(frame._jdf, key, valid_prefix, columns, flag, horizon_ms)
    return frame_of_dataset(spark, marked)


# ---- Kafka --------------------------------------------------------------------------------------------


def kafka_offsets(
    spark: SparkSession, properties: Mapping[str, str], partitions: Mapping[str, Sequence[int]]
) -> dict[tuple[str, int], tuple[int, int]]:
    """(earliest, latest) offset of each partition, through the JVM Kafka client the stream itself uses."""
    jvm = _jvm(spark)
    props = jvm.java.util.Properties()
    for key, value in properties.items():
        props.setProperty(key, value)
    deserializer = "org.apache.kafka.common.serialization.ByteArrayDeserializer"
    props.setProperty("key.deserializer", deserializer)
    props.setProperty("value.deserializer", deserializer)
    props.setProperty("enable.auto.commit", "false")
    consumer = jvm.org.apache.kafka.clients.consumer.KafkaConsumer(props)
    try:
        wanted = jvm.java.util.ArrayList()
        for topic, numbers in partitions.items():
            for number in numbers:
                wanted.add(jvm.org.apache.kafka.common.TopicPartition(topic, number))
        begin, end = consumer.beginningOffsets(wanted), consumer.endOffsets(wanted)
        found = {}
        for tp in (wanted.get(i) for i in range(wanted.size())):
            first, last = begin.get(tp), end.get(tp)
            if first is not None and last is not None:  # a partition that no longer exists has neither
                found[(str(tp.topic()), int(tp.partition()))] = (int(first), int(last))
        return found
    finally:
        consumer.close()


# ---- logging and the gateway ----------------------------------------------------------------------------


def set_log_level(spark: SparkSession, logger: str, level: str) -> None:
    """Set one log4j logger's level (``OFF``, ``ERROR``, ...) in the running JVM."""
    log4j = _jvm(spark).org.apache.logging.log4j
    log4j.core.config.Configurator.setLevel(logger, log4j.Level.valueOf(level))


def gateway_pid() -> int | None:
    """The pid of the JVM this Python process launched for Spark, or None (not launched here, or not yet)."""
    from pyspark import SparkContext

    process = getattr(SparkContext._gateway, "proc", None)
    return None if process is None else int(process.pid)


def missing_classes(spark: SparkSession, names: Sequence[str]) -> list[str]:
    """The classes of ``names`` the driver cannot load, looked up as py4j looks them up (the calling thread's
    context class loader, which holds spark-submit's ``--jars``), without initialising any."""
    jvm = _jvm(spark)
    loader = jvm.java.lang.Thread.currentThread().getContextClassLoader()
    missing = []
    for name in names:
        try:
            jvm.java.lang.Class.forName(name, False, loader)
        except Exception as error:
            if "ClassNotFoundException" not in java_exception_names(error):
                raise
            missing.append(name)
    return missing


# ---- Spark's plans: the query guard and the pinned relations --------------------------------------------


def parse_plan(spark: SparkSession, sql: str) -> Any:
    """Spark's own parse of ``sql`` (an unresolved logical plan); Spark's ``ParseException`` if it does not parse."""
    return spark._jsparkSession.sessionState().sqlParser().parsePlan(sql)


def analyzed_plan(frame: DataFrame) -> Any:
    """The analysed logical plan of a DataFrame."""
    return frame._jdf.queryExecution().analyzed()


def expression_nodes(frame: DataFrame) -> list[tuple[str, str, bool]]:
    """Every expression node of a DataFrame's top operator, analysed: (class name, SQL name, deterministic)."""
    plan = analyzed_plan(frame)

    def items(seq: Any) -> list[Any]:
        return [seq.apply(i) for i in range(seq.size())]

    found, pending = [], items(plan.expressions())
    while pending:
        node = pending.pop()
        found.append((str(node.getClass().getSimpleName()), str(node.prettyName()), bool(node.deterministic())))
        pending.extend(items(node.children()))
    return found


def dataset_of_plan(spark: SparkSession, plan: Any) -> Any:
    """A JVM Dataset analysed from a logical plan; Spark's error as PySpark raises it, not a py4j one."""
    from py4j.protocol import Py4JJavaError
    from pyspark.errors.exceptions.captured import convert_exception

    try:
        return _jvm(spark).org.apache.spark.sql.classic.Dataset.ofRows(spark._jsparkSession, plan)
    except Py4JJavaError as exc:
        raise convert_exception(exc.java_exception) from None


def frame_of_dataset(spark: SparkSession, dataset: Any) -> DataFrame:
    """A PySpark DataFrame over a JVM Dataset (classic Spark: the session runs in this process's JVM)."""
    from pyspark.sql.classic.dataframe import DataFrame as ClassicFrame

    return ClassicFrame(dataset, spark)


def scala_list(spark: SparkSession, items: Sequence[Any]) -> Any:
    """A Scala ``List`` of JVM objects (what Catalyst's constructors take)."""
    jvm = _jvm(spark)
    values = jvm.java.util.ArrayList()
    for item in items:
        values.add(item)
    return jvm.scala.jdk.javaapi.CollectionConverters.asScala(values).toList()


def empty_scala_map(spark: SparkSession) -> Any:
    """An empty immutable Scala ``Map`` (a partial function for Catalyst's transforms)."""
    return _jvm(spark).scala.collection.immutable.__getattr__("Map$").__getattr__("MODULE$").empty()


def subquery_alias(spark: SparkSession, parts: Sequence[str], plan: Any) -> Any:
    """Catalyst's ``SubqueryAlias(parts, plan)``: ``plan`` under the name a query gave it."""
    logical = _jvm(spark).org.apache.spark.sql.catalyst.plans.logical
    return logical.__getattr__("SubqueryAlias$").__getattr__("MODULE$").apply(scala_list(spark, list(parts)), plan)


def scala_tuple3(spark: SparkSession, first: Any, second: Any, third: Any) -> Any:
    return _jvm(spark).scala.Tuple3(first, second, third)


# ---- generated code -------------------------------------------------------------------------------------


def generated_code(frame: DataFrame) -> list[str]:
    """The Java source of each whole-stage-codegen subtree of ``frame``'s physical plan (no Spark job runs)."""
    plan = frame._jdf.queryExecution().executedPlan()
    debug = _jvm(frame.sparkSession).org.apache.spark.sql.execution.debug.__getattr__("package$").__getattr__("MODULE$")
    subtrees = debug.codegenStringSeq(plan)
    return [str(subtrees.apply(i)._2()) for i in range(subtrees.size())]


def codegen_totals(spark: SparkSession) -> dict[str, float]:
    """Spark's generated-code compilations so far in this JVM, and their milliseconds: a class found in
    Spark's code cache is not compiled again, so a steady micro-batch adds none."""
    jvm = _jvm(spark)
    count = jvm.org.apache.spark.metrics.source.CodegenMetrics.METRIC_COMPILATION_TIME().getCount()
    nanos = jvm.org.apache.spark.sql.catalyst.expressions.codegen.CodeGenerator.compileTime()
    return {"codegen_compilations": float(count), "codegen_compile_ms": float(nanos) / 1e6}
