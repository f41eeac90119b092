"""Where every table, checkpoint and folder of a deployment lives, derived from the work directory and the config.

The layers never import each other: they find each other's tables here.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from lambda_pipeline.core.config import Settings
from lambda_pipeline.core.jvm import HadoopPath

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

__all__ = ["Locations"]


def _is_uri(root: str) -> bool:
    return "://" in root


@dataclass(frozen=True)
class Locations:
    """Every path of a deployment, derived from the work directory and the config."""

    workdir: str
    settings: Settings

    @classmethod
    def create(cls, settings: Settings, workdir: str | Path | None = None) -> Locations:
        root = str(workdir) if workdir is not None else settings.workdir
        if not _is_uri(root):
            root = str(Path(root).expanduser().resolve())
        return cls(root, settings)

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
        for path in (self.landing, self.warehouse):
            if not _is_uri(path):
                Path(path).mkdir(parents=True, exist_ok=True)

    def ensure_dirs(self, spark: SparkSession) -> None:
        """Like :meth:`ensure_local_dirs`, and URI folders through Hadoop's file system.

        Spark's file stream source refuses a landing folder that does not exist; on S3 a "folder" exists
        once an object is under it, so an empty landing needs S3A's directory marker.
        """
        self.ensure_local_dirs()
        for path in (self.landing, self.warehouse):
            if _is_uri(path):
                folder = HadoopPath(spark, path)
                if not folder.exists():
                    folder.mkdirs()
