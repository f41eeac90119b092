"""Leases: one live instance of a job per work directory, and an instance that may have lost its lease stops.

A lease is a sequence of numbered records under ``<warehouse>/_leases/<job>/`` (:mod:`.lease_records`), each
created only if its number is free, atomically, on local disk, S3 and HDFS alike. The newest record says who
holds the lease: host, process and a token per acquisition. Taking the lease, renewing it, handing it over
and giving it up each create the next number, so of two instances that try at the same moment exactly one
succeeds, and a holder learns it lost when the number it wanted exists already.

- **A second instance refuses to start** while the lease is live, naming the holder. On the holder's own
  host (``lease.host_id``, default: the hostname) live means that its process runs, so a killed job's
  lease is taken over at once on restart. A holder on another host is watched: if its newest record
  changes within ``ttl`` on the starter's own clock, it renews and the start is refused; if it stays the
  same for ``ttl``, the holder is taken for dead. No clock is compared with another machine's.
- **The holder renews every ttl/4** from a daemon thread. A renewal that fails is logged on stderr and
  retried; once the newest record this instance wrote is ``ttl/2`` old on its own clock, it takes its lease
  for lost: another host may take it over from ``ttl`` on. From then on :meth:`Lease.check` raises
  :class:`LeaseLost` and the job's run loop stops with that one line (a non-zero exit), so that a restart
  policy starts it again.
- **Before each commit** the holder checks that the newest record is still its own, and that it is younger
  than ``ttl/2``. A commit that starts within that check's margin ends before a takeover can happen as long
  as it takes less than ``ttl/2`` and the two machines' clocks run at about the same rate.
- **Taking over** from a holder on another host also commits a metadata change to the table the job writes
  (``lambda_pipeline.lease.<job>``). Where Delta's log store makes commits mutually exclusive between
  drivers (local disk, HDFS, S3 with ``S3DynamoDBLogStore``), a commit of the old holder that was in flight
  across it fails (``MetadataChangedException``). On S3 with Delta's default ``S3SingleDriverLogStore`` it
  guarantees nothing: two drivers can write the same log version. There, only the check and the ``ttl/2``
  margin above keep a zombie out: docs/operations.md ("Guards") says what that leaves open.
"""

from __future__ import annotations

import json
import os
import posixpath
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from lambda_pipeline.core.durations import duration_seconds
from lambda_pipeline.core.errors import LambdaError
from lambda_pipeline.core.jvm import first_line
from lambda_pipeline.core.lease_records import RecordStore, record_store
from lambda_pipeline.core.locks import process_alive, process_identity

if TYPE_CHECKING:
    from pyspark.sql import SparkSession
    from pyspark.sql.streaming import StreamingQuery, StreamingQueryListener

    from lambda_pipeline.core.locations import Locations

__all__ = [
    "RENEW_FRACTION",
    "SAFE_FRACTION",
    "Holder",
    "Lease",
    "LeaseHeld",
    "LeaseLost",
    "lease_of",
    "release_with",
]

RENEW_FRACTION = 0.25
"""A holder renews every ``ttl * RENEW_FRACTION``."""
SAFE_FRACTION = 0.5
"""A holder commits only while its newest record is younger than ``ttl * SAFE_FRACTION`` on its own clock."""

_READ_TRIES = 4
_READ_PAUSE = 0.05
"""Seconds of the first pause between reads of a record that vanished or could not be parsed (then 2x, 3x)."""


class LeaseHeld(LambdaError):
    """Another live instance holds the job's lease."""


class LeaseLost(LambdaError):
    """This instance's lease was, or may have been, taken over: it must not commit again."""


@dataclass(frozen=True)
class Holder:
    """One record of a lease: who holds it. Its times are the holder's clock, for people to read only."""

    host: str
    pid: int
    token: str
    since: str
    renewed: str
    released: bool = False
    process: str | None = None
    """The holder process's boot and start time (:func:`process_identity`): a reused pid is not the holder."""

    def describe(self) -> str:
        return f"process {self.pid} on {self.host} (since {self.since})"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


_working: dict[str, Callable[[], bool]] = {}
"""Leases taken by this process, by token: whether the job that holds each is still at work."""


