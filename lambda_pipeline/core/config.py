"""Typed, strict configuration loaded from ``conf/*.yaml``.

Every job reads the same file, so a typo must stop all of them the same way:
unknown keys and bad values fail with the file, the dotted key and the form
that was expected. ``--set key=value`` overrides apply before validation, so
they are checked exactly like the file.
"""

from __future__ import annotations

import os
import re
import shlex
import sys
from collections.abc import Iterable, Mapping
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from lambda_pipeline.core.errors import ConfigError

if TYPE_CHECKING:
    if sys.version_info >= (3, 11):
        from importlib.resources.abc import Traversable
    else:
        from importlib.abc import Traversable

__all__ = [
    "CONFIG_PACKAGE",
    "DEFAULT_CONFIG",
    "ENVIRONMENT_VARIABLES",
    "BatchSettings",
    "EmrSettings",
    "EventTimePolicy",
    "GlueCatalogSettings",
    "IngestSettings",
    "KafkaSettings",
    "LeaseSettings",
    "S3Settings",
    "ServeSettings",
    "Settings",
    "SparkSettings",
    "SpeedSettings",
    "TableNames",
    "duration_seconds",
    "load_settings",
    "shipped_configs",
]

# The configs ship inside the package (the repository's conf/ folder, installed as lambda_pipeline.conf),
# so the default works from a checkout, an installed wheel and spark-submit's zip alike.
CONFIG_PACKAGE = "lambda_pipeline.conf"


def shipped_configs() -> Traversable:
    """The folder of the shipped ``*.yaml`` configs: a real folder, or a folder inside a zip."""
    try:
        return files(CONFIG_PACKAGE)
    except ModuleNotFoundError:  # the core alone from a source tree (the image's jar prefetch step)
        return Path(__file__).resolve().parents[2] / "conf"


DEFAULT_CONFIG = Path(str(shipped_configs().joinpath("local.yaml")))

# Every environment variable of the project's own that the code reads, and what it means. Containers and
# schedulers configure the jobs through the first three (load_settings); the command line still wins.
ENVIRONMENT_VARIABLES: dict[str, str] = {
    "LAMBDA_PIPELINE_CONFIG": "config file used when --config is not given",
    "LAMBDA_PIPELINE_WORKDIR": "work directory used when --workdir is not given (replaces the config's 'workdir')",
    "LAMBDA_PIPELINE_SET": "KEY=VALUE overrides separated by spaces (shell quoting), validated like --set, "
    "applied before the --set options",
    "LAMBDA_PIPELINE_CACHE": "cache of resolved jar paths and fetched jars (default ~/.cache/lambda-pipeline)",
    "LAMBDA_PIPELINE_VERBOSE": "1 shows everything: Ivy's resolution report, Spark's start-up log lines and "
    "PySpark's error logs (like --verbose)",
    "LAMBDA_PIPELINE_MAVEN_REPO": "Maven repository of the jars fetched directly (default Maven Central)",
    "LAMBDA_PIPELINE_SERVE_TOKEN": "token of the query server (serve.token_env's default name): required beyond "
    "loopback, sent by the client and by 'query' through a running server",
}

