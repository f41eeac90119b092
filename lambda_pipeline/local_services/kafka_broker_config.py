"""What the local Kafka broker is: its jars, its cluster id, its listeners and limits, and its logging.

Kept apart from the process that runs it: these are the choices that make a one-node laptop broker behave
like production where the pipeline can tell (retention, log start offsets, message size limits) and stay
small where it cannot. Its listeners speak PLAINTEXT and bind to 127.0.0.1 only: nothing beyond this
machine can reach it.
"""

from __future__ import annotations

import base64
import uuid
from pathlib import Path

from lambda_pipeline.local_services.process import HOST

__all__ = [
    "KAFKA_VERSION",
    "LOG4J2_PROPERTIES",
    "MESSAGE_MAX_BYTES",
    "broker_coordinates",
    "new_cluster_id",
    "render_server_properties",
]

KAFKA_VERSION = "4.1.1"
SCALA_BINARY = "2.13"
# kafka_2.13 depends on log4j-core but not on an SLF4J binding: without one the broker logs nothing.
LOG4J_VERSION = "2.24.3"
NODE_ID = 1
MESSAGE_MAX_BYTES = 2 * 1024 * 1024

# Kafka's own Uuid.METADATA_TOPIC_ID (AAAAAAAAAAAAAAAAAAAAAQ) and ZERO_UUID may not be cluster ids.
_RESERVED_IDS = {bytes(16), bytes(15) + b"\x01"}


def broker_coordinates(version: str = KAFKA_VERSION) -> list[str]:
    """Maven coordinates of a broker runtime: the server and a log4j2 binding for its SLF4J logging."""
    return [
        f"org.apache.kafka:kafka_{SCALA_BINARY}:{version}",
        f"org.apache.logging.log4j:log4j-slf4j-impl:{LOG4J_VERSION}",
    ]


def new_cluster_id() -> str:
    """A Kafka ``Uuid`` in its base64url form, as ``kafka-storage random-uuid`` prints it."""
    while True:
        raw = uuid.uuid4().bytes
        text = base64.urlsafe_b64encode(raw).decode().rstrip("=")
        if raw not in _RESERVED_IDS and not text.startswith("-"):
            return text


def render_server_properties(port: int, controller_port: int, data_dir: Path) -> str:
    """The text of ``server.properties``: one KRaft node, broker and controller, on 127.0.0.1."""
    settings = {
        "process.roles": "broker,controller",
        "node.id": NODE_ID,
        "controller.quorum.voters": f"{NODE_ID}@{HOST}:{controller_port}",
        "listeners": f"PLAINTEXT://{HOST}:{port},CONTROLLER://{HOST}:{controller_port}",
        "advertised.listeners": f"PLAINTEXT://{HOST}:{port}",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "log.dirs": str(data_dir),
        "num.partitions": 2,
        "default.replication.factor": 1,
        "min.insync.replicas": 1,
        "offsets.topic.replication.factor": 1,
        "offsets.topic.num.partitions": 4,  # default 50: slow to create on a laptop, pointless on one node
        "transaction.state.log.replication.factor": 1,
        "transaction.state.log.min.isr": 1,
        "transaction.state.log.num.partitions": 4,
        "share.coordinator.state.topic.replication.factor": 1,
        "share.coordinator.state.topic.min.isr": 1,
        "group.initial.rebalance.delay.ms": 0,
        "auto.create.topics.enable": "false",
        "log.retention.check.interval.ms": 5000,
        # Far above a normal event, so a test can send a message over the project's own limit and see
        # the project (not the broker) handle it.
        "message.max.bytes": MESSAGE_MAX_BYTES,
        "replica.fetch.max.bytes": MESSAGE_MAX_BYTES,
        # After a crash (kill) the new incarnation cannot register until the old one's session expires
        # (default 9 s); 4 s still rides out a long GC pause or a CPU-starved laptop.
        "broker.heartbeat.interval.ms": 1000,
        "broker.session.timeout.ms": 4000,
        "num.network.threads": 2,
        "num.io.threads": 4,
        "log.cleaner.dedupe.buffer.size": 16 * 1024 * 1024,  # default 128 MB of a small heap
    }
    text = "# Written by lambda-pipeline (local_services/kafka_broker_config.py) at every start; edits are lost.\n"
    return text + "".join(f"{key}={value}\n" for key, value in settings.items())


# Quiet: warnings and errors only, plus the broker's "started"/"shut down" lines.
LOG4J2_PROPERTIES = """\
status = error
name = lambda-pipeline-kafka
appender.out.type = Console
appender.out.name = OUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.out.ref = OUT
logger.server.name = kafka.server.KafkaRaftServer
logger.server.level = INFO
"""
