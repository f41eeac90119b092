"""Whether Delta's log store for a table's path arbitrates between drivers, and so who may write the table.

A Delta commit is the creation of ``_delta_log/<version>.json``. On local disk, HDFS, Azure and GCS the log
store creates it only if absent, atomically, so of two applications that write version N one fails and
retries. Delta's default store for ``s3://``, ``s3a://`` and ``s3n://`` (``S3SingleDriverLogStore``) only
serialises the commits of its own JVM: two drivers can both write version N and one commit is lost, and the
lease's fence (``core/leases.py``) relies on the same arbitration. There, every table has one writing
application (:func:`lambda_pipeline.core.compact_vacuum.owner_of`), unless the session names another S3 store
(``spark.delta.logStore.<scheme>.impl`` or ``spark.delta.logStore.class``, such as Delta's
``S3DynamoDBLogStore``): this project then trusts it to arbitrate.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from lambda_pipeline.core.project_jars import LOG_STORE_CLASS

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

__all__ = ["S3A_LOG_STORE_KEY", "SINGLE_DRIVER_STORE", "arbitrates", "arbitrates_with", "log_store_class"]

SINGLE_DRIVER_STORE = "io.delta.storage.S3SingleDriverLogStore"
"""Delta's default log store for the S3 schemes: it arbitrates between the threads of one driver only."""
S3A_LOG_STORE_KEY = "spark.delta.logStore.s3a.impl"
_SINGLE_DRIVER_NAMES = frozenset({SINGLE_DRIVER_STORE.rsplit(".", 1)[-1], LOG_STORE_CLASS.rsplit(".", 1)[-1]})
"""Delta's store, and this project's (``core/project_jars.py``), which only lists differently."""
_S3_SCHEMES = frozenset({"s3", "s3a", "s3n"})


def log_store_class(setting: Callable[[str], str | None], path: str) -> str | None:
    """The log store class Delta uses for ``path`` when it is on S3 (``setting`` reads the session's conf),
    else None: this project needs to know only the S3 one.

    Delta reads the per-scheme key first, then the class for every scheme, each also without ``spark.``.
    """
    scheme = urlsplit(path).scheme.lower()
    if scheme not in _S3_SCHEMES:
        return None
    for key in (f"spark.delta.logStore.{scheme}.impl", "spark.delta.logStore.class"):
        for name in (key, key.removeprefix("spark.")):
            value = setting(name)
            if value is not None and value.strip():
                return value.strip()
    return SINGLE_DRIVER_STORE


def arbitrates_with(setting: Callable[[str], str | None], path: str) -> bool:
    """Whether two applications committing to the table at ``path`` cannot both write one version."""
    store = log_store_class(setting, path)
    return store is None or store.rsplit(".", 1)[-1] not in _SINGLE_DRIVER_NAMES


def arbitrates(spark: SparkSession, path: str) -> bool:
    """:func:`arbitrates_with` for this session's settings (``spark-submit --conf`` included)."""
    return arbitrates_with(lambda key: spark.conf.get(key, None), path)
