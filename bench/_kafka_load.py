"""The Kafka benchmark's load: message generators and the producer process (spawned, paced bursts)."""

from __future__ import annotations

import argparse
import multiprocessing
import random
import time
from collections import deque
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lambda_pipeline.core.config import KafkaSettings


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class FastMessages:
    """Clickstream messages shaped like ``ClickstreamGenerator``'s (same fields, late/duplicate/malformed mix).

    Per burst it formats a handful of event-time strings once, then each message is one ``bytes`` format:
    about 2 us per message instead of ~25 us, so the load generator leaves the cores to the pipeline.
    Ids are unique per (seed, process label); a duplicate is an exact resend of a recent message.
    """

    VALID = b'{"event_id":"%s-%010d","user_id":"u%05d","page":"%s","event_time":"%s","duration_ms":%d}'
    WRONG_TYPE = b'{"event_id":"%s-%010d","user_id":"u%05d","page":"%s","event_time":"%s","duration_ms":"a minute"}'
    NO_USER = b'{"event_id":"%s-%010d","page":"%s","event_time":"%s","duration_ms":%d}'
    BAD_TIME = b'{"event_id":"%s-%010d","user_id":"u%05d","page":"%s","event_time":"yesterday","duration_ms":%d}'

    def __init__(
        self, seed: int, label: str, late: float, duplicate: float, malformed: float, users: int = 2000
    ) -> None:
        from lambda_pipeline.pipelines.generator import PAGES

        self.rng = random.Random(f"{seed}-{label}")
        self.prefix = f"{seed:x}{label}".encode()
        self.pages = [p.encode() for p in PAGES]
        self.late, self.dup, self.bad, self.users = late, duplicate, malformed, users
        self.counter = 0
        self.recent: deque[bytes] = deque(maxlen=200)

    def _malformed(self, kind: int, event: tuple[Any, ...], line: bytes) -> bytes:
        if kind == 0:  # truncated_json
            return line[: len(line) // 2]
        if kind == 1:  # wrong_type
            return self.WRONG_TYPE % event[:5]
        if kind == 2:  # missing_field (user_id)
            return self.NO_USER % (event[0], event[1], event[3], event[4], event[5])
        if kind == 3:  # bad_time
            return self.BAD_TIME % (*event[:4], event[5])
        if kind == 4:  # not_an_object
            return b'["%s-%010d","%s"]' % (event[0], event[1], event[3])
        return b""  # empty_line

    def batch(self, events: int) -> tuple[list[bytes | None], int]:
        """``events`` valid events plus their duplicates and malformed company; (messages, valid events)."""
        rng, now = self.rng.random, time.time()
        fresh = [_iso(now - 5.0 * rng()).encode() for _ in range(8)]
        late = [_iso(now - 120.0 - 1680.0 * rng()).encode() for _ in range(4)]
        pages, npages, users = self.pages, len(self.pages), self.users
        out: list[bytes | None] = []
        for _ in range(events):
            self.counter += 1
            times = late if rng() < self.late else fresh
            event = (
                self.prefix,
                self.counter,
                int(rng() * users),
                pages[int(rng() * npages)],
                times[int(rng() * len(times))],
                50 + int(rng() * 119_950),
            )
            line = self.VALID % event
            out.append(line)
            self.recent.append(line)
            if rng() < self.dup:
                out.append(self.recent[int(rng() * len(self.recent))])
            if rng() < self.bad:
                self.counter += 1
                out.append(self._malformed(int(rng() * 6), (self.prefix, self.counter, *event[2:]), line))
        return out, events


class ProjectMessages:
    """``ClickstreamGenerator.messages``: the project's generator, ~25 us of Python per message."""

    def __init__(self, seed: int, label: str, late: float, duplicate: float, malformed: float) -> None:
        from lambda_pipeline.pipelines.generator import ClickstreamGenerator

        salt = sum(label.encode()) * 7919
        self.gen = ClickstreamGenerator(
            seed + salt, late_fraction=late, duplicate_fraction=duplicate, malformed_fraction=malformed
        )

    def batch(self, events: int) -> tuple[list[bytes | None], int]:
        values, stats = self.gen.messages(events)
        return values, stats.events


def make_generator(kind: str, seed: int, label: str, fractions: tuple[float, float, float]) -> Any:
    cls = FastMessages if kind == "fast" else ProjectMessages
    return cls(seed, label, *fractions)


def fill_topic(kafka: KafkaSettings, topic: str, messages: int, generator: Any) -> tuple[int, int]:
    """Send ``messages`` messages of ``generator`` as fast as the broker takes them (a backlog, or a preload):
    (messages sent, valid events among them)."""
    from lambda_pipeline.cli.kafka_producer import KafkaEventProducer

    producer = KafkaEventProducer(kafka, topic)
    sent = events = 0
    try:
        while sent < messages:
            values, valid = generator.batch(min(10_000, messages - sent))
            producer.send(values)
            sent, events = sent + len(values), events + valid
        producer.flush(300)
    finally:
        producer.close()
    return sent, events


def produce_worker(
    kafka: KafkaSettings,
    topic: str,
    kind: str,
    seed: int,
    label: str,
    fractions: tuple[float, float, float],
    rate: float,
    seconds: float,
    ticks_per_second: float,
    ready: Any,
    go: Any,
    results: Any,
) -> None:
    """Producer process: paced bursts on a deadline schedule; reports (time, messages, events) per burst."""
    try:
        from lambda_pipeline.cli.kafka_producer import KafkaEventProducer

        producer = KafkaEventProducer(kafka, topic)
        generator = make_generator(kind, seed, label, fractions)
        ready.set()
        if not go.wait(120):
            results.put({"ok": False, "error": "never told to start"})
            return
        interval = 1.0 / ticks_per_second
        ticks = max(1, round(seconds * ticks_per_second))
        cpu0, start_wall, start = time.process_time(), time.time(), time.monotonic()
        messages = events = late_ticks = 0
        log: list[tuple[float, int, int]] = []
        for tick in range(ticks):
            due = round(rate * interval * (tick + 1)) - events  # the schedule, not the count of ticks, sets the rate
            values, valid = generator.batch(due)
            producer.send(values)
            messages += len(values)
            events += valid
            log.append((time.time(), messages, events))
            delay = start + (tick + 1) * interval - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            else:
                late_ticks += 1
        producer.flush(120)
        results.put(
            {
                "ok": True,
                "start": start_wall,
                "log": log,
                "messages": messages,
                "events": events,
                "acked": producer.stats.acked,
                "late_ticks": late_ticks,
                "ticks": ticks,
                "cpu_seconds": time.process_time() - cpu0,
                "wall_seconds": time.time() - start_wall,
            }
        )
    except BaseException as exc:  # reported by the parent
        results.put({"ok": False, "error": f"{type(exc).__name__}: {exc}"})


class ProducerProcess:
    """The producer child: started ready (connected), then told to go; every wait bounded."""

    def __init__(self, kafka: KafkaSettings, topic: str, args: argparse.Namespace, rate: float, label: str) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.ready, self.go, self.results = ctx.Event(), ctx.Event(), ctx.Queue()
        fractions = (args.late_fraction, args.duplicate_fraction, args.malformed_fraction)
        self.seconds = args.warmup + args.seconds
        self.proc = ctx.Process(
            target=produce_worker,
            name=f"producer-{label}",
            args=(
                kafka,
                topic,
                args.generator,
                args.seed,
                label,
                fractions,
                rate,
                self.seconds,
                args.ticks_per_second,
                self.ready,
                self.go,
                self.results,
            ),
            daemon=True,
        )
        self.result: dict[str, Any] | None = None

    def start(self) -> float:
        self.proc.start()
        deadline = time.monotonic() + 120
        while not self.ready.wait(0.5):
            self._check_early()
            if time.monotonic() > deadline:
                raise RuntimeError("the producer process did not get ready within 120 s")
        self.go.set()
        return time.time()

    def _check_early(self) -> None:
        if not self.proc.is_alive():
            raise RuntimeError(f"producer process exited early: {self.poll() or self.proc.exitcode}")

    def poll(self) -> dict[str, Any] | None:
        """The result once the producer finished (non-blocking)."""
        if self.result is None:
            try:
                self.result = self.results.get_nowait()
            except Exception:  # queue.Empty
                return None
            if not self.result.get("ok"):
                raise RuntimeError(f"producer failed: {self.result.get('error')}")
        return self.result

    def stop(self) -> None:
        self.go.set()
        if self.proc.is_alive():
            self.proc.join(timeout=5)
        if self.proc.is_alive():
            self.proc.terminate()  # our own child, by its handle
            self.proc.join(timeout=10)
