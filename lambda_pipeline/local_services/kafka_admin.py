"""Topic administration on any Kafka cluster: wait for a broker, create and delete topics, read offsets.

Module-level functions rather than broker methods, so that they work against any broker (the project's
own, a container's, MSK), not only one this project started. A cluster that does not answer becomes one
line naming it and how to check it, not librdkafka's error object.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from lambda_pipeline.core.errors import EnvironmentProblem, LambdaError

if TYPE_CHECKING:
    from confluent_kafka.admin import AdminClient

__all__ = [
    "admin_client",
    "create_topic",
    "delete_records",
    "delete_topic",
    "offsets",
    "wait_for_broker",
]

_POLL_SECONDS = 0.2


def admin_client(bootstrap_servers: str, quiet: bool = False) -> AdminClient:
    """An admin client that logs warnings and errors only (nothing at all while ``quiet``)."""
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
    admin = admin_client(bootstrap_servers, quiet=True)
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

    admin = admin_client(bootstrap_servers)
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

    admin = admin_client(bootstrap_servers)
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

    admin = admin_client(bootstrap_servers)
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

    admin = admin_client(bootstrap_servers)
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
