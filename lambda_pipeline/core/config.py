"""The settings of a deployment: typed, strict pydantic models, one per section of ``conf/*.yaml``.

Every job reads the same file, so a typo must stop all of them the same way: unknown keys are refused
(``extra="forbid"``) and each value is checked here, where its meaning is. Loading a file, the environment
and ``--set`` is :mod:`lambda_pipeline.core.config_loader`'s.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from lambda_pipeline.core.clock import as_utc, utc_now
from lambda_pipeline.core.durations import duration_seconds, positive_duration
from lambda_pipeline.core.pinned import PINNED_SESSION
from lambda_pipeline.core.secrets import (
    kafka_options,
    refuse_s3_credential_keys,
    resolve_env_references,
    spark_conf_strings,
)

__all__ = [
    "BatchSettings",
    "EmrSettings",
    "EventTimePolicy",
    "GlueCatalogSettings",
    "IngestSettings",
    "KafkaSettings",
    "LeaseSettings",
    "MaintenanceSettings",
    "S3Settings",
    "ServeSettings",
    "Settings",
    "SparkSettings",
    "SpeedSettings",
    "TableNames",
]

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TableNames(_Strict):
    """Names of the tables; each one is also its folder under the warehouse."""

    master: str = "master_events"
    quarantine: str = "quarantine"
    coverage: str = "coverage"

    @field_validator("master", "quarantine", "coverage")
    @classmethod
    def _identifier(cls, value: str) -> str:
        if not _IDENTIFIER.match(value):
            raise ValueError(f"expected an identifier of letters, digits and '_', got {value!r}")
        return value


class KafkaSettings(_Strict):
    """The Kafka source of the ingest job (Spark's ``kafka`` connector) and its producers.

    ``options`` are passed through to the connector as ``kafka.<name>`` (SASL/SSL, MSK IAM, timeouts).
    A value may be ``${env:NAME}``, read from the environment when the job starts; credentials
    must be given that way, so that no secret is ever written in a config file.
    """

    bootstrap_servers: str = "127.0.0.1:9092"
    topic: str | None = "clickstream"
    subscribe_pattern: str | None = None
    partitions: int = Field(default=2, gt=0, description="partitions of the topic when the project creates it")
    starting_offsets: Literal["earliest", "latest"] = "earliest"
    max_offsets_per_trigger: int | None = Field(
        default=200_000,
        gt=0,
        description="messages per micro-batch at most: bounds a micro-batch while a backlog drains (docs/kafka.md)",
    )
    min_partitions: int | None = Field(default=None, gt=0)
    max_message_bytes: int = Field(default=65_536, gt=0, description="larger messages are quarantined whole")
    fail_on_data_loss: bool = True
    options: dict[str, str] = Field(default_factory=dict)

    @field_validator("bootstrap_servers")
    @classmethod
    def _servers(cls, value: str) -> str:
        for server in value.split(","):
            host, sep, port = server.strip().rpartition(":")
            if not sep or not host or not port.isdigit():
                raise ValueError(f"expected host:port[,host:port...], got {value!r}")
        return value

    @field_validator("options", mode="before")
    @classmethod
    def _option_values(cls, value: Any) -> Any:
        return kafka_options(value)

    @model_validator(mode="after")
    def _one_subscription(self) -> KafkaSettings:
        if (self.topic is None) == (self.subscribe_pattern is None):
            raise ValueError("set exactly one of ingest.kafka.topic and ingest.kafka.subscribe_pattern")
        return self

    def resolved_options(self) -> dict[str, str]:
        """``options`` with every ``${env:NAME}`` replaced; a missing variable is a configuration error."""
        return resolve_env_references(self.options)


class EventTimePolicy(_Strict):
    """Which event times are plausible. Late events inside the bounds are accepted: the batch layer
    recomputes them exactly. Outside, the event is quarantined with the reason ``event_time_out_of_range``."""

    max_future: str = "1 hour"
    earliest: str = "2000-01-01T00:00:00Z"
    _durations = field_validator("max_future")(positive_duration)


class IngestSettings(_Strict):
    source: Literal["files", "kafka"] = "files"
    landing_dir: str = "landing"
    landing_cleanup: Literal["archive", "delete", "off"] = Field(
        default="archive",
        description="what becomes of a landing file once the micro-batch that read it has committed",
    )
    landing_archive: str = Field(default="landing-archive", description="where 'archive' moves them, under workdir")
    trigger: str = "1 second"
    max_files_per_trigger: int = Field(default=100, gt=0)
    dedup_horizon: str = "15 minutes"
    keep_raw: bool = Field(
        default=True,
        description="master keeps each event's raw text, for 'refresh --backfill' (about 60% of master's bytes)",
    )
    event_time: EventTimePolicy = Field(default_factory=EventTimePolicy)
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    _durations = field_validator("trigger", "dedup_horizon")(positive_duration)


class SpeedSettings(_Strict):
    """The speed partials are written by ingest's micro-batches (the one hop): no speed stream runs."""

    compact_every: int = Field(
        default=50, ge=0, description="OPTIMIZE speed tables of the old unpartitioned layout every N micro-batches"
    )


class BatchSettings(_Strict):
    interval: str = "5 minutes"
    _durations = field_validator("interval")(positive_duration)


MIN_RETENTION_SECONDS = 3600.0


class MaintenanceSettings(_Strict):
    """Compaction and vacuum of every table, by the job that writes it or by ``maintain`` (docs/operations.md)."""

    interval: str = Field(default="1 hour", description="how often ingest and batch maintain their tables")
    retention: str = Field(default="168 hours", description="VACUUM deletes files removed longer ago than this")
    compact_min_files: int = Field(default=16, gt=1, description="compact a table once it has this many files")
    compact_target_mb: int = Field(
        default=128,
        gt=0,
        description="compaction writes files of up to this size and rewrites only files under a quarter of it: "
        "each run rewrites what the micro-batches wrote since the last one",
    )
    ingest_compact_every: str = Field(
        default="5 minutes",
        description="a running ingest compacts master and quarantine this often (its micro-batch waits for it, "
        "about 1 s per 30 MB written since on 2 cores); it vacuums them every interval",
    )
    log_checkpoint_interval: int = Field(default=10, ge=1, le=1000, description="a log checkpoint every N commits")
    _durations = field_validator("interval", "retention", "ingest_compact_every")(positive_duration)

    def outlived(self, when: datetime) -> bool:
        """Whether ``when`` is older than the retention: files removed from a table since then may already be
        vacuumed away. Compared in UTC; a naive ``when`` is read as local time (core/clock.py)."""
        return (utc_now() - as_utc(when)).total_seconds() >= duration_seconds(self.retention)

    def log_properties(self) -> dict[str, str]:
        """Every table's Delta retentions and log upkeep (why they are safe: ``core/compact_vacuum.py``)."""
        interval = f"interval {int(duration_seconds(self.retention))} seconds"
        log = {"logRetentionDuration": interval, "deletedFileRetentionDuration": interval}  # Delta: log's >= files'
        log.update(checkpointInterval=str(self.log_checkpoint_interval), enableExpiredLogCleanup="true")
        return {f"delta.{key}": value for key, value in log.items()}

    def table_defaults(self) -> dict[str, str]:
        """Spark settings that give every table this job creates the :meth:`log_properties`."""
        return {"spark.databricks.delta.properties.defaults." + k[6:]: v for k, v in self.log_properties().items()}

    @field_validator("retention")
    @classmethod
    def _long_enough(cls, value: str) -> str:
        if duration_seconds(value) < MIN_RETENTION_SECONDS:
            raise ValueError(
                "must be at least 1 hour: a batch run, a query or a pin may still read a file removed more "
                "recently than the retention, and VACUUM would delete it"
            )
        return value


MIN_LEASE_TTL_SECONDS = 1.0


class LeaseSettings(_Strict):
    """The leases that keep one live instance per job (docs/operations.md, "Guards")."""

    ttl: str = Field(
        default="60 seconds",
        description="a holder renews every ttl/4 and stops committing once its last renewal is ttl/2 old; "
        "another host takes a lease over once it saw the record unchanged for ttl on its own clock",
    )
    host_id: str | None = Field(
        default=None,
        description="this machine's name in lease records (default: its hostname); processes that share one "
        "may take a dead holder's lease over at once, others wait ttl",
    )

    @field_validator("ttl")
    @classmethod
    def _long_enough(cls, value: str) -> str:
        if duration_seconds(value) < MIN_LEASE_TTL_SECONDS:
            raise ValueError(f"expected a duration of at least 1 second, got {value!r}")
        return value

    @field_validator("host_id")
    @classmethod
    def _plain_name(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}", value):
            raise ValueError(f"expected a host name (letters, digits, '.', '_', ':', '-'), got {value!r}")
        return value


class ServeSettings(_Strict):
    """The warm query server (``lambda-pipeline serve``): where it listens and what one query may take."""

    host: str = Field(default="127.0.0.1", description="any address but loopback requires a token")
    port: int = Field(default=8765, ge=0, le=65535, description="0: any free port")
    token_env: str = Field(default="LAMBDA_PIPELINE_SERVE_TOKEN", description="environment variable of the token")
    max_concurrent: int = Field(default=4, gt=0, description="queries running at once; more wait, then get 503")
    queue_wait: str = Field(default="10 seconds", description="how long a query waits for a free slot")
    max_rows: int = Field(default=100_000, gt=0, description="rows of one answer at most (it says when it is cut)")
    query_timeout: str = Field(default="60 seconds", description="a query running longer is cancelled (504)")
    _durations = field_validator("queue_wait", "query_timeout")(positive_duration)


class SparkSettings(_Strict):
    master: str = "local[2]"
    app_name: str = "lambda-pipeline"
    shuffle_partitions: int = Field(default=2, gt=0)
    log_level: Literal["ERROR", "WARN", "INFO", "DEBUG"] = "WARN"
    conf: dict[str, str] = Field(default_factory=dict)

    @field_validator("conf", mode="before")
    @classmethod
    def _stringify(cls, value: Any) -> Any:
        return spark_conf_strings(value)

    @field_validator("conf")
    @classmethod
    def _not_pinned(cls, value: dict[str, str]) -> dict[str, str]:
        pinned = sorted(key for key in value if key in PINNED_SESSION and value[key] != PINNED_SESSION[key])
        if pinned:
            fixed = ", ".join(f"{key}={PINNED_SESSION[key]}" for key in pinned)
            raise ValueError(
                f"{', '.join(pinned)} cannot be changed: the project pins {fixed} so that a view's expressions give "
                "the same answer in every layer (docs/your-own-pipeline.md)"
            )
        return value


_ENDPOINT = re.compile(r"^(?:(https?)://)?([A-Za-z0-9.-]+|\[[0-9A-Fa-f:]+\])(?::(\d{1,5}))?/?$")


class S3Settings(_Strict):
    """How ``s3a://`` locations reach S3 (hadoop-aws): AWS itself, or an S3-compatible server.

    Mapped to ``fs.s3a.*`` by :meth:`hadoop_conf`, the only place that knows those names. Credentials
    come from the AWS default chain (environment variables, instance or container role), never from here.
    """

    endpoint: str | None = Field(default=None, description="None: AWS; else e.g. http://127.0.0.1:9000")
    region: str | None = Field(default=None, description="None: us-east-1 with an endpoint, else S3A's discovery")
    path_style_access: bool = False
    ssl: bool | None = Field(default=None, description="None: from the endpoint's scheme (https if none)")
    credentials_provider: str | None = Field(
        default=None, description="AWS credentials provider class(es), comma-separated; None: the default chain"
    )

    @model_validator(mode="before")
    @classmethod
    def _no_credentials(cls, value: Any) -> Any:
        return refuse_s3_credential_keys(value)

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, value: str | None) -> str | None:
        if value is not None and not _ENDPOINT.match(value.strip()):
            raise ValueError(
                f"expected an endpoint like 'http://127.0.0.1:9000' or 's3.eu-west-1.amazonaws.com', got {value!r}"
            )
        return value.strip().rstrip("/") if value is not None else None

    @field_validator("credentials_provider")
    @classmethod
    def _provider(cls, value: str | None) -> str | None:
        if value is not None and not all(re.fullmatch(r"[A-Za-z_$][\w$.]*", c.strip()) for c in value.split(",")):
            raise ValueError(f"expected Java class names separated by commas, got {value!r}")
        return value

    @model_validator(mode="after")
    def _ssl_matches_endpoint(self) -> S3Settings:
        scheme = _ENDPOINT.match(self.endpoint).group(1) if self.endpoint else None  # type: ignore[union-attr]
        if scheme is not None and self.ssl is not None and self.ssl != (scheme == "https"):
            raise ValueError(f"s3.ssl={str(self.ssl).lower()} contradicts the endpoint's scheme {scheme}://; drop one")
        return self

    @property
    def use_ssl(self) -> bool:
        if self.ssl is not None:
            return self.ssl
        scheme = _ENDPOINT.match(self.endpoint).group(1) if self.endpoint else None  # type: ignore[union-attr]
        return scheme != "http"

    def hadoop_conf(self, bucket: str | None = None) -> dict[str, str]:
        """The ``fs.s3a.*`` settings; with ``bucket``, the per-bucket form that applies to that bucket only."""
        prefix = f"fs.s3a.bucket.{bucket}." if bucket else "fs.s3a."
        conf = {
            "path.style.access": str(self.path_style_access).lower(),
            "connection.ssl.enabled": str(self.use_ssl).lower(),
        }
        if self.endpoint is not None:
            conf["endpoint"] = self.endpoint
            # The SDK transfer manager's uploads fail on the local server ("100 Continue"): S3A's own output instead.
            conf["optimized.copy.from.local.enabled"] = "false"
        region = self.region or ("us-east-1" if self.endpoint is not None else None)
        if region is not None:
            conf["endpoint.region"] = region
        if self.credentials_provider is not None:
            conf["aws.credentials.provider"] = ",".join(c.strip() for c in self.credentials_provider.split(","))
        return {prefix + key: value for key, value in conf.items()}

    def spark_conf(self) -> dict[str, str]:
        """:meth:`hadoop_conf` as Spark settings (``spark.hadoop.`` copies them into every Hadoop configuration)."""
        return {f"spark.hadoop.{key}": value for key, value in self.hadoop_conf().items()}


