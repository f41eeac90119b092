"""Where a lease's records live: numbered files that are created once, atomically, and never rewritten.

A lease is a sequence of small JSON records, ``<dir>/000000000001.json``, ``000000000002.json``... Every
change of the lease (take, renew, hand over, release) creates the next number, and only if that number does
not exist yet. That one operation, *create if absent*, is atomic on every file system the pipeline supports,
so two writers can never both create record N: the one that gets N owns the lease from there on, the other
one learns it lost. No record is ever renamed or overwritten, so no reader sees one half-written (except on
HDFS, see below) and nothing is left behind: no ``.part`` objects, only the newest records.

How each file system creates a file only if it is absent:

- **Local disk** (paths without a scheme, ``file:``): the record is written to a hidden file in the same
  folder, then hard-linked under its number. ``link(2)`` fails with ``EEXIST`` if the name exists, in one
  step, and the linked file is complete when it appears.
- **S3** (``s3a://``): a conditional PUT, ``If-None-Match: *`` (S3 refuses it with 412 when the key exists),
  through hadoop-aws's ``createFile(path).must("fs.option.create.conditional.overwrite", true)``
  (HADOOP-19256, in the hadoop-aws 3.5.0 this project fetches). A client without it refuses the option, and
  the lease stops with that reason. ``s3://`` and ``s3n://`` are reached through the same call: a file system
  that does not know the option (EMRFS) is refused with what to use instead.
- **HDFS** (``hdfs://``, ``viewfs://``): ``create(path, overwrite=false)``. The NameNode creates a file
  and checks that the name is free in one namespace operation, and refuses an existing name with
  ``FileAlreadyExistsException`` (Hadoop's file system specification, ``create()``: "The check for existing
  file and the creation of the new file MUST be atomic" on HDFS). A record being written is visible with
  part of its bytes there, so readers retry a record they cannot parse.

Any other scheme is refused: its create-if-absent is not known to be atomic.
"""

from __future__ import annotations

import os
import re
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Protocol
from urllib.parse import urlparse

from lambda_pipeline.core.errors import EnvironmentProblem
from lambda_pipeline.core.jvm import HadoopPath, first_line, java_exception_names

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

__all__ = ["RecordStore", "record_name", "record_store"]

_RECORD = re.compile(r"^(\d{12})\.json$")
_TAKEN = ("FileAlreadyExistsException", "RemoteFileChangedException")
"""Java exceptions that mean "the name exists": HDFS's and S3A's pre-check, and S3's 412 on the PUT itself."""
_TAKEN_STATUS = re.compile(r"Status Code: (412|409)\b|PreconditionFailed|ConditionalRequestConflict")
_HDFS_SCHEMES = ("hdfs", "viewfs")
_S3_SCHEMES = ("s3a", "s3", "s3n")
_STALE_TEMP_SECONDS = 600.0


def record_name(seq: int) -> str:
    return f"{seq:012d}.json"


class RecordStore(Protocol):
    """The numbered records of one lease."""

    where: str

    def numbers(self) -> list[int]:
        """The numbers of the records present, ascending."""
        ...

    def read(self, seq: int) -> str | None:
        """Record ``seq``'s text, or None if it does not exist (any more)."""
        ...

    def create(self, seq: int, text: str) -> bool:
        """Create record ``seq`` holding ``text`` if no record ``seq`` exists: True if this call created it."""
        ...

    def delete(self, seq: int) -> None:
        """Remove record ``seq`` (absent is fine)."""
        ...


def record_store(spark: SparkSession, directory: str) -> RecordStore:
    """The store for ``directory``, chosen by its scheme; an unsupported scheme is refused, saying why."""
    scheme = urlparse(directory).scheme.lower()
    if scheme in ("", "file"):
        return LocalRecords(Path(urlparse(directory).path if scheme else directory))
    if scheme in _S3_SCHEMES or scheme in _HDFS_SCHEMES:
        return HadoopRecords(spark, directory, conditional=scheme in _S3_SCHEMES)
    raise EnvironmentProblem(
        f"leases under {directory}: the '{scheme}://' file system is not known to create a file only if it is "
        "absent, in one step, which a lease needs to keep two jobs from writing the same tables; put the work "
        "directory (or the warehouse) on s3a://, hdfs:// or a local disk"
    )


class LocalRecords:
    """Records on a local disk: a hidden file hard-linked under its number (``link`` refuses an existing name)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.where = str(directory)

    def numbers(self) -> list[int]:
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return []
        return sorted(int(m.group(1)) for m in map(_RECORD.match, names) if m)

    def read(self, seq: int) -> str | None:
        try:
            return (self.directory / record_name(seq)).read_text(encoding="utf-8")
        except FileNotFoundError:
            return None

    def create(self, seq: int, text: str) -> bool:
        self.directory.mkdir(parents=True, exist_ok=True)
        self._forget_stale_temporaries()
        temporary = self.directory / f".{record_name(seq)}.{uuid.uuid4().hex}.tmp"
        with temporary.open("x", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(temporary, self.directory / record_name(seq))
            return True
        except FileExistsError:
            return False
        finally:
            temporary.unlink(missing_ok=True)

    def delete(self, seq: int) -> None:
        (self.directory / record_name(seq)).unlink(missing_ok=True)

    def _forget_stale_temporaries(self) -> None:
        """A writer killed between its write and its link leaves its hidden file: removed once old."""
        now = time.time()
        for entry in self.directory.glob(".*.tmp"):
            try:
                if now - entry.stat().st_mtime > _STALE_TEMP_SECONDS:
                    entry.unlink(missing_ok=True)
            except FileNotFoundError:
                continue


class HadoopRecords:
    """Records through Hadoop's file system: S3's conditional PUT, or HDFS's create without overwrite."""

    def __init__(self, spark: SparkSession, directory: str, *, conditional: bool) -> None:
        self._directory = HadoopPath(spark, directory)
        self._conditional = conditional
        self.where = directory

    def numbers(self) -> list[int]:
        return sorted(int(m.group(1)) for m in map(_RECORD.match, self._directory.names() or ()) if m)

    def read(self, seq: int) -> str | None:
        return self._directory.child(record_name(seq)).read_text()

    def create(self, seq: int, text: str) -> bool:
        try:
            self._directory.child(record_name(seq)).write_new(text.encode("utf-8"), if_absent_on_s3=self._conditional)
            return True
        except Exception as error:
            if _taken(error):
                return False
            if self._conditional and "IllegalArgumentException" in java_exception_names(error):
                raise EnvironmentProblem(
                    f"leases under {self.where}: this S3 client cannot create a file only if it is absent "
                    f"({first_line(error)}); use s3a:// with hadoop-aws 3.5.0 or newer (its conditional writes, "
                    "HADOOP-19256), which the project fetches for s3a:// locations"
                ) from None
            raise

    def delete(self, seq: int) -> None:
        self._directory.child(record_name(seq)).delete()


def _taken(error: BaseException) -> bool:
    """Whether a failed create means that the record exists (someone else created it first).

    S3 answers 412 to a conditional PUT on an existing key, and 409 to one that raced another write of the
    key still in flight; hadoop-aws raises the first as ``RemoteFileChangedException``.
    """
    names = java_exception_names(error)
    if any(name in _TAKEN for name in names):
        return True
    return bool(names) and bool(_TAKEN_STATUS.search(first_line(error)))
