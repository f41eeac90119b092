"""Pytest plugin: a real Kafka broker for the session and a fresh topic per test.

Register it once, in ``tests/conftest.py``: ``pytest_plugins = ["tests.kafka_support"]``. Then::

    def test_something(kafka_broker, kafka_topic):
        producer = Producer({"bootstrap.servers": kafka_broker.bootstrap_servers})
        producer.produce(kafka_topic, b"...")

The broker starts (about 4 s warm; the first run on a machine also fetches its jars with Maven)
only when a test asks for it, on a free loopback port, and is stopped at the end of the session,
also when tests fail.
"""

from __future__ import annotations

import contextlib
import re
import uuid
from collections.abc import Iterator

import pytest

from lambda_pipeline.core.errors import LambdaError
from lambda_pipeline.local_services.kafka_broker import KafkaBroker
from lambda_pipeline.local_services.process import free_port

__all__ = ["kafka_broker", "kafka_topic"]


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaBroker]:
    """One broker (2 partitions by default, 2 MB max message) shared by the whole test session."""
    broker = KafkaBroker(tmp_path_factory.mktemp("kafka"), port=free_port())
    try:
        broker.start()
        yield broker
    finally:
        broker.stop(timeout=20)


@pytest.fixture()
def kafka_topic(kafka_broker: KafkaBroker, request: pytest.FixtureRequest) -> Iterator[str]:
    """A new, empty topic with 2 partitions, named after the test; deleted afterwards."""
    slug = re.sub(r"[^A-Za-z0-9-]+", "-", request.node.name).strip("-")[:80]
    name = f"test-{slug}-{uuid.uuid4().hex[:8]}"
    kafka_broker.create_topic(name, partitions=2, exist_ok=False)
    yield name
    with contextlib.suppress(LambdaError):  # the test may have stopped the broker: nothing left to clean
        kafka_broker.delete_topic(name)
