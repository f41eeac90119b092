"""Where every table, checkpoint and folder of a deployment lives, derived from the work directory and the config.

The layers never import each other: they find each other's tables here.

A path without a scheme means two things on a cluster: Python on the driver reads it on the driver's disk,
Spark resolves it against ``fs.defaultFS`` (HDFS on EMR). So when ``spark.master`` is not ``local...``, every
root must say where it is (:func:`check_cluster_roots`): ``file:///shared/mount/...`` for a folder every node
mounts, ``s3a://...`` or ``hdfs://...``. A ``file:`` URI is a local folder for the Python side as well
(:func:`local_path`).
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from lambda_pipeline.core.config import Settings
from lambda_pipeline.core.errors import ConfigError
from lambda_pipeline.core.jvm import HadoopPath

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

__all__ = ["Locations", "local_path"]


def _is_uri(root: str) -> bool:
    return "://" in root or root.startswith("file:")


def local_path(location: str) -> Path | None:
    """The folder on this machine that ``location`` names (a plain path or a ``file:`` URI), else None."""
    if location.startswith("file:"):
        return Path(urlsplit(location).path)
    return None if _is_uri(location) else Path(location)


def _check_cluster_roots(settings: Settings, workdir: str, source: str, workdir_source: str) -> None:
    """Refuse a root without a scheme when Spark does not run locally: Python and Spark would disagree on it."""
    if settings.spark.master.startswith("local"):
        return
    keys = ("warehouse", "checkpoints", "ingest.landing_dir", "ingest.landing_archive")
    values = (settings.warehouse, settings.checkpoints, settings.ingest.landing_dir, settings.ingest.landing_archive)
    refused = [("workdir", workdir, workdir_source)] if not _is_uri(workdir) else []
    refused += [(key, value, source) for key, value in zip(keys, values, strict=True) if posixpath.isabs(value)]
    if refused:
        key, value, where = refused[0]
        raise ConfigError(
            where,
            key,
            f"{value!r} has no scheme and spark.master is {settings.spark.master}: Spark would look for it on "
            "fs.defaultFS, Python on this machine's disk; write file:///shared/mount/... (a folder every node "
            "mounts), s3a://... or hdfs://...",
        )


@dataclass(frozen=True)
class Locations:
    """Every path of a deployment, derived from the work directory and the config."""

    workdir: str
    settings: Settings

    @classmethod
    def create(
        cls,
        settings: Settings,
        workdir: str | Path | None = None,
        *,
        source: str = "the config",
        workdir_source: str | None = None,
    ) -> Locations:
        """``source`` and ``workdir_source`` (default: ``--workdir`` if ``workdir`` is given, else ``source``):
        where the settings and the work directory came from, named when a root is refused."""
        root = str(workdir) if workdir is not None else settings.workdir
        given = "--workdir" if workdir is not None else source
        _check_cluster_roots(settings, root, source, workdir_source or given)
        if root.startswith("file:"):
            root = f"file://{Path(urlsplit(root).path).expanduser().resolve()}"
        elif not _is_uri(root):
            root = str(Path(root).expanduser().resolve())
        return cls(root, settings)

    def check_master(self, master: str) -> None:
        """Refuse a work directory without a scheme once Spark runs on a cluster after all: under
        ``spark-submit --master spark://...`` or ``yarn`` the config's ``spark.master`` (checked in :meth:`create`)
        is not what runs."""
        if master.startswith("local") or _is_uri(self.workdir):
            return
        raise ConfigError(
            "the work directory",
            None,
            f"{self.workdir} has no scheme and this job runs on {master}: Spark would look for it on fs.defaultFS, "
            "Python on this machine's disk; write file:///shared/mount/... (a folder every node mounts), s3a://... "
            "or hdfs://...",
        )

    def _under(self, *parts: str) -> str:
        first = parts[0]
        if _is_uri(first) or posixpath.isabs(first):
            return posixpath.join(*parts)
        return posixpath.join(self.workdir, *parts)

    @property
    def landing(self) -> str:
        return self._under(self.settings.ingest.landing_dir)

    @property
    def landing_archive(self) -> str:
        """Where ingest moves landing files once committed (``ingest.landing_cleanup: archive``)."""
        return self._under(self.settings.ingest.landing_archive)

    @property
    def warehouse(self) -> str:
        return self._under(self.settings.warehouse)

    @property
    def master(self) -> str:
        return posixpath.join(self.warehouse, "master", self.settings.tables.master)

    @property
    def quarantine(self) -> str:
        return posixpath.join(self.warehouse, "master", self.settings.tables.quarantine)

    @property
    def coverage(self) -> str:
        return posixpath.join(self.warehouse, "batch", f"_{self.settings.tables.coverage}")

    def batch_view(self, view: str) -> str:
        return posixpath.join(self.warehouse, "batch", view)

    def speed_partials(self, view: str) -> str:
        return posixpath.join(self.warehouse, "speed", view)

    def checkpoint(self, job: str) -> str:
        return posixpath.join(self._under(self.settings.checkpoints), job)

    @property
    def roots(self) -> tuple[str, ...]:
        """Every root a job touches: the work directory, landing folder, warehouse and checkpoints."""
        return (self.workdir, self.landing, self.warehouse, self._under(self.settings.checkpoints))

    @property
    def needs_s3a(self) -> bool:
        """Whether any root is on ``s3a://``, so Spark needs hadoop-aws on its classpath."""
        return any(root.startswith("s3a://") for root in self.roots)

    def s3a_buckets(self) -> tuple[str, ...]:
        """The buckets the ``s3a://`` roots name, in order, once each."""
        buckets = (urlsplit(root).netloc for root in self.roots if root.startswith("s3a://"))
        return tuple(dict.fromkeys(b for b in buckets if b))

    def ensure_local_dirs(self) -> None:
        """Create the landing folder and the warehouse where they are on this machine (a path or ``file:``)."""
        for path in (self.landing, self.warehouse):
            folder = local_path(path)
            if folder is not None:
                folder.mkdir(parents=True, exist_ok=True)

    def ensure_dirs(self, spark: SparkSession) -> None:
        """Like :meth:`ensure_local_dirs`, and URI folders through Hadoop's file system.

        Spark's file stream source refuses a landing folder that does not exist; on S3 a "folder" exists
        once an object is under it, so an empty landing needs S3A's directory marker.
        """
        self.ensure_local_dirs()
        for path in (self.landing, self.warehouse):
            if local_path(path) is None:
                folder = HadoopPath(spark, path)
                if not folder.exists():
                    folder.mkdirs()