_DURATION = re.compile(
    r"^\s*(\d+(?:\.\d+)?)\s*(ms|milliseconds?|s|secs?|seconds?|m|mins?|minutes?|h|hours?)\s*$",
    re.IGNORECASE,
)
_UNIT_SECONDS = {"ms": 0.001, "mi": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def duration_seconds(text: str) -> float:
    """Seconds in a duration such as ``"500 ms"``, ``"1 second"`` or ``"5 minutes"``."""
    match = _DURATION.match(str(text))
    if not match:
        raise ValueError(f"expected a duration like '1 second', '500 ms' or '5 minutes', got {text!r}")
    number, unit = float(match.group(1)), match.group(2).lower()
    key = "mi" if unit.startswith("milli") else ("ms" if unit == "ms" else unit[0])
    return number * _UNIT_SECONDS[key]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_duration(value: str) -> str:
    if duration_seconds(value) <= 0:
        raise ValueError(f"expected a positive duration, got {value!r}")
    return value


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


_ENV_REF = re.compile(r"\$\{env:([A-Za-z_][A-Za-z0-9_]*)\}")
# Kafka options that carry credentials: their value must come from the environment, never from a file.
_SECRET_OPTIONS = ("password", "secret", "jaas.config", "ssl.keystore.key")
# One option of a JAAS line: name=value, the value quoted or a bare token.
_JAAS_OPTION = re.compile(r"([A-Za-z_][\w.-]*)\s*=\s*(\"(?:[^\"\\]|\\.)*\"|[^\s;]+)")
_JAAS_SECRET_NAMES = ("password", "secret", "token", "credential")


def _literal_secret(key: str, text: str) -> str | None:
    """The part of a Kafka option that is a literal credential, or None when every credential is ``${env:NAME}``.

    A credential option (``ssl.key.password``, ...) must be one ``${env:NAME}`` and nothing else. A JAAS
    line (``sasl.jaas.config``) is read option by option: each option that names a credential (password,
    secret, token, ``...Key``) must be an ``${env:NAME}``; the rest of the line (the login module, a role
    ARN for MSK IAM) is not a secret.
    """
    if not key.endswith("jaas.config"):
        return None if _ENV_REF.fullmatch(text.strip()) else key
    for name, value in _JAAS_OPTION.findall(text):
        lowered = name.lower()
        if any(word in lowered for word in _JAAS_SECRET_NAMES) or lowered.endswith("key"):
            inner = value[1:-1] if len(value) >= 2 and value[0] == value[-1] == '"' else value
            if not _ENV_REF.fullmatch(inner.strip()):
                return f"{key} ({name}=...)"
    return None


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
        if not isinstance(value, Mapping):
            return value
        out = {}
        for key, raw in value.items():
            key, text = str(key).removeprefix("kafka."), str(raw).lower() if isinstance(raw, bool) else str(raw)
            literal = _literal_secret(key, text) if any(m in key for m in _SECRET_OPTIONS) else None
            if literal is not None:
                raise ValueError(
                    f"option {literal} holds a literal credential: write it as '${{env:NAME}}' (the whole "
                    "value) and export NAME in the job's environment (or use an instance role with MSK IAM)"
                )
            out[key] = text
        return out

    @model_validator(mode="after")
    def _one_subscription(self) -> KafkaSettings:
        if (self.topic is None) == (self.subscribe_pattern is None):
            raise ValueError("set exactly one of ingest.kafka.topic and ingest.kafka.subscribe_pattern")
        return self

    def resolved_options(self) -> dict[str, str]:
        """``options`` with every ``${env:NAME}`` replaced; a missing variable is a configuration error."""
        import os

        def value(match: re.Match[str]) -> str:
            name = match.group(1)
            if name not in os.environ:
                raise ConfigError("environment", name, "is referenced by ingest.kafka.options but not set")
            return os.environ[name]

        return {key: _ENV_REF.sub(value, text) for key, text in self.options.items()}


class EventTimePolicy(_Strict):
    """Which event times are plausible. Late events inside the bounds are accepted: the batch layer
    recomputes them exactly. Outside, the event is quarantined with the reason ``event_time_out_of_range``."""

    max_future: str = "1 hour"
    earliest: str = "2000-01-01T00:00:00Z"
    _durations = field_validator("max_future")(_check_duration)


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
    _durations = field_validator("trigger", "dedup_horizon")(_check_duration)


class SpeedSettings(_Strict):
    """The speed partials are written by ingest's micro-batches (the one hop): no speed stream runs."""

    trigger: str = Field(default="1 second", description="unused since the one hop; accepted so old configs load")
    max_files_per_trigger: int = Field(default=1000, gt=0, description="unused since the one hop")
    compact_every: int = Field(
        default=50, ge=0, description="OPTIMIZE speed tables of the old unpartitioned layout every N micro-batches"
    )
    _durations = field_validator("trigger")(_check_duration)


class BatchSettings(_Strict):
    interval: str = "5 minutes"
    _durations = field_validator("interval")(_check_duration)


MIN_RETENTION_SECONDS = 3600.0


class MaintenanceSettings(_Strict):
    """``lambda-pipeline maintain``: compaction and vacuum of every table (docs/operations.md, "Maintenance")."""

    interval: str = Field(default="1 hour", description="for 'maintain --every' and the compose service")
    retention: str = Field(
        default="168 hours",
        description="VACUUM deletes files removed longer ago than this: it must outlast any batch run and query",
    )
    compact_min_files: int = Field(default=16, gt=1, description="compact a table once it has this many files")
    compact_target_mb: int = Field(
        default=128,
        gt=0,
        description="compaction writes files of up to this size and leaves larger ones alone: each run rewrites "
        "the small files and at most one such file of older data",
    )
    ingest_compact_every: str = Field(
        default="5 minutes",
        description="a running ingest compacts master and quarantine this often (its micro-batch waits for it, "
        "about 1 s per 30 MB written since on 2 cores); it vacuums them every interval",
    )
    _durations = field_validator("interval", "retention", "ingest_compact_every")(_check_duration)

    def table_defaults(self) -> dict[str, str]:
        """Spark settings that give every table this job creates the retention as its own Delta retentions.

        ``deletedFileRetentionDuration``: a plain VACUUM (without RETAIN) keeps what ``maintain`` keeps.
        ``logRetentionDuration``: the log keeps the versions a pin or ``--as-of`` may read, and no more
        (Delta's default is 30 days, whatever the files' retention).
        """
        interval = f"interval {int(duration_seconds(self.retention))} seconds"
        prefix = "spark.databricks.delta.properties.defaults."
        return {f"{prefix}deletedFileRetentionDuration": interval, f"{prefix}logRetentionDuration": interval}

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
    _durations = field_validator("queue_wait", "query_timeout")(_check_duration)


class SparkSettings(_Strict):
    master: str = "local[2]"
    app_name: str = "lambda-pipeline"
    shuffle_partitions: int = Field(default=2, gt=0)
    log_level: Literal["ERROR", "WARN", "INFO", "DEBUG"] = "WARN"
    conf: dict[str, str] = Field(default_factory=dict)

    @field_validator("conf", mode="before")
    @classmethod
    def _stringify(cls, value: Any) -> Any:
        return _spark_conf_values(value)


# S3 credentials must never be written in a config file; the AWS default chain finds them instead.
_S3A_CREDENTIAL_CONF = re.compile(r"fs\.s3a\.(bucket\.[^.]+\.)?(access\.key|secret\.key|session\.token)$")
_S3_CREDENTIAL_KEYS = re.compile(r"access_?key|secret|session_?token|password", re.IGNORECASE)
_S3_CREDENTIALS_HINT = (
    "credentials never go in a config file; export AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and "
    "AWS_SESSION_TOKEN) in the job's environment, or use an instance role, and leave s3.credentials_provider "
    "unset for the default AWS chain"
)


def _spark_conf_values(value: Any) -> Any:
    """Spark settings as strings (YAML booleans as Spark spells them), S3 credentials refused.

    Shared by ``spark.conf`` and ``emr.submit_conf``: a secret must not reach a file through either.
    """
    if isinstance(value, Mapping):
        for key in value:
            if _S3A_CREDENTIAL_CONF.search(str(key)):
                raise ValueError(f"{key!r} is an S3 credential: {_S3_CREDENTIALS_HINT}")
        return {str(k): str(v).lower() if isinstance(v, bool) else str(v) for k, v in value.items()}
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
        if isinstance(value, Mapping):
            for key in value:
                if _S3_CREDENTIAL_KEYS.search(str(key)):
                    raise ValueError(f"s3.{key} would hold a credential: {_S3_CREDENTIALS_HINT}")
        return value

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
        description="steps EMR runs at once (ingest, batch and maintain run all along, plus one-shot steps)",
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
        return _spark_conf_values(value)


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


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any, source: str) -> None:
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(source, dotted, f"'{part}' is a value, not a section")
        node = child
    node[parts[-1]] = value


