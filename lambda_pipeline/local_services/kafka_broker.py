"""A real single-node Apache Kafka broker (KRaft, broker+controller in one JVM) on 127.0.0.1.

Local runs, the demo and the tests need a Kafka that behaves like production (retention,
log start offsets, message size limits), not a mock. The jars come from Maven Central through
``lambda_pipeline.local_services.maven`` on first use, so a machine with Java, Maven and network access needs
nothing else. Everything lives under one ``base_dir``: storage, config, log, pid and cluster id;
the pid file lets one process start the broker and another one query or stop it.
"""

from __future__ import annotations

import base64
import contextlib
import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lambda_pipeline.core.errors import EnvironmentProblem, LambdaError
from lambda_pipeline.local_services.maven import resolve
from lambda_pipeline.local_services.process import HOST, ManagedProcess, free_port, port_in_use

if TYPE_CHECKING:
    from confluent_kafka.admin import AdminClient

__all__ = [
    "KAFKA_VERSION",
    "BrokerStatus",
    "KafkaBroker",
    "broker_coordinates",
    "create_topic",
    "delete_records",
    "delete_topic",
    "free_port",
    "offsets",
    "port_in_use",
    "wait_for_broker",
]

KAFKA_VERSION = "4.1.1"
SCALA_BINARY = "2.13"
# kafka_2.13 depends on log4j-core but not on an SLF4J binding: without one the broker logs nothing.
LOG4J_VERSION = "2.24.3"
NODE_ID = 1
MESSAGE_MAX_BYTES = 2 * 1024 * 1024
FORMAT_TIMEOUT_SECONDS = 120.0
_POLL_SECONDS = 0.2

# Kafka's own Uuid.METADATA_TOPIC_ID (AAAAAAAAAAAAAAAAAAAAAQ) and ZERO_UUID may not be cluster ids.
_RESERVED_IDS = {bytes(16), bytes(15) + b"\x01"}


def broker_coordinates(version: str = KAFKA_VERSION) -> list[str]:
    """Maven coordinates of a broker runtime: the server and a log4j2 binding for its SLF4J logging."""
    return [
        f"org.apache.kafka:kafka_{SCALA_BINARY}:{version}",
        f"org.apache.logging.log4j:log4j-slf4j-impl:{LOG4J_VERSION}",
    ]


def _new_cluster_id() -> str:
    """A Kafka ``Uuid`` in its base64url form, as ``kafka-storage random-uuid`` prints it."""
    while True:
        raw = uuid.uuid4().bytes
        text = base64.urlsafe_b64encode(raw).decode().rstrip("=")
        if raw not in _RESERVED_IDS and not text.startswith("-"):
            return text


# ---------------------------------------------------------------------------------------------------------------
# Admin helpers: module-level so they work against any broker, not only one this module started.


def _admin(bootstrap_servers: str, quiet: bool = False) -> AdminClient:
    from confluent_kafka.admin import AdminClient

    conf: dict[str, Any] = {
        "bootstrap.servers": bootstrap_servers,
        "socket.connection.setup.timeout.ms": 5000,
        "log_level": 4,  # warnings and errors, not librdkafka's informational lines
    }
    if quiet:  # while probing a broker that is still starting, "connection refused" is expected, not news
        conf.update({"log_level": 0, "error_cb": lambda _err: None})
    return AdminClient(conf)


def _kafka_error(exc: BaseException) -> Any:
    return exc.args[0] if exc.args and hasattr(exc.args[0], "code") else None


def _unreachable(bootstrap_servers: str, action: str, exc: BaseException) -> EnvironmentProblem:
    err = _kafka_error(exc)
    reason = err.str() if err is not None else str(exc)
    return EnvironmentProblem(
        f"could not {action} on Kafka {bootstrap_servers} ({reason}); is the broker running? "
        "(check with: lambda-pipeline kafka status)"
    )


