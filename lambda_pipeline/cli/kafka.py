"""``lambda-pipeline kafka start|stop|status``: the project's local Kafka broker, from the command line.

The broker listens where the config says Kafka is (``ingest.kafka.bootstrap_servers``), keeps its
storage under ``<workdir>/kafka`` and outlives the command that started it, so ``ingest``, the
generator and a later ``kafka stop`` in other terminals all find it.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from lambda_pipeline.core.errors import ConfigError, EnvironmentProblem
from lambda_pipeline.core.locations import local_path

if TYPE_CHECKING:
    from lambda_pipeline.cli.context import Context
    from lambda_pipeline.local_services.kafka_broker import BrokerStatus, KafkaBroker

__all__ = ["add_kafka_parser", "local_port", "run_kafka"]

_LOOPBACK = ("127.0.0.1", "localhost")
_DEFAULT_PORT = 9092


def add_kafka_parser(verbs: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    """Register the ``kafka`` verb; the caller adds the common options (--config, --workdir, --set)."""
    kafka = verbs.add_parser(
        "kafka",
        help="start, stop or inspect a local single-node Kafka broker (KRaft) on 127.0.0.1; create the topic",
        description="A real Apache Kafka broker for local runs and the demo; jars come from Maven Central "
        "on first use. Storage: <workdir>/kafka. 'create-topic' creates ingest.kafka.topic with "
        "ingest.kafka.partitions on any cluster the config names (a container's broker, MSK), if it is missing.",
    )
    kafka.add_argument("action", choices=("start", "stop", "status", "create-topic"))
    kafka.add_argument(
        "--port",
        type=int,
        help="broker port when ingest.kafka.bootstrap_servers is not a single 127.0.0.1/localhost address",
    )
    kafka.add_argument("--timeout", type=float, default=90.0, help="seconds to wait for start or stop (default 90)")
    return kafka


def local_port(bootstrap_servers: str) -> int | None:
    """The port of a single loopback ``host:port``, else None (the config points at a remote cluster)."""
    servers = [s.strip() for s in bootstrap_servers.split(",") if s.strip()]
    if len(servers) != 1:
        return None
    host, _, port = servers[0].rpartition(":")
    return int(port) if host in _LOOPBACK and port.isdigit() else None


def _broker(ctx: Context, args: argparse.Namespace) -> KafkaBroker:
    from lambda_pipeline.local_services.kafka_broker import KafkaBroker

    workdir = local_path(ctx.locations.workdir)
    if workdir is None:
        raise EnvironmentProblem(
            f"the local Kafka broker keeps its storage on this machine, but the work directory is "
            f"{ctx.locations.workdir}; pass a local --workdir"
        )
    base_dir = f"{workdir}/kafka"
    servers = ctx.settings.ingest.kafka.bootstrap_servers
    configured = local_port(servers)
    if configured is not None:
        if args.port is not None and args.port != configured:
            raise ConfigError(
                "--port",
                None,
                f"{args.port} differs from ingest.kafka.bootstrap_servers={servers}, where the jobs would look for "
                f"Kafka; use --set ingest.kafka.bootstrap_servers=127.0.0.1:{args.port} instead",
            )
        return KafkaBroker(base_dir, port=configured)
    if args.port is not None:
        return KafkaBroker(base_dir, port=args.port)
    if args.action == "start":
        raise ConfigError(
            "--port",
            None,
            f"ingest.kafka.bootstrap_servers={servers} is not a single 127.0.0.1/localhost broker; pass --port to "
            "run a local broker anyway, or --set ingest.kafka.bootstrap_servers=127.0.0.1:9092",
        )
    return KafkaBroker(base_dir, port=_DEFAULT_PORT)  # stop/status: the pid file is what counts


def _describe(status: BrokerStatus) -> str:
    return (
        f"{status.bootstrap_servers}, pid {status.pid}, Kafka {status.version}, "
        f"storage {status.base_dir}, log {status.log_file}"
    )


def _create_topic(ctx: Context, args: argparse.Namespace) -> int:
    """The configured topic on the configured cluster: deployments whose broker the project did not start
    (the compose demo's init step) get the partitions the config asks for, not the broker's default."""
    from lambda_pipeline.local_services.kafka_admin import create_topic

    kafka = ctx.settings.ingest.kafka
    if kafka.topic is None:
        raise ConfigError("ingest.kafka.topic", None, "create-topic needs a topic; a subscribe_pattern names none")
    created = create_topic(kafka.bootstrap_servers, kafka.topic, partitions=kafka.partitions, timeout=args.timeout)
    state = f"created ({kafka.partitions} partitions)" if created else "exists"
    print(f"kafka: topic {kafka.topic!r} on {kafka.bootstrap_servers} {state}")
    return 0


def run_kafka(ctx: Context, args: argparse.Namespace) -> int:
    """Run one action; exit code 0 on success, and for ``status`` 0 running / 1 not running."""
    if args.action == "create-topic":
        return _create_topic(ctx, args)
    broker = _broker(ctx, args)
    if args.action == "status":
        status = broker.status()
        if status.running:
            print(f"kafka: running on {_describe(status)}")
            return 0
        print(f"kafka: not running (storage {status.base_dir}, log {status.log_file})")
        return 1
    if args.action == "stop":
        before = broker.status()
        if not before.running:
            print(f"kafka: not running (storage {before.base_dir})")
            return 0
        clean = broker.stop(timeout=args.timeout)
        how = "cleanly" if clean else f"after a kill: it did not shut down within {args.timeout:.0f}s"
        print(f"kafka: stopped pid {before.pid} {how}; storage kept in {before.base_dir}")
        return 0
    was_running = broker.status().running
    broker.start(timeout=args.timeout)
    kafka = ctx.settings.ingest.kafka
    topic = ""
    if kafka.topic is not None:
        created = broker.create_topic(kafka.topic, partitions=kafka.partitions)
        topic = f", topic {kafka.topic!r} " + (f"created ({kafka.partitions} partitions)" if created else "exists")
    state = "already running" if was_running else "listening"
    print(f"kafka: {state} on {_describe(broker.status())}{topic}")
    return 0