class Lease:
    """The lease of one job (``ingest`` or ``batch``) over a work directory; see the module's docstring.

    ``ttl`` and ``host`` default to the settings' ``lease.ttl`` and ``lease.host_id`` (else the hostname).
    """

    def __init__(
        self,
        spark: SparkSession,
        locations: Locations,
        job: str,
        fenced_table: str,
        *,
        ttl: float | None = None,
        host: str | None = None,
    ) -> None:
        configured = locations.settings.lease
        self.spark, self.job, self.fenced_table = spark, job, fenced_table
        self.ttl = ttl if ttl is not None else duration_seconds(configured.ttl)
        self.host = host or configured.host_id or socket.gethostname()
        self.directory = posixpath.join(locations.warehouse, "_leases", job)
        self.records: RecordStore = record_store(spark, self.directory)
        started = _now()
        self.holder = Holder(
            self.host, os.getpid(), uuid.uuid4().hex, started, started, process=process_identity(os.getpid())
        )
        self._seq: int | None = None
        """The number of the newest record this instance created."""
        self._confirmed = 0.0
        """This process's monotonic clock just before it asked for that record: the lease is safe until
        ``ttl * SAFE_FRACTION`` after it, since a taker must see the record unchanged for ``ttl``."""
        self._stale: list[int] = []
        """Numbers of this instance's older records, deleted once a newer one exists."""
        self._lost: str | None = None
        self._released = False
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None
        self._state = threading.Lock()

    # ---- reading the record -------------------------------------------------------------------

    def newest(self) -> tuple[int, Holder | None] | None:
        """The newest record's number and holder (None if it stays unreadable), or None if there is none.

        A record can vanish between the listing and the read (its holder cleaned it up after writing a newer
        one) or be caught half-written (HDFS): the listing and the read are tried again, a few times.
        """
        for attempt in range(_READ_TRIES):
            if attempt:
                time.sleep(_READ_PAUSE * attempt)  # backing off between bounded tries
            numbers = self.records.numbers()
            if not numbers:
                return None
            text = self.records.read(numbers[-1])
            if text is None:
                continue
            try:
                return numbers[-1], Holder(**json.loads(text))
            except (ValueError, TypeError):
                continue
        numbers = self.records.numbers()
        return (numbers[-1], None) if numbers else None

    def current(self) -> Holder | None:
        """The holder on record, or None when nobody holds the lease (no record, or the newest released it)."""
        newest = self.newest()
        if newest is None or newest[1] is None or newest[1].released:
            return None
        return newest[1]

    # ---- acquire -------------------------------------------------------------------------------

    def acquire(self) -> Lease:
        """Take the lease, or raise :class:`LeaseHeld` naming the live holder.

        A holder on another host is watched for up to ``ttl`` first (the start says so on stderr).
        """
        newest = self.newest()
        taking_over = False
        if newest is not None and not _released(newest):
            seq, holder = newest
            if holder is not None and holder.host == self.host:
                if _alive_here(holder):
                    raise LeaseHeld(
                        f"another {self.job} job runs over this work directory: {holder.describe()}; stop it first "
                        f"(its lease is {self.records.where})"
                    )
            else:
                changed, newest = self._watch(seq, holder)
                if changed and newest is not None and not _released(newest):
                    who = newest[1].describe() if newest[1] is not None else "an instance whose record is unreadable"
                    raise LeaseHeld(
                        f"another {self.job} job runs over this work directory: {who}, which renewed its lease "
                        f"while this start watched it; stop it first (its lease is {self.records.where})"
                    )
                taking_over = not changed  # silent for ttl: taken for dead
        number = 1 if newest is None else newest[0] + 1
        _working[self.holder.token] = lambda: not self._stop.is_set()
        if not self._create(number, self.holder):
            _working.pop(self.holder.token, None)
            winner = self.current()
            raise LeaseHeld(
                f"another {self.job} job started at the same moment and holds the lease: "
                f"{winner.describe() if winner else 'unknown'}"
            )
        self._stale = [n for n in self.records.numbers() if n < number - 1]
        self._forget_stale()
        if taking_over:
            self._fence()
        self._renewer = threading.Thread(target=self._renew, name=f"lease-{self.job}", daemon=True)
        self._renewer.start()
        return self

    def _watch(self, seq: int, holder: Holder | None) -> tuple[bool, tuple[int, Holder | None] | None]:
        """Watch the newest record for ``ttl`` on this machine's clock: (whether it changed, the newest now)."""
        who = holder.describe() if holder is not None else "an instance whose record is unreadable"
        _say(
            f"lease: the {self.job} lease is held by {who}, not on this host ({self.host}); watching it for "
            f"{self.ttl:.0f}s: if it does not renew, this job takes it over"
        )
        started = time.monotonic()
        pause = min(max(self.ttl / 20, 0.05), 2.0)
        while time.monotonic() - started < self.ttl:
            time.sleep(pause)  # polling the record, bounded by the lease time
            newest = self.newest()
            if newest is None or newest[0] != seq:
                return True, newest
        return False, self.newest()

    def _create(self, number: int, holder: Holder) -> bool:
        """Create record ``number`` for ``holder``; True also when an earlier try of this very write got there."""
        asked = time.monotonic()
        created = self.records.create(number, json.dumps(asdict(holder)))
        if not created:  # a retried request may find its own first attempt there
            text = self.records.read(number)
            created = text is not None and _token(text) == holder.token
        if created:
            with self._state:
                if self._seq is not None and self._seq > 1:
                    self._stale.append(self._seq - 1)  # the one before the newest stays, for readers
                self._seq, self._confirmed = number, asked
        return created

    def _forget_stale(self) -> None:
        """Delete this instance's older records; one that fails stays listed for the next renewal."""
        kept = []
        for number in sorted(set(self._stale)):
            try:
                self.records.delete(number)
            except Exception:  # tried again after the next renewal
                kept.append(number)
        self._stale = kept

    def _fence(self) -> None:
        """A metadata commit on the job's table: a commit of the previous holder in flight across it fails."""
        from lambda_pipeline.core.tables import sql_path, table_version

        if table_version(self.spark, self.fenced_table) is None:
            return
        key = f"lambda_pipeline.lease.{self.job}"
        self.spark.sql(f"ALTER TABLE {sql_path(self.fenced_table)} SET TBLPROPERTIES ('{key}' = '{self.holder.token}')")

    # ---- renew, check ---------------------------------------------------------------------------

    def _renew(self) -> None:
        period = self.ttl * RENEW_FRACTION
        wait = period
        while not self._stop.wait(wait):
            if self.lost is not None:
                return
            assert self._seq is not None
            try:
                renewed = replace(self.holder, renewed=_now())
                if not self._create(self._seq + 1, renewed):
                    newest = self.newest()
                    who = newest[1].describe() if newest and newest[1] else "an instance whose record is unreadable"
                    self._lose(f"{who} took it over")
                    return
                self.holder = renewed
                self._forget_stale()
                wait = period
            except Exception as error:
                left = self.ttl * SAFE_FRACTION - (time.monotonic() - self._confirmed)
                _say(
                    f"lease: renewing the {self.job} lease in {self.records.where} failed ({first_line(error)}); "
                    f"retrying; this job stops committing in {max(left, 0):.1f}s unless a renewal succeeds"
                )
                wait = min(period, max(period / 4, 0.05))

    @property
    def lost(self) -> str | None:
        """Why this instance may no longer commit, or None while its lease is safely its own."""
        if self._lost is None and self._seq is not None and not self._stop.is_set():
            age = time.monotonic() - self._confirmed
            if age > self.ttl * SAFE_FRACTION:
                self._lose(
                    f"its newest lease record is {age:.1f}s old (renewals failed or stalled), past half the lease "
                    f"time of {self.ttl:g}s: another host may take the lease over from {self.ttl:g}s on"
                )
        return self._lost

    def _lose(self, reason: str) -> None:
        with self._state:
            if self._lost is not None:
                return
            self._lost = reason
        _say(f"lease: this {self.job} job lost its lease: {reason}; it commits nothing more and stops")

    def check(self) -> None:
        """Raise :class:`LeaseLost` unless this instance still safely holds the lease (before each commit).

        The newest record must be this instance's. If it cannot be read now, the lease is still safe while
        this instance's newest record is younger than ``ttl/2``: nobody can take it over before ``ttl``.
        """
        if self.lost is None:
            try:
                newest = self.newest()
            except Exception:  # the store cannot be read now: the age of this instance's record decides
                pass
            else:
                if newest is None:
                    self._lose("its lease records were removed")
                elif newest[1] is not None and newest[1].token != self.holder.token:
                    self._lose(f"{newest[1].describe()} took it over")
        self.raise_if_lost()

    def raise_if_lost(self) -> None:
        """Raise :class:`LeaseLost`, with the reason, once this instance may no longer commit."""
        if self.lost is not None:
            raise LeaseLost(
                f"this {self.job} job lost its lease: {self._lost}; it stops without committing again "
                "(two instances must never write the same tables)"
            )

    def while_active(self, query: StreamingQuery) -> None:
        """The lease is live while ``query`` runs (a finished one holds nothing, released or not yet)."""
        _working[self.holder.token] = lambda: not self._stop.is_set() and bool(query.isActive)

    # ---- release ---------------------------------------------------------------------------------

    def release(self) -> None:
        """Stop renewing and give the lease up: a released record, only if the lease is still this instance's."""
        with self._state:
            if self._released:
                return
            self._released = True
        lost = self.lost
        self._stop.set()
        _working.pop(self.holder.token, None)
        if self._renewer is not None and self._renewer is not threading.current_thread():
            self._renewer.join(timeout=max(5.0, self.ttl))
        if self._seq is None or lost is not None:
            return
        try:
            if self._create(self._seq + 1, replace(self.holder, renewed=_now(), released=True)):
                self._forget_stale()
        except Exception as error:  # the record goes stale instead: a restart here takes it at once
            _say(f"lease: releasing the {self.job} lease in {self.records.where} failed ({first_line(error)})")