def _parse_override(text: str) -> tuple[str, Any]:
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError("--set", text, "expected KEY=VALUE, for example --set speed.trigger='2 seconds'")
    # spark.conf keys contain dots themselves: everything after 'spark.conf.' is one key.
    return key.strip(), yaml.safe_load(raw) if raw.strip() else ""


def _config_text(file: Path) -> str | None:
    """The text of a config file, or None. The embedded default is read as a resource when the code runs
    from a zip (spark-submit --py-files), where it has no real path on disk."""
    if file.is_file():
        return file.read_text(encoding="utf-8")
    if file == DEFAULT_CONFIG:
        resource = shipped_configs().joinpath(DEFAULT_CONFIG.name)
        if resource.is_file():
            return resource.read_text(encoding="utf-8")
    return None


def _env_source(variable: str) -> str:
    return f"environment variable {variable}"


def _environment_overrides(environ: Mapping[str, str]) -> list[tuple[str, str, Any]]:
    """``(variable, dotted key, value)`` from LAMBDA_PIPELINE_WORKDIR, then LAMBDA_PIPELINE_SET.

    One variable holds all the overrides, shell-quoted like a command line, so a compose file or a scheduler
    sets any key without the project having to name a variable per key.
    """
    out: list[tuple[str, str, Any]] = []
    workdir = environ.get("LAMBDA_PIPELINE_WORKDIR", "").strip()
    if workdir:
        out.append(("LAMBDA_PIPELINE_WORKDIR", "workdir", workdir))  # a path, never YAML-typed
    variable = "LAMBDA_PIPELINE_SET"
    try:
        words = shlex.split(environ.get("LAMBDA_PIPELINE_SET", ""))
    except ValueError as exc:
        raise ConfigError(
            _env_source(variable), None, f"not valid shell-style words ({exc}); quote values that hold spaces"
        ) from None
    for word in words:
        try:
            key, value = _parse_override(word)
        except ConfigError:
            raise ConfigError(
                _env_source(variable),
                word,
                "expected KEY=VALUE pairs separated by spaces, e.g. "
                "\"spark.master=spark://spark-master:7077 speed.trigger='2 seconds'\"",
            ) from None
        out.append((variable, key, value))
    return out