_S3_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_EMR_RELEASE = re.compile(r"^emr-\d+\.\d+\.\d+(-[A-Za-z0-9.-]+)?$")


class GlueCatalogSettings(_Strict):
    """AWS Glue Data Catalog as Spark's metastore on EMR: the tables become visible to Athena and others."""

    enabled: bool = False
    database: str = "lambda_pipeline"

    @field_validator("database")
    @classmethod
    def _identifier(cls, value: str) -> str:
        if not _IDENTIFIER.match(value):
            raise ValueError(f"expected a database name of letters, digits and '_', got {value!r}")
        return value


class EmrSettings(_Strict):
    """Deployment on Amazon EMR, read by ``lambda-pipeline emr-steps`` only (the jobs ignore it).

    ``bucket`` holds the work directory (when ``workdir`` is relative) and the uploaded artifact; it is
    optional here so that local configs stay valid, and the step generator refuses to run without it.
    ``submit_conf`` goes to spark-submit as ``--conf``: YARN and memory settings must be known before
    the JVM starts, unlike ``spark.conf``, which the session factory applies in the driver.
    """

    bucket: str | None = None
    artifact_prefix: str = "artifacts/lambda-pipeline"
    log_prefix: str = "logs/emr"
    release_label: str | None = None
    step_concurrency: int = Field(
        default=4,
        ge=1,
        le=256,
        description="steps EMR runs at once (ingest and batch run all along, plus one-shot steps)",
    )
    batch_trigger: Literal["every", "schedule"] = "every"
    python: str | None = None
    submit_conf: dict[str, str] = Field(default_factory=dict)
    spark_submit_args: list[str] = Field(default_factory=list)
    glue: GlueCatalogSettings = Field(default_factory=GlueCatalogSettings)

    @field_validator("bucket")
    @classmethod
    def _bucket(cls, value: str | None) -> str | None:
        if value is not None and not _S3_BUCKET.match(value):
            raise ValueError(f"expected an S3 bucket name (lower-case, no 's3://', no '/'), got {value!r}")
        return value

    @field_validator("artifact_prefix", "log_prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        if "://" in value or not value.strip("/"):
            raise ValueError(f"expected a key prefix inside the bucket, like 'artifacts/lambda', got {value!r}")
        return value.strip("/")

    @field_validator("release_label")
    @classmethod
    def _release(cls, value: str | None) -> str | None:
        if value is not None and not _EMR_RELEASE.match(value):
            raise ValueError(f"expected an EMR release label like 'emr-7.10.0', got {value!r}")
        return value

    @field_validator("submit_conf", mode="before")
    @classmethod
    def _stringify(cls, value: Any) -> Any:
        return spark_conf_strings(value)


class Settings(_Strict):
    """The whole configuration of a deployment."""

    pipeline: str = "clickstream"
    workdir: str = "lambda-work"
    warehouse: str = "warehouse"
    checkpoints: str = "checkpoints"
    # Replay detection on every streaming append (OnceAppender). Switch off only for the crash tests' control
    # run, which must show that without them a replayed micro-batch is written twice.
    idempotent_writes: bool = True
    tables: TableNames = Field(default_factory=TableNames)
    ingest: IngestSettings = Field(default_factory=IngestSettings)
    speed: SpeedSettings = Field(default_factory=SpeedSettings)
    batch: BatchSettings = Field(default_factory=BatchSettings)
    spark: SparkSettings = Field(default_factory=SparkSettings)
    emr: EmrSettings = Field(default_factory=EmrSettings)
    s3: S3Settings = Field(default_factory=S3Settings)
    serve: ServeSettings = Field(default_factory=ServeSettings)
    maintenance: MaintenanceSettings = Field(default_factory=MaintenanceSettings)
    lease: LeaseSettings = Field(default_factory=LeaseSettings)

    @model_validator(mode="after")
    def _retention_outlasts_queries(self) -> Settings:
        retention, timeout = duration_seconds(self.maintenance.retention), duration_seconds(self.serve.query_timeout)
        if retention <= timeout:
            raise ValueError(
                f"maintenance.retention ({self.maintenance.retention}) must be longer than serve.query_timeout "
                f"({self.serve.query_timeout}): a running query reads files that VACUUM would delete"
            )
        return self