def wait_for_broker(bootstrap_servers: str, timeout: float = 30.0) -> None:
    """Return once a broker at ``bootstrap_servers`` answers a metadata request; bounded by ``timeout``."""
    deadline = time.monotonic() + timeout
    admin = _admin(bootstrap_servers, quiet=True)
    last: BaseException | None = None
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise _unreachable(bootstrap_servers, f"get metadata within {timeout:.0f}s", last or TimeoutError())
        try:
            if admin.list_topics(timeout=max(0.5, min(2.0, remaining))).brokers:
                return
        except Exception as exc:  # KafkaException: not up yet
            last = exc
        time.sleep(_POLL_SECONDS)


def _partitions(admin: AdminClient, bootstrap_servers: str, topic: str, timeout: float) -> dict[int, Any]:
    try:
        metadata = admin.list_topics(topic=topic, timeout=timeout)
    except Exception as exc:
        raise _unreachable(bootstrap_servers, f"read metadata of topic {topic!r}", exc) from None
    info = metadata.topics.get(topic)
    if info is None or info.error is not None or not info.partitions:
        raise LambdaError(
            f"Kafka topic {topic!r} does not exist on {bootstrap_servers}; create it first "
            "(lambda-pipeline kafka start creates the configured topic)"
        )
    return dict(info.partitions)


def create_topic(
    bootstrap_servers: str,
    name: str,
    partitions: int = 2,
    config: Mapping[str, str] | None = None,
    exist_ok: bool = True,
    replication_factor: int = -1,
    timeout: float = 30.0,
) -> bool:
    """Create ``name`` and wait until every partition has a leader; False if it already existed.

    ``replication_factor=-1`` takes the broker's default (1 on the local broker).
    """
    from confluent_kafka import KafkaError
    from confluent_kafka.admin import NewTopic

    admin = _admin(bootstrap_servers)
    topic = NewTopic(
        name,
        num_partitions=partitions,
        replication_factor=replication_factor,
        config={k: str(v) for k, v in (config or {}).items()},
    )
    created = True
    try:
        admin.create_topics([topic], operation_timeout=timeout, request_timeout=timeout)[name].result(timeout)
    except Exception as exc:
        err = _kafka_error(exc)
        if err is None or err.code() != KafkaError.TOPIC_ALREADY_EXISTS:
            if err is not None and err.code() in (KafkaError._TRANSPORT, KafkaError._TIMED_OUT):
                raise _unreachable(bootstrap_servers, f"create topic {name!r}", exc) from None
            raise LambdaError(f"Kafka refused to create topic {name!r}: {err.str() if err else exc}") from None
        if not exist_ok:
            raise LambdaError(f"Kafka topic {name!r} already exists on {bootstrap_servers}") from None
        created = False
    # The controller has the topic; wait until this broker's metadata shows a leader for each partition.
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(LambdaError):
            found = _partitions(admin, bootstrap_servers, name, timeout=min(5.0, timeout))
            if len(found) >= partitions and all(p.leader >= 0 and p.error is None for p in found.values()):
                return created
        if time.monotonic() > deadline:
            raise LambdaError(f"Kafka topic {name!r} has no leader for every partition after {timeout:.0f}s")
        time.sleep(_POLL_SECONDS)


def delete_topic(bootstrap_servers: str, name: str, timeout: float = 30.0) -> None:
    """Delete ``name``; a topic that does not exist is not an error."""
    from confluent_kafka import KafkaError

    admin = _admin(bootstrap_servers)
    try:
        admin.delete_topics([name], operation_timeout=timeout, request_timeout=timeout)[name].result(timeout)
    except Exception as exc:
        err = _kafka_error(exc)
        if err is None or err.code() != KafkaError.UNKNOWN_TOPIC_OR_PART:
            raise _unreachable(bootstrap_servers, f"delete topic {name!r}", exc) from None