def _apply_override(tree: dict[str, Any], key: str, value: Any, source: str) -> None:
    if key.startswith("spark.conf."):
        tree.setdefault("spark", {}).setdefault("conf", {})[key[len("spark.conf.") :]] = value
    else:
        _set_dotted(tree, key, value, source)


def _blame(source: str, key: str | None, from_env: Mapping[str, str]) -> str:
    """Name the environment variable that set a failing key: the file does not hold the bad value."""
    for set_key, variable in from_env.items():
        if key is not None and (key == set_key or set_key.startswith(f"{key}.") or key.startswith(f"{set_key}.")):
            return f"{_env_source(variable)} (over {source})"
    return source


def load_settings(
    path: str | Path | None = None, overrides: Iterable[str] = (), environ: Mapping[str, str] | None = None
) -> Settings:
    """Load and validate a config file, then apply the environment's overrides and ``KEY=VALUE`` overrides.

    ``environ`` (default: this process's environment) supplies the variables of ENVIRONMENT_VARIABLES: the
    config file when ``path`` is None, the work directory and overrides. ``overrides`` (--set) apply last.
    """
    environ = os.environ if environ is None else environ
    configured = environ.get("LAMBDA_PIPELINE_CONFIG", "").strip() if path is None else ""
    file = Path(path) if path is not None else Path(configured) if configured else DEFAULT_CONFIG
    source = str(file)
    text = _config_text(file)
    if text is None:
        if configured:
            raise ConfigError(
                f"{source} (from {_env_source('LAMBDA_PIPELINE_CONFIG')})",
                None,
                "file not found; set LAMBDA_PIPELINE_CONFIG to the path of a YAML config file, or pass --config",
            )
        raise ConfigError(source, None, "file not found; pass --config with the path of a YAML config file")
    try:
        tree = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(source, None, f"not valid YAML: {exc}") from None
    if not isinstance(tree, dict):
        raise ConfigError(source, None, "expected a mapping of sections at the top level")
    from_env: dict[str, str] = {}
    for variable, key, value in _environment_overrides(environ):
        _apply_override(tree, key, value, _env_source(variable))
        from_env[key] = variable
    for text in overrides:
        key, value = _parse_override(text)
        _apply_override(tree, key, value, "--set")
        from_env.pop(key, None)
    try:
        return Settings.model_validate(tree)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"]) or None
        if first["type"] == "extra_forbidden":
            message = "unknown key; check its spelling against conf/local.yaml"
        else:
            message = first["msg"].removeprefix("Value error, ")
            # Never echo what was given for Kafka options, S3 or Spark settings: it may be a credential.
            secret = loc is not None and (
                ".options" in loc or loc.split(".")[0] == "s3" or loc in ("spark.conf", "emr.submit_conf")
            )
            # A check across keys (loc empty) names its keys in its message: its input is the whole config.
            if loc and "input" in first and first["type"] != "missing" and "got " not in message and not secret:
                message += f" (got {first['input']!r})"
        raise ConfigError(_blame(source, loc, from_env), loc, message) from None
