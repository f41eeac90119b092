"""Reading small files of a table's log or a checkpoint directly: no Spark job, any Hadoop file system.

The newest commits of a Delta table say what a reader needs to pin it (the coverage a batch published,
the marks of a writer's micro-batches, the partitions a commit added, the rows it appended) at the cost of
a file read each, where ``spark.read`` or ``history()`` would run Spark jobs over the whole log.
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from lambda_pipeline.core.jvm import HadoopPath

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

__all__ = ["commit", "commits", "json_lines", "read_text"]


def read_text(spark: SparkSession, path: str) -> str | None:
    """A small file's text through Hadoop's file system (local, HDFS or S3), or None if absent."""
    return HadoopPath(spark, path).read_text()


def json_lines(text: str) -> list[Any]:
    """JSON values of a log file, one per line; the version line and Spark's leading NUL byte skipped."""
    out = []
    for line in text.replace("\x00", "").splitlines():
        line = line.strip()
        if line and line[0] in "{[":
            out.append(json.loads(line))
        elif line == "-":  # a source without an offset yet
            out.append(None)
    return out


def commits(spark: SparkSession, table: str, newest: int, scan: int) -> Iterator[tuple[int, list[dict[str, Any]]]]:
    """(version, actions) of the Delta table's commits from ``newest`` back, at most ``scan`` of them.

    Stops early where log retention has removed a commit file: the older ones are gone too.
    """
    for version in range(newest, max(-1, newest - scan), -1):
        actions = commit(spark, table, version)
        if actions is None:
            return
        yield version, actions


def commit(spark: SparkSession, table: str, version: int) -> list[dict[str, Any]] | None:
    """The actions of one commit of the Delta table, or None where log retention removed (or never wrote) it."""
    text = read_text(spark, posixpath.join(table, "_delta_log", f"{version:020d}.json"))
    return None if text is None else [action or {} for action in json_lines(text)]
