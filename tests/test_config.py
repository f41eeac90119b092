from __future__ import annotations

from pathlib import Path

import pytest

from lambda_pipeline.core.config_loader import DEFAULT_CONFIG, load_settings
from lambda_pipeline.core.durations import duration_seconds
from lambda_pipeline.core.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "conf.yaml"
    path.write_text(text)
    return path


def test_shipped_default_loads_with_its_values() -> None:
    settings = load_settings(DEFAULT_CONFIG)
    assert settings.spark.master == "local[2]"
    assert settings.tables.master == "master_events"
    assert duration_seconds(settings.ingest.dedup_horizon) == 15 * 60


def test_unknown_key_names_file_and_dotted_key(tmp_path: Path) -> None:
    path = write(tmp_path, "speed:\n  trigerr: 1 second\n")
    with pytest.raises(ConfigError) as err:
        load_settings(path)
    assert err.value.key == "speed.trigerr"
    assert str(path) in str(err.value) and "unknown key" in str(err.value)


def test_bad_duration_names_key_and_expected_form(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(write(tmp_path, "batch:\n  interval: soon\n"))
    assert err.value.key == "batch.interval"
    assert "expected a duration like" in str(err.value) and "'soon'" in str(err.value)


def test_bad_number_and_bad_table_name(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(write(tmp_path, "spark:\n  shuffle_partitions: 0\n"))
    assert err.value.key == "spark.shuffle_partitions"
    with pytest.raises(ConfigError) as err:
        load_settings(write(tmp_path, "tables:\n  master: 'drop table; x'\n"))
    assert err.value.key == "tables.master"


def test_overrides_apply_and_are_validated_like_the_file() -> None:
    settings = load_settings(None, ["ingest.trigger=3 seconds", "spark.conf.spark.sql.ansi.enabled=false"])
    assert settings.ingest.trigger == "3 seconds"
    assert settings.spark.conf == {"spark.sql.ansi.enabled": "false"}
    with pytest.raises(ConfigError) as err:
        load_settings(None, ["speed.nope=1"])
    assert err.value.key == "speed.nope" and err.value.source == str(DEFAULT_CONFIG)
    with pytest.raises(ConfigError) as err:
        load_settings(None, ["no-equals-sign"])
    assert err.value.source == "--set"


def test_missing_file_and_invalid_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        load_settings(tmp_path / "absent.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_settings(write(tmp_path, "speed: [unclosed\n"))


@pytest.mark.parametrize("key", ["speed.trigger", "speed.max_files_per_trigger"])
def test_the_keys_no_job_read_are_gone(key: str) -> None:
    with pytest.raises(ConfigError, match="unknown key"):
        load_settings(None, [f"{key}=1"])


@pytest.mark.parametrize(("text", "seconds"), [("500 ms", 0.5), ("1 second", 1), ("2 minutes", 120), ("1h", 3600)])
def test_durations(text: str, seconds: float) -> None:
    assert duration_seconds(text) == seconds


@pytest.mark.parametrize(
    "key, value",
    [
        (
            "sasl.jaas.config",
            'org.apache.kafka.common.security.scram.ScramLoginModule required username="u" password="hunter2";',
        ),
        ("sasl.jaas.config", 'x.ScramLoginModule required username="${env:USER}" password="hunter2";'),
        ("sasl.jaas.config", 'software.amazon.msk.auth.iam.IAMLoginModule required password="hunter2";'),
        ("sasl.jaas.config", 'a.PlainLoginModule required password=hunter2 comment="${env:X}";'),
        ("sasl.jaas.config", 'a.OAuthLoginModule required clientSecret="hunter2";'),
        ("ssl.key.password", "hunter2"),
        ("ssl.key.password", "hunter2${env:X}"),
        ("kafka.ssl.truststore.password", "${env:A} hunter2"),
        ("ssl.keystore.key", "-----BEGIN PRIVATE KEY-----hunter2"),
    ],
)
def test_kafka_literal_secrets_are_refused_whatever_else_the_value_holds(key: str, value: str) -> None:
    with pytest.raises(ConfigError) as refused:
        load_settings(None, [f"ingest.kafka.options={{{key!r}: {value!r}}}"])
    assert "hunter2" not in str(refused.value) and "literal credential" in str(refused.value)


@pytest.mark.parametrize(
    "key, value",
    [
        ("sasl.jaas.config", "${env:KAFKA_JAAS}"),
        ("sasl.jaas.config", "software.amazon.msk.auth.iam.IAMLoginModule required;"),
        ("sasl.jaas.config", 'x.ScramLoginModule required username="alice" password="${env:KAFKA_PASSWORD}";'),
        ("ssl.key.password", "${env:KEY_PASSWORD}"),
        ("ssl.keystore.location", "/etc/kafka/client.jks"),
    ],
)
def test_kafka_credentials_from_the_environment_are_accepted(key: str, value: str) -> None:
    settings = load_settings(None, [f"ingest.kafka.options={{{key!r}: {value!r}}}"])
    assert settings.ingest.kafka.options[key] == value