def _released(newest: tuple[int, Holder | None]) -> bool:
    return newest[1] is not None and newest[1].released


def _alive_here(holder: Holder) -> bool:
    """Whether a holder on this host still works: its process runs (in this process: its lease is at work)."""
    if holder.pid == os.getpid():
        working = _working.get(holder.token)
        return working is not None and working()
    return process_alive(holder.pid, holder.process)


def _token(text: str) -> str | None:
    try:
        token = json.loads(text).get("token")
    except (ValueError, AttributeError):
        return None
    return token if isinstance(token, str) else None


_by_query: dict[str, Lease] = {}
"""Leases held for running streaming queries, by query id (:func:`release_with`)."""
_listening: set[int] = set()
_registry_lock = threading.Lock()


def lease_of(query: StreamingQuery) -> Lease | None:
    """The lease held for ``query`` (:func:`release_with`), while the query has not terminated."""
    with _registry_lock:
        return _by_query.get(str(query.id))


def release_with(spark: SparkSession, query: StreamingQuery, lease: Lease) -> None:
    """Release ``lease`` as soon as ``query`` terminates (stopped, finished or failed).

    Until then :func:`lease_of` finds it, so the loop that waits for the query stops it once the lease is lost.
    """
    with _registry_lock:
        _by_query[str(query.id)] = lease
        listening = id(spark) in _listening
        _listening.add(id(spark))
    if not listening:
        spark.streams.addListener(_release_listener())
    if not query.isActive:  # it ended before the listener could hear it
        _release_query(str(query.id))


def _release_query(query_id: str) -> None:
    with _registry_lock:
        lease = _by_query.pop(query_id, None)
    if lease is not None:
        lease.release()


def _release_listener() -> StreamingQueryListener:
    from pyspark.sql.streaming import StreamingQueryListener

    class _Release(StreamingQueryListener):
        def onQueryStarted(self, event: object) -> None:
            pass

        def onQueryProgress(self, event: object) -> None:
            pass

        def onQueryIdle(self, event: object) -> None:
            pass

        def onQueryTerminated(self, event: object) -> None:
            _release_query(str(getattr(event, "id", "")))

    return _Release()
