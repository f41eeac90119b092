"""How much Spark and the JVM say: their errors always, their start-up chatter only with ``--verbose``.

A job's output is its own one-line reports; Spark's INFO and WARN lines, Ivy's resolution report and
PySpark's JSON error records drown them, so they are kept for ``--verbose`` (``LAMBDA_PIPELINE_VERBOSE=1``).
"""

from __future__ import annotations

import os
from pathlib import Path

from lambda_pipeline.core.cache import cache_dir

__all__ = ["enable_verbose", "quiet_log4j", "quiet_pyspark_loggers", "verbose"]


def enable_verbose() -> None:
    """``--verbose``: this process and the jobs it starts (the jar resolver, the JVM) print everything."""
    os.environ["LAMBDA_PIPELINE_VERBOSE"] = "1"


def verbose() -> bool:
    """``LAMBDA_PIPELINE_VERBOSE=1`` (or ``--verbose``): Ivy's report, Spark's own log lines, all of it."""
    return os.environ.get("LAMBDA_PIPELINE_VERBOSE", "").strip().lower() in {"1", "true", "yes", "on"}


def quiet_log4j() -> Path:
    """A log4j2 configuration that keeps Spark's errors and drops its start-up INFO and WARN lines."""
    path = cache_dir() / "log4j2-quiet.properties"
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


def quiet_pyspark_loggers() -> None:
    """PySpark logs every analysis error as a JSON record with the whole Java trace; the CLI says it in one line."""
    import logging

    from pyspark.logger import PySparkLogger

    for name in ("SQLQueryContextLogger", "DataFrameQueryContextLogger"):
        PySparkLogger.getLogger(name).setLevel(logging.CRITICAL)
