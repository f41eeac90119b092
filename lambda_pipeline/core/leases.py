"""Leases: one live instance of a job per work directory, and an instance that lost its lease stops.

A lease is a small JSON record, ``<warehouse>/_leases/<job>.json``, written through Hadoop's file system (the
same code on local disk, HDFS and S3): who holds it (host, process, a token per acquisition) and when it last
renewed. The holder renews it every ``ttl / 4`` from a daemon thread.

- **A second instance refuses to start** while the lease is live, with a message naming the holder. Live
  means: on this host, the holding process still runs; on another host, a renewal younger than ``ttl``.
- **Taking over** a lease whose holder on another host no longer renews (a host gone, a driver frozen) also
  commits a metadata change to the table the job writes (``lambda_pipeline.lease.<job>``): Delta fails any commit of
  the old holder that was in flight across it (``MetadataChangedException``).
- **Before each commit** the holder checks that the lease is still its own (one small file read); a zombie
  that lost it raises :class:`LeaseLost` and commits nothing more. What remains is the gap between that
  check and the start of the write's Delta transaction (milliseconds), and only for a holder that went
  ``ttl`` without renewing and then woke up: documented in docs/operations.md ("Guards").
"""

from __future__ import annotations

import json
import os
import posixpath
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from lambda_pipeline.core.deltalog import read_text
from lambda_pipeline.core.errors import LambdaError
from lambda_pipeline.core.locks import process_alive

if TYPE_CHECKING:
    from pyspark.sql import SparkSession
    from pyspark.sql.streaming import StreamingQuery

    from lambda_pipeline.core.tables import Locations

__all__ = ["DEFAULT_TTL", "Holder", "Lease", "LeaseHeld", "LeaseLost", "release_with"]

DEFAULT_TTL = 60.0
"""Seconds without a renewal after which a holder on another host is taken for dead."""


class LeaseHeld(LambdaError):
    """Another live instance holds the job's lease."""


class LeaseLost(LambdaError):
    """This instance's lease was taken over: it must not commit again."""


@dataclass(frozen=True)
class Holder:
    host: str
    pid: int
    token: str
    since: str
    renewed: float
    """Epoch seconds of the newest renewal."""

    @staticmethod
    def me() -> Holder:
        now = time.time()
        started = datetime.fromtimestamp(now, timezone.utc).isoformat(timespec="seconds")
        return Holder(socket.gethostname(), os.getpid(), uuid.uuid4().hex, started, now)

    def live(self, ttl: float) -> bool:
        if self.host == socket.gethostname():
            if self.pid == os.getpid():  # this process: live while the lease object that took it works
                working = _working.get(self.token)
                return working is not None and working()
            return process_alive(self.pid)
        return time.time() - self.renewed < ttl

    def describe(self) -> str:
        age = time.time() - self.renewed
        return f"process {self.pid} on {self.host} (since {self.since}, renewed {age:.0f}s ago)"


_READ_TRIES = 3
_READ_PAUSE = 0.05
"""Seconds of the first pause between reads of a record that looked absent or unreadable (then 2x, 3x...)."""

_working: dict[str, Callable[[], bool]] = {}
"""Leases taken by this process, by token: whether the job that holds each is still at work."""