def delete_records(
    bootstrap_servers: str, topic: str, before: Mapping[int, int], timeout: float = 30.0
) -> dict[int, int]:
    """Delete the records of each partition below the given offset: the log start offset moves there.

    This is what retention does to old segments, on demand: tests use it to make data "age out".
    Returns the new earliest offset (low watermark) per partition.
    """
    from confluent_kafka import TopicPartition

    admin = _admin(bootstrap_servers)
    wanted = [TopicPartition(topic, int(p), int(o)) for p, o in before.items()]
    if not wanted:
        return {}
    try:
        futures = admin.delete_records(wanted, request_timeout=timeout, operation_timeout=timeout)
        return {tp.partition: int(f.result(timeout).low_watermark) for tp, f in futures.items()}
    except Exception as exc:
        err = _kafka_error(exc)
        raise LambdaError(
            f"Kafka could not delete records of {topic!r} below {dict(before)} on {bootstrap_servers}: "
            f"{err.str() if err is not None else exc}"
        ) from None


def offsets(bootstrap_servers: str, topic: str, timeout: float = 30.0) -> dict[int, tuple[int, int]]:
    """``{partition: (earliest, latest)}``: the log start offset and the next offset to be written."""
    from confluent_kafka import TopicPartition
    from confluent_kafka.admin import OffsetSpec

    admin = _admin(bootstrap_servers)
    partitions = sorted(_partitions(admin, bootstrap_servers, topic, timeout))

    def query(spec: OffsetSpec) -> dict[int, int]:
        request = {TopicPartition(topic, p): spec for p in partitions}
        futures = admin.list_offsets(request, request_timeout=timeout)
        return {tp.partition: int(f.result(timeout).offset) for tp, f in futures.items()}

    try:
        earliest, latest = query(OffsetSpec.earliest()), query(OffsetSpec.latest())
    except Exception as exc:
        raise _unreachable(bootstrap_servers, f"list offsets of topic {topic!r}", exc) from None
    return {p: (earliest[p], latest[p]) for p in partitions}


# ---------------------------------------------------------------------------------------------------------------
# The broker process.


@dataclass(frozen=True)
class BrokerStatus:
    """What ``lambda-pipeline kafka status`` shows; ``pid`` is None when not running."""

    running: bool
    pid: int | None
    port: int
    base_dir: Path
    version: str
    log_file: Path

    @property
    def bootstrap_servers(self) -> str:
        return f"{HOST}:{self.port}"


def _java() -> str:
    """The java binary, after the same Java 17+ check Spark gets (Kafka 4 needs 17+ as well)."""
    from lambda_pipeline.core.java import check_java

    try:
        check_java()
    except EnvironmentProblem as exc:
        raise EnvironmentProblem(f"the Kafka broker cannot start: {str(exc).replace('Spark', 'Kafka')}") from None
    java_home = os.environ.get("JAVA_HOME")
    return str(Path(java_home) / "bin" / "java") if java_home else str(shutil.which("java"))


