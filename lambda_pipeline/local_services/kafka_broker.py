"""A real single-node Apache Kafka broker (KRaft, broker+controller in one JVM) on 127.0.0.1: its life cycle.

Local runs, the demo and the tests need a Kafka that behaves like production (retention,
log start offsets, message size limits), not a mock. The jars come from Maven Central through
``lambda_pipeline.local_services.maven`` on first use, so a machine with Java, Maven and network access needs
nothing else. Everything lives under one ``base_dir``: storage, config, log, pid and cluster id;
the pid file lets one process start the broker and another one query or stop it. What the broker is
configured with is in ``kafka_broker_config``; topics and offsets, on any cluster, in ``kafka_admin``.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from lambda_pipeline.core.errors import EnvironmentProblem
from lambda_pipeline.local_services.kafka_admin import (
    admin_client,
    create_topic,
    delete_records,
    delete_topic,
    offsets,
    wait_for_broker,
)
from lambda_pipeline.local_services.kafka_broker_config import (
    KAFKA_VERSION,
    LOG4J2_PROPERTIES,
    broker_coordinates,
    new_cluster_id,
    render_server_properties,
)
from lambda_pipeline.local_services.maven import resolve
from lambda_pipeline.local_services.process import HOST, ManagedProcess, free_port, port_in_use

if TYPE_CHECKING:
    from confluent_kafka.admin import AdminClient

__all__ = ["BrokerStatus", "KafkaBroker"]

FORMAT_TIMEOUT_SECONDS = 120.0
_POLL_SECONDS = 0.2


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
        cluster_id = self._state().get("cluster_id") or new_cluster_id()
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
        text = render_server_properties(self.port, controller_port, self.data_dir)
        self.server_properties.write_text(text, encoding="utf-8")
        (self.base_dir / "log4j2.properties").write_text(LOG4J2_PROPERTIES, encoding="utf-8")

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
            self._probe_admin = admin_client(self.bootstrap_servers, quiet=True)
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