class Lease:
    """The lease of one job (``ingest`` or ``batch``) over a work directory; see the module's docstring."""

    def __init__(
        self, spark: SparkSession, locations: Locations, job: str, fenced_table: str, *, ttl: float = DEFAULT_TTL
    ) -> None:
        self.spark, self.job, self.fenced_table, self.ttl = spark, job, fenced_table, ttl
        self.path = posixpath.join(locations.warehouse, "_leases", f"{job}.json")
        self.holder = Holder.me()
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None
        self._lost: str | None = None
        self._io = threading.Lock()
        """Held across a renewal's write and this instance's reads: a check never reads its own write mid-way."""

    # ---- the record -------------------------------------------------------------------------

    def current(self) -> Holder | None:
        """The holder on record, or None.

        A record read while its holder rewrites it can look absent (a file system whose rename does not
        replace) or unreadable (Hadoop's checksum file renamed after the data): such a read is tried again,
        three times over 0.15 s, before the record counts as absent.
        """
        with self._io:
            for attempt in range(_READ_TRIES):
                if attempt:
                    time.sleep(_READ_PAUSE * attempt)  # backing off between bounded tries
                try:
                    text = read_text(self.spark, self.path)
                except Exception:  # deleted between the existence check and the read, or a checksum mid-rename
                    continue
                if not text:
                    continue
                try:
                    return Holder(**json.loads(text))
                except (ValueError, TypeError):
                    continue  # a record cut short by a crash mid-write holds nothing
            return None

    def _write(self, holder: Holder) -> None:
        jvm = self.spark.sparkContext._jvm
        assert jvm is not None
        final = jvm.org.apache.hadoop.fs.Path(self.path)
        fs = final.getFileSystem(self.spark.sparkContext._jsc.hadoopConfiguration())
        partial = jvm.org.apache.hadoop.fs.Path(f"{self.path}.{holder.token}.part")
        with self._io:
            stream = fs.create(partial, True)
            try:
                stream.write(json.dumps(asdict(holder)).encode())
            finally:
                stream.close()
            # The local file system's rename replaces the record in one step; HDFS's refuses an existing
            # target, so the record is deleted first there, and a reader retries across that gap.
            if not fs.rename(partial, final):
                fs.delete(final, False)
                fs.rename(partial, final)

    # ---- acquire, check, release -------------------------------------------------------------

    def acquire(self) -> Lease:
        """Take the lease, or raise :class:`LeaseHeld` naming the live holder."""
        held = self.current()
        if held is not None and held.live(self.ttl):
            raise LeaseHeld(
                f"another {self.job} job runs over this work directory: {held.describe()}; stop it first "
                f"(its lease is {self.path}; one on another host is taken over {self.ttl:.0f}s after it stops "
                "renewing)"
            )
        _working[self.holder.token] = lambda: not self._stop.is_set()
        self._write(self.holder)
        if held is not None and held.host != self.holder.host:
            # A holder on this host is known dead (its process is gone); one elsewhere may only be silent.
            self._fence()
        time.sleep(0.05)  # let a starter racing for the same record finish its write: the last one wins
        winner = self.current()
        if winner is None or winner.token != self.holder.token:
            _working.pop(self.holder.token, None)
            raise LeaseHeld(
                f"another {self.job} job started at the same moment and holds the lease: "
                f"{winner.describe() if winner else 'unknown'}"
            )
        self._stop.clear()
        self._renewer = threading.Thread(target=self._renew, name=f"lease-{self.job}", daemon=True)
        self._renewer.start()
        return self

    def _fence(self) -> None:
        """A metadata commit on the job's table: a commit of the previous holder in flight across it fails."""
        from lambda_pipeline.core.tables import sql_path, table_version

        if table_version(self.spark, self.fenced_table) is None:
            return
        key = f"lambda_pipeline.lease.{self.job}"
        self.spark.sql(f"ALTER TABLE {sql_path(self.fenced_table)} SET TBLPROPERTIES ('{key}' = '{self.holder.token}')")

    def _renew(self) -> None:
        while not self._stop.wait(self.ttl / 4):
            try:
                held = self.current()
                if held is None or held.token != self.holder.token:
                    self._lost = held.describe() if held else "nobody (the record was removed)"
                    return
                self.holder = Holder(**{**asdict(self.holder), "renewed": time.time()})
                self._write(self.holder)
            except Exception:  # a failed renewal is retried at the next tick; expiry is the holder's loss
                continue

    def check(self) -> None:
        """Raise :class:`LeaseLost` unless this instance still holds the lease (before each commit)."""
        held = self.current()
        if self._lost is None and (held is None or held.token != self.holder.token):
            self._lost = held.describe() if held else "nobody (the record was removed)"
        if self._lost is not None:
            raise LeaseLost(
                f"this {self.job} job lost its lease to {self._lost}; it stops without committing again "
                "(two instances must never write the same tables)"
            )

    def while_active(self, query: StreamingQuery) -> None:
        """The lease is live while ``query`` runs (a finished one holds nothing, released or not yet)."""
        _working[self.holder.token] = lambda: not self._stop.is_set() and bool(query.isActive)

    def release(self) -> None:
        """Stop renewing and give the lease up (only if it is still this instance's)."""
        self._stop.set()
        _working.pop(self.holder.token, None)
        if self._renewer is not None:
            self._renewer.join(timeout=5)
        held = self.current()
        if held is not None and held.token == self.holder.token:
            jvm = self.spark.sparkContext._jvm
            assert jvm is not None
            path = jvm.org.apache.hadoop.fs.Path(self.path)
            path.getFileSystem(self.spark.sparkContext._jsc.hadoopConfiguration()).delete(path, False)


_listeners: dict[int, dict[str, Lease]] = {}
_listeners_lock = threading.Lock()


def release_with(spark: SparkSession, query_id: str, lease: Lease) -> None:
    """Release ``lease`` as soon as the streaming query ``query_id`` terminates (stopped, finished or failed)."""
    from pyspark.sql.streaming import StreamingQueryListener

    key = id(spark)
    with _listeners_lock:
        if key not in _listeners:
            held: dict[str, Lease] = {}

            class _Release(StreamingQueryListener):
                def onQueryStarted(self, event: object) -> None:
                    pass

                def onQueryProgress(self, event: object) -> None:
                    pass

                def onQueryIdle(self, event: object) -> None:
                    pass

                def onQueryTerminated(self, event: object) -> None:
                    lease = held.pop(str(getattr(event, "id", "")), None)
                    if lease is not None:
                        lease.release()

            spark.streams.addListener(_Release())
            _listeners[key] = held
        _listeners[key][query_id] = lease
