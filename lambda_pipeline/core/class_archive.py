"""A quick start for a driver that answers one request and exits: C1 only, one GC thread, and a class-data
archive of the classes it loads.

A cold ``query`` spends seconds loading and verifying Spark's and Delta's classes and compiling for a long
run it will not have; these options about halve its start and first job. Long-running jobs keep the
JVM's defaults, which are faster after warm-up.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass
from pathlib import Path

from lambda_pipeline.core.cache import cache_dir
from lambda_pipeline.core.java import check_java
from lambda_pipeline.core.locks import process_alive

__all__ = ["QUICK_START_OPTIONS", "ClassArchive", "note_recording_jvm", "quick_start_options"]

QUICK_START_OPTIONS = ["-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC"]
"""For a driver that exits after one request: compile with C1 only, collect with one thread."""

_ARCHIVE_MAGIC = (0xF00BABA8).to_bytes(4, "little")
"""The first bytes of a finished dynamic archive: the JVM writes its header last."""


@dataclass(frozen=True)
class ClassArchive:
    """A dynamic class-data-sharing archive of the classes a short-lived driver loads (JDK 13+).

    Classes mapped from an archive load in a fraction of the time. The first short-lived run records the
    archive as its JVM exits, after the answer is printed and in the background (about 20 s of one core,
    once); the next runs map it. The archive is keyed by the Java version and the exact jars, so a new
    release or another set of packages records its own; a JVM that cannot use an archive ignores it
    (``-Xshare:auto``).
    """

    path: Path

    @classmethod
    def for_jars(cls, jars: str) -> ClassArchive:
        import pyspark

        key = "\n".join([check_java(), pyspark.__version__, os.environ.get("SPARK_HOME", ""), jars])
        return cls(cache_dir() / "cds" / f"driver-{hashlib.sha256(key.encode()).hexdigest()[:16]}.jsa")

    def options(self) -> list[str]:
        """The JVM options that map the archive, or record it (none while another run records it)."""
        quiet = "-Xlog:cds=off,cds+dynamic=off"  # the JVM prints the classes it cannot archive on stdout
        if self.path.is_file() or self._adopt():
            return ["-Xshare:auto", f"-XX:SharedArchiveFile={self.path}", quiet]
        if self._recordings():
            return []
        self.path.parent.mkdir(parents=True, exist_ok=True)
        dump = self.path.with_name(f"{self.path.name}.{os.getpid()}.part")
        _recording.append(dump)
        return [f"-XX:ArchiveClassesAtExit={dump}", quiet]

    def _recordings(self) -> list[tuple[Path, int | None]]:
        """(dump, recording JVM's pid, None when unknown or gone) of every recording left or under way."""
        found = []
        for dump in self.path.parent.glob(f"{self.path.name}.*.part"):
            try:
                pid: int | None = int(dump.with_suffix(".jvm").read_text())
            except (OSError, ValueError):
                pid = None
            found.append((dump, pid if pid is not None and process_alive(pid) else None))
        return [(dump, pid) for dump, pid in found if pid is not None or dump.stat().st_mtime > _stale()]

    def _adopt(self) -> bool:
        """Move a recording whose JVM has exited into place, if it is whole; drop the others that ended."""
        for dump in self.path.parent.glob(f"{self.path.name}.*.part"):
            marker = dump.with_suffix(".jvm")
            try:
                pid = int(marker.read_text())
            except (OSError, ValueError):
                pid = None
            if pid is not None and process_alive(pid):
                continue
            if pid is None and dump.stat().st_mtime > _stale():
                continue  # its JVM has not reported yet
            with dump.open("rb") as head:
                whole = head.read(4) == _ARCHIVE_MAGIC
            if whole and not self.path.exists():
                dump.replace(self.path)
            dump.unlink(missing_ok=True)
            marker.unlink(missing_ok=True)
        return self.path.is_file()


_recording: list[Path] = []


def _stale() -> float:
    """Recordings older than this (epoch seconds) whose JVM never reported are abandoned."""
    return time.time() - 600


def quick_start_options(jars: str) -> list[str]:
    """The JVM options of a short-lived driver whose classpath holds ``jars`` (comma-separated)."""
    return QUICK_START_OPTIONS + ClassArchive.for_jars(jars).options()


def note_recording_jvm() -> None:
    """Tell later runs which JVM writes this run's archive, so that they adopt it only once it has exited."""
    from lambda_pipeline.core.jvm import gateway_pid

    pid = gateway_pid()
    for dump in _recording:
        if pid is not None:
            dump.with_suffix(".jvm").write_text(str(pid))
    _recording.clear()
