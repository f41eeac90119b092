"""Send generated clickstream messages to a Kafka topic, at a set rate if asked.

The producer is idempotent (``enable.idempotence``, ``acks=all``): a retry inside
the client never writes a message twice, so what the topic holds is exactly what
the generator produced. Tests and benchmarks still count the topic's offsets, the
ground truth for "produced = master + quarantine".
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from lambda_pipeline.core.config import KafkaSettings
from lambda_pipeline.core.errors import EnvironmentProblem, LambdaError
from lambda_pipeline.pipelines.generator import ClickstreamGenerator, GeneratedMessages

__all__ = ["KafkaEventProducer", "ProduceStats", "producer_config"]

# Java-client option names that librdkafka spells the same way; others are left to the JVM side.
_SHARED_OPTIONS = ("security.protocol", "sasl.mechanism", "sasl.username", "sasl.password", "ssl.ca.location")


def producer_config(kafka: KafkaSettings, **extra: Any) -> dict[str, Any]:
    """librdkafka settings for the configured cluster (security options that both clients share)."""
    options = kafka.resolved_options()
    config: dict[str, Any] = {
        "bootstrap.servers": kafka.bootstrap_servers,
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 5,
        "batch.size": 1_000_000,
        "compression.type": "lz4",
        "message.max.bytes": 2_000_000,
        "queue.buffering.max.messages": 1_000_000,
    }
    config.update({k: v for k, v in options.items() if k in _SHARED_OPTIONS})
    config.update(extra)
    return config


@dataclass
class ProduceStats:
    """What reached the broker (acknowledged), and what the generator says it holds."""

    acked: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)
    sent_at: list[tuple[float, int]] = field(default_factory=list)  # (wall time, messages sent so far)
    generated: list[GeneratedMessages] = field(default_factory=list)


class KafkaEventProducer:
    """An idempotent producer for one topic; :meth:`close` flushes within a bounded time."""

    def __init__(self, kafka: KafkaSettings, topic: str | None = None, **extra: Any) -> None:
        from confluent_kafka import Producer

        chosen = topic or kafka.topic
        if not chosen:
            raise LambdaError("the generator needs a topic: set ingest.kafka.topic (a pattern is not a destination)")
        self.topic: str = chosen
        self.stats = ProduceStats()
        self._producer = Producer(producer_config(kafka, **extra))

    def _delivered(self, err: Any, _msg: Any) -> None:
        if err is None:
            self.stats.acked += 1
        else:
            self.stats.failed += 1
            if len(self.stats.errors) < 10:
                self.stats.errors.append(str(err))

    def send(self, values: Iterable[bytes | None]) -> int:
        """Queue messages (``None`` is a null value); waits for queue room, never unboundedly."""
        n = 0
        for value in values:
            for _ in range(1000):  # each wait is 10 ms: a full queue blocks at most 10 s
                try:
                    self._producer.produce(self.topic, value=value, on_delivery=self._delivered)
                    break
                except BufferError:
                    self._producer.poll(0.01)
            else:
                raise EnvironmentProblem(f"Kafka producer queue for topic {self.topic} stayed full for 10 s")
            n += 1
        self._producer.poll(0)
        return n

    def flush(self, timeout: float = 60.0) -> None:
        left = self._producer.flush(timeout)
        if left:
            raise EnvironmentProblem(
                f"{left} messages to topic {self.topic} were not acknowledged within {timeout:.0f} s: "
                "is the broker up (lambda-pipeline kafka status)?"
            )
        if self.stats.failed:
            raise EnvironmentProblem(
                f"{self.stats.failed} messages to topic {self.topic} failed: {'; '.join(self.stats.errors)}"
            )

    def produce(self, generator: ClickstreamGenerator, events: int, hostile_fraction: float = 0.0) -> GeneratedMessages:
        """Generate and send ``events`` valid events with their late, duplicate and malformed company."""
        values, generated = generator.messages(events, hostile_fraction)
        self.send(values)
        self.stats.generated.append(generated)
        return generated

    def run_at_rate(
        self,
        generator: ClickstreamGenerator,
        rate: float,
        seconds: float,
        *,
        ticks_per_second: float = 20.0,
        hostile_fraction: float = 0.0,
    ) -> ProduceStats:
        """Produce ``rate`` valid events per second for ``seconds``, in small paced bursts (bounded)."""
        interval = 1.0 / ticks_per_second
        per_tick = max(1, round(rate * interval))
        start = time.monotonic()
        sent = 0
        for tick in range(max(1, int(seconds * ticks_per_second))):
            generated = self.produce(generator, per_tick, hostile_fraction)
            sent += generated.messages
            self.stats.sent_at.append((time.time(), sent))
            # Pacing: poll() returns at the first delivery report, so keep polling until the tick's end.
            tick_end = start + (tick + 1) * interval
            while (delay := tick_end - time.monotonic()) > 0:
                self._producer.poll(delay)
        self.flush()
        return self.stats

    def close(self, timeout: float = 60.0) -> None:
        self.flush(timeout)