class KafkaBroker(ManagedProcess):
    """One KRaft broker+controller JVM bound to 127.0.0.1, its state kept under ``base_dir``.

    ``start`` is idempotent (a no-op when this broker already runs), ``restart`` keeps the storage,
    ``kill`` simulates a crash. Any process may call ``status``/``stop`` for the same ``base_dir``.
    """

    _file_stem = "broker"
    _label = "the Kafka broker"
    _base_dir_role = "with storage"
    _cli_verb = "kafka"
    _port_hint = f"e.g. --set ingest.kafka.bootstrap_servers={HOST}:<port>"
    _ready_poll_seconds = _POLL_SECONDS
    _stopped_note = "; it was stopped"  # a start that timed out kills the half-started JVM at once

    def __init__(
        self,
        base_dir: str | Path,
        port: int = 9092,
        controller_port: int | None = None,
        version: str = KAFKA_VERSION,
        heap: str = "512m",
    ) -> None:
        super().__init__(base_dir, port)
        self._controller_port = controller_port
        self.version = version
        self.heap = heap
        self._probe_admin: AdminClient | None = None

    # -- files ----------------------------------------------------------------------------------------------------
    @property
    def data_dir(self) -> Path:
        return self.base_dir / "data"

    @property
    def server_properties(self) -> Path:
        return self.base_dir / "server.properties"

    @property
    def state_file(self) -> Path:
        """Cluster id, ports and version of the storage, kept across restarts."""
        return super().state_file

    @property
    def bootstrap_servers(self) -> str:
        return f"{HOST}:{self.port}"

    @property
    def controller_port(self) -> int | None:
        return self._controller_port or self._state().get("controller_port")

    def __repr__(self) -> str:
        return f"KafkaBroker({str(self.base_dir)!r}, port={self.port}, version={self.version!r})"

    # -- process identity ---------------------------------------------------------------------------------------
    @property
    def _address(self) -> str:
        return self.bootstrap_servers

    def _owns(self, cmdline: str) -> bool:
        return "kafka.Kafka" in cmdline and str(self.server_properties) in cmdline

    def status(self) -> BrokerStatus:
        """Whether this ``base_dir``'s broker runs, from any process."""
        pid, port = self._running() or (None, self.port)
        return BrokerStatus(pid is not None, pid, port, self.base_dir, self.version, self.log_file)

    # -- start ----------------------------------------------------------------------------------------------------
    def start(self, timeout: float = 90.0) -> None:
        """Start the broker and return once it answers a metadata request (at most ``timeout`` seconds).

        The first start on a machine resolves the jars with Maven; the first start on a ``base_dir``
        formats the storage. A no-op when this broker already runs on the same port.
        """
        deadline = time.monotonic() + timeout
        java = _java()
        if self._already_running():
            wait_for_broker(self.bootstrap_servers, max(1.0, deadline - time.monotonic()))
            return
        self._check_free(self.port, "port")
        controller_port = self._pick_controller_port()
        self.base_dir.mkdir(parents=True, exist_ok=True)
        jars = resolve(broker_coordinates(self.version), f"kafka-{self.version}")
        classpath = os.pathsep.join(str(j) for j in jars)
        cluster_id = self._state().get("cluster_id") or _new_cluster_id()
        self._save_state(cluster_id=cluster_id, port=self.port, controller_port=controller_port, version=self.version)
        self._write_config(controller_port)
        self._format_once(java, classpath, cluster_id)
        self._launch(java, classpath, deadline)

    def _pick_controller_port(self) -> int:
        """The explicit port, else the one this storage used before, else port+1, else any free one."""
        if self._controller_port is not None:
            self._check_free(self._controller_port, "controller port")
            return self._controller_port
        candidates = [self._state().get("controller_port"), self.port + 1 if self.port < 65535 else None]
        for candidate in candidates:
            if isinstance(candidate, int) and candidate != self.port and not port_in_use(candidate):
                return candidate
        while True:
            candidate = free_port()
            if candidate != self.port:
                return candidate

    def _write_config(self, controller_port: int) -> None:
        settings = {
            "process.roles": "broker,controller",
            "node.id": NODE_ID,
            "controller.quorum.voters": f"{NODE_ID}@{HOST}:{controller_port}",
            "listeners": f"PLAINTEXT://{HOST}:{self.port},CONTROLLER://{HOST}:{controller_port}",
            "advertised.listeners": f"PLAINTEXT://{HOST}:{self.port}",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "log.dirs": str(self.data_dir),
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
        text = "# Written by lambda-pipeline (local_services/kafka_broker.py) at every start; edits are lost.\n"
        text += "".join(f"{key}={value}\n" for key, value in settings.items())
        self.server_properties.write_text(text, encoding="utf-8")
        (self.base_dir / "log4j2.properties").write_text(_LOG4J2, encoding="utf-8")

    def _java_command(self, java: str, classpath: str, heap: str) -> list[str]:
        return [
            java,
            f"-Xmx{heap}",
            # A dev broker on a laptop next to Spark: one GC thread and no C2 compiler keep its CPU use low,
            # and it starts faster; throughput is still far above what the pipeline sends locally.
            "-XX:+UseSerialGC",
            "-XX:TieredStopAtLevel=1",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.base_dir / 'log4j2.properties'}",
            "-cp",
            classpath,
        ]

    def _format_once(self, java: str, classpath: str, cluster_id: str) -> None:
        """``kafka-storage format`` with a static voter set, only if the storage was never formatted."""
        if (self.data_dir / "meta.properties").is_file():
            return
        command = [
            *self._java_command(java, classpath, "256m"),
            "kafka.tools.StorageTool",
            "format",
            "--cluster-id",
            cluster_id,
            "--config",
            str(self.server_properties),
            "--ignore-formatted",
        ]
        try:
            run = subprocess.run(
                command, capture_output=True, text=True, timeout=FORMAT_TIMEOUT_SECONDS, stdin=subprocess.DEVNULL
            )
        except subprocess.TimeoutExpired:
            raise EnvironmentProblem(
                f"formatting the Kafka storage {self.data_dir} took over {FORMAT_TIMEOUT_SECONDS:.0f}s"
            ) from None
        if run.returncode != 0:
            tail = " | ".join((run.stdout + run.stderr).strip().splitlines()[-5:])
            raise EnvironmentProblem(
                f"could not format the Kafka storage {self.data_dir} (exit code {run.returncode}): {tail}; "
                f"if it holds a half-written or foreign storage, delete {self.base_dir} and retry"
            )

    def _launch(self, java: str, classpath: str, deadline: float) -> None:
        command = [*self._java_command(java, classpath, self.heap), "kafka.Kafka", str(self.server_properties)]
        offset = self._spawn(command, f"Kafka {self.version}")
        try:
            self._await_ready(deadline, offset)
        finally:
            self._probe_admin = None  # its librdkafka threads and connections are not needed after start-up

    def _answers(self, remaining: float) -> bool:
        """A metadata answer; the admin client only once the port accepts connections, then kept for the retries."""
        if self._probe_admin is None and _accepts(self.port):
            self._probe_admin = _admin(self.bootstrap_servers, quiet=True)
        if self._probe_admin is None:
            return False
        return bool(self._probe_admin.list_topics(timeout=max(0.5, min(2.0, remaining))).brokers)

    # -- stop -----------------------------------------------------------------------------------------------------
    def stop(self, timeout: float = 30.0) -> bool:
        """Clean shutdown (SIGTERM), SIGKILL after ``timeout``; False only if it had to be killed.

        Not running is not an error (returns True). The storage is kept.
        """
        return super().stop(timeout)

    def kill(self) -> bool:
        """SIGKILL, as a crash would; True if a running broker was killed. Storage is recovered at next start."""
        return super().kill()

    def restart(self, timeout: float = 90.0) -> None:
        """Clean stop, then start again on the same storage (topics and records survive)."""
        self.stop()
        self.start(timeout)

    # -- topics ---------------------------------------------------------------------------------------------------
    def create_topic(
        self, name: str, partitions: int = 2, config: Mapping[str, str] | None = None, exist_ok: bool = True
    ) -> bool:
        return create_topic(self.bootstrap_servers, name, partitions, config, exist_ok)

    def delete_topic(self, name: str) -> None:
        delete_topic(self.bootstrap_servers, name)

    def delete_records(self, topic: str, before: Mapping[int, int]) -> dict[int, int]:
        return delete_records(self.bootstrap_servers, topic, before)

    def offsets(self, topic: str) -> dict[int, tuple[int, int]]:
        return offsets(self.bootstrap_servers, topic)


def _accepts(port: int) -> bool:
    """Whether something accepts TCP connections on the port yet (cheap pre-check before the admin client)."""
    try:
        with socket.create_connection((HOST, port), timeout=0.5):
            return True
    except OSError:
        return False


# Quiet: warnings and errors only, plus the broker's "started"/"shut down" lines.
_LOG4J2 = """\
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
