"""The project's local Kafka broker, for real: lifecycle, data, errors and the CLI verb."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition

from lambda_pipeline.core.errors import EnvironmentProblem
from lambda_pipeline.local_services.kafka_admin import offsets
from lambda_pipeline.local_services.kafka_broker import KafkaBroker
from lambda_pipeline.local_services.kafka_broker_config import MESSAGE_MAX_BYTES
from lambda_pipeline.local_services.process import free_port

pytestmark = pytest.mark.integration
pytest_plugins = ["tests.kafka_support"]  # harmless if conftest registers it too

ROOT = Path(__file__).resolve().parents[1]


def produce(bootstrap: str, topic: str, messages: list[tuple[bytes, bytes]], partition: int | None = None) -> None:
    """Send and wait (bounded) until every message is acknowledged."""
    producer = Producer(
        {"bootstrap.servers": bootstrap, "enable.idempotence": True, "acks": "all", "message.max.bytes": 2_000_000}
    )
    errors: list[KafkaError] = []
    for key, value in messages:
        extra = {} if partition is None else {"partition": partition}
        producer.produce(topic, value, key, on_delivery=lambda err, _msg: errors.append(err) if err else None, **extra)
    assert producer.flush(20) == 0, "messages still queued after 20 s"
    assert not errors, errors


def consume(bootstrap: str, topic: str, expected: int, *, subscribe: bool = False, seconds: float = 20) -> list:
    """Read ``expected`` messages from the start of ``topic``: at most ``seconds`` and 400 polls."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"test-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    if subscribe:  # exercises the group coordinator (its offsets topic has replication factor 1)
        consumer.subscribe([topic])
    else:
        consumer.assign([TopicPartition(topic, p, 0) for p in offsets(bootstrap, topic)])
    got = []
    deadline = time.monotonic() + seconds
    try:
        for _ in range(400):
            if len(got) >= expected or time.monotonic() > deadline:
                break
            message = consumer.poll(0.1 if not got else 0.05)
            if message is None:
                continue
            assert message.error() is None, message.error()
            got.append(message)
    finally:
        consumer.close()
    return got


def test_start_status_stop_restart_and_crash(tmp_path: Path) -> None:
    broker = KafkaBroker(tmp_path / "kafka", port=free_port())
    assert not broker.status().running
    broker.start(timeout=60)
    try:
        status = broker.status()
        assert status.running and status.pid and status.port == broker.port
        assert status.log_file.is_file() and broker.pid_file.is_file()
        broker.start()  # already running: no-op, same process
        assert broker.status().pid == status.pid
        assert broker.create_topic("kept", partitions=2) is True
        produce(broker.bootstrap_servers, "kept", [(b"k%d" % i, b"v%d" % i) for i in range(6)])

        assert broker.stop() is True  # clean shutdown on SIGTERM
        assert not broker.status().running and not broker.pid_file.exists()
        broker.start(timeout=60)  # same storage: topic and records survive
        assert broker.create_topic("kept", partitions=2) is False
        assert sorted(m.value() for m in consume(broker.bootstrap_servers, "kept", 6)) == [b"v%d" % i for i in range(6)]

        assert broker.kill() is True  # a crash
        assert not broker.status().running
        broker.start(timeout=60)  # recovers the log after the unclean shutdown
        assert sum(latest for _, latest in broker.offsets("kept").values()) == 6
    finally:
        broker.stop()
    assert not broker.status().running


def test_round_trip_through_a_consumer_group(kafka_broker: KafkaBroker, kafka_topic: str) -> None:
    sent = [(f"user-{i % 5}".encode(), f"event-{i}".encode()) for i in range(40)]
    big = b"x" * (MESSAGE_MAX_BYTES * 3 // 4)  # far above a normal event, under the broker's limit
    produce(kafka_broker.bootstrap_servers, kafka_topic, [*sent, (b"big", big)])
    got = consume(kafka_broker.bootstrap_servers, kafka_topic, len(sent) + 1, subscribe=True)
    assert sorted(m.value() for m in got if m.key() != b"big") == sorted(v for _, v in sent)
    assert [len(m.value()) for m in got if m.key() == b"big"] == [len(big)]
    assert {m.partition() for m in got} == {0, 1}  # keys spread over both partitions
    per_key = {}
    for m in got:
        per_key.setdefault(m.key(), set()).add(m.partition())
    assert all(len(parts) == 1 for parts in per_key.values())  # a key always lands on one partition


def test_delete_records_advances_the_earliest_offset(kafka_broker: KafkaBroker, kafka_topic: str) -> None:
    produce(kafka_broker.bootstrap_servers, kafka_topic, [(b"k", b"v%d" % i) for i in range(10)], partition=0)
    assert kafka_broker.offsets(kafka_topic) == {0: (0, 10), 1: (0, 0)}
    assert kafka_broker.delete_records(kafka_topic, {0: 4}) == {0: 4}
    assert kafka_broker.offsets(kafka_topic) == {0: (4, 10), 1: (0, 0)}
    assert [m.offset() for m in consume(kafka_broker.bootstrap_servers, kafka_topic, 6)] == list(range(4, 10))


def test_start_on_a_taken_port_fails_clearly(tmp_path: Path) -> None:
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        broker = KafkaBroker(tmp_path / "kafka", port=port)
        with pytest.raises(EnvironmentProblem, match=rf"port {port} on 127\.0\.0\.1 is already in use"):
            broker.start()
    assert not broker.status().running and not broker.pid_file.exists()


def test_a_stale_pid_file_is_not_trusted(tmp_path: Path) -> None:
    broker = KafkaBroker(tmp_path / "kafka", port=free_port())
    broker.base_dir.mkdir(parents=True)
    broker.pid_file.write_text(f"{os.getpid()}\n")  # a live process, but not our broker
    assert not broker.status().running
    assert broker.stop() is True and broker.kill() is False  # and we are still alive to assert it
    assert not broker.pid_file.exists()


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lambda_pipeline.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def test_cli_start_status_stop_across_processes(tmp_path: Path) -> None:
    port = free_port()
    common = ("--workdir", str(tmp_path), "--set", f"ingest.kafka.bootstrap_servers=127.0.0.1:{port}")
    started = run_cli("kafka", "start", *common)
    try:
        assert started.returncode == 0, started.stderr
        assert f"127.0.0.1:{port}" in started.stdout and "topic 'clickstream' created" in started.stdout
        assert offsets(f"127.0.0.1:{port}", "clickstream") == {0: (0, 0), 1: (0, 0)}
        status = run_cli("kafka", "status", *common)
        assert status.returncode == 0 and "running on" in status.stdout, status.stdout + status.stderr
    finally:
        stopped = run_cli("kafka", "stop", *common)
    assert stopped.returncode == 0 and "cleanly" in stopped.stdout, stopped.stdout + stopped.stderr
    status = run_cli("kafka", "status", *common)
    assert status.returncode == 1 and "not running" in status.stdout
    assert (tmp_path / "kafka" / "data" / "meta.properties").is_file()
