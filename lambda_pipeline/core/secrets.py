"""The policy that keeps credentials out of config files.

Config files are copied, committed and uploaded next to the jobs, so a credential written in one leaks.
Kafka credentials must be ``${env:NAME}`` references, read from the job's environment when the job starts;
S3 credentials never appear at all (the AWS default chain finds them). Errors about these values never
echo what was given (:func:`may_hold_credential`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

from lambda_pipeline.core.errors import ConfigError

__all__ = [
    "S3_CREDENTIALS_HINT",
    "kafka_options",
    "may_hold_credential",
    "refuse_s3_credential_keys",
    "resolve_env_references",
    "spark_conf_strings",
]

_ENV_REFERENCE = re.compile(r"\$\{env:([A-Za-z_][A-Za-z0-9_]*)\}")
# Kafka options that carry credentials: their value must come from the environment, never from a file.
_SECRET_OPTIONS = ("password", "secret", "jaas.config", "ssl.keystore.key")
# One option of a JAAS line: name=value, the value quoted or a bare token.
_JAAS_OPTION = re.compile(r"([A-Za-z_][\w.-]*)\s*=\s*(\"(?:[^\"\\]|\\.)*\"|[^\s;]+)")
_JAAS_SECRET_NAMES = ("password", "secret", "token", "credential")


def _literal_secret(key: str, text: str) -> str | None:
    """The part of Kafka option ``key`` that is a literal credential, or None when every credential is
    ``${env:NAME}`` (or the option carries none).

    A credential option (``ssl.key.password``, ...) must be one ``${env:NAME}`` and nothing else. A JAAS
    line (``sasl.jaas.config``) is read option by option: each option that names a credential (password,
    secret, token, ``...Key``) must be an ``${env:NAME}``; the rest of the line (the login module, a role
    ARN for MSK IAM) is not a secret.
    """
    if not any(marker in key for marker in _SECRET_OPTIONS):
        return None
    if not key.endswith("jaas.config"):
        return None if _ENV_REFERENCE.fullmatch(text.strip()) else key
    for name, value in _JAAS_OPTION.findall(text):
        lowered = name.lower()
        if any(word in lowered for word in _JAAS_SECRET_NAMES) or lowered.endswith("key"):
            inner = value[1:-1] if len(value) >= 2 and value[0] == value[-1] == '"' else value
            if not _ENV_REFERENCE.fullmatch(inner.strip()):
                return f"{key} ({name}=...)"
    return None


def kafka_options(value: Any) -> Any:
    """Kafka connector options as strings, without the ``kafka.`` prefix; a literal credential is refused."""
    if not isinstance(value, Mapping):
        return value
    out = {}
    for key, raw in value.items():
        key, text = str(key).removeprefix("kafka."), str(raw).lower() if isinstance(raw, bool) else str(raw)
        literal = _literal_secret(key, text)
        if literal is not None:
            raise ValueError(
                f"option {literal} holds a literal credential: write it as '${{env:NAME}}' (the whole "
                "value) and export NAME in the job's environment (or use an instance role with MSK IAM)"
            )
        out[key] = text
    return out


def resolve_env_references(options: Mapping[str, str]) -> dict[str, str]:
    """``options`` with every ``${env:NAME}`` replaced; a missing variable is a configuration error."""

    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in os.environ:
            raise ConfigError("environment", name, "is referenced by ingest.kafka.options but not set")
        return os.environ[name]

    return {key: _ENV_REFERENCE.sub(value, text) for key, text in options.items()}


_S3A_CREDENTIAL_CONF = re.compile(r"fs\.s3a\.(bucket\.[^.]+\.)?(access\.key|secret\.key|session\.token)$")
_S3_CREDENTIAL_KEYS = re.compile(r"access_?key|secret|session_?token|password", re.IGNORECASE)

S3_CREDENTIALS_HINT = (
    "credentials never go in a config file; export AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and "
    "AWS_SESSION_TOKEN) in the job's environment, or use an instance role, and leave s3.credentials_provider "
    "unset for the default AWS chain"
)


def spark_conf_strings(value: Any) -> Any:
    """Spark settings as strings (YAML booleans as Spark spells them), S3 credentials refused.

    Shared by ``spark.conf`` and ``emr.submit_conf``: a secret must not reach a file through either.
    """
    if isinstance(value, Mapping):
        for key in value:
            if _S3A_CREDENTIAL_CONF.search(str(key)):
                raise ValueError(f"{key!r} is an S3 credential: {S3_CREDENTIALS_HINT}")
        return {str(k): str(v).lower() if isinstance(v, bool) else str(v) for k, v in value.items()}
    return value


def refuse_s3_credential_keys(value: Any) -> Any:
    """The ``s3`` section as given, unless a key of it would hold a credential (``access_key``, ...)."""
    if isinstance(value, Mapping):
        for key in value:
            if _S3_CREDENTIAL_KEYS.search(str(key)):
                raise ValueError(f"s3.{key} would hold a credential: {S3_CREDENTIALS_HINT}")
    return value


def may_hold_credential(dotted_key: str) -> bool:
    """Whether the value at a config key may be a credential, so that an error about it must not echo it:
    Kafka options, the ``s3`` section, Spark settings."""
    return (
        ".options" in dotted_key or dotted_key.split(".")[0] == "s3" or dotted_key in ("spark.conf", "emr.submit_conf")
    )
