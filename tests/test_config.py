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
    settings = load_settings(None, ["ingest.trigger=3 seconds", "spark.conf.spark.sql.adaptive.enabled=false"])
    assert settings.ingest.trigger == "3 seconds"
    assert settings.spark.conf == {"spark.sql.adaptive.enabled": "false"}
    with pytest.raises(ConfigError) as err:
        load_settings(None, ["speed.nope=1"])
    assert err.value.key == "speed.nope" and err.value.source == "--set"
    with pytest.raises(ConfigError) as err:
        load_settings(None, ["no-equals-sign"])
    assert err.value.source == "--set"


@pytest.mark.parametrize(
    ("override", "key", "expected"),
    [
        ("ingest.trigger=soon", "ingest.trigger", "expected a duration like '1 second', '500 ms' or '5 minutes'"),
        ("serve.port=99999", "serve.port", "less than or equal to 65535 (got 99999)"),
        ("ingest.kafka.topic=null", "ingest.kafka", "set exactly one of ingest.kafka.topic and"),
        ("serve.prot=1", "serve.prot", "unknown key (did you mean 'port'?)"),
    ],
)
def test_a_bad_set_value_is_blamed_on_set_not_on_the_file(override: str, key: str, expected: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(DEFAULT_CONFIG, ["batch.interval=1 minute", override])
    assert (err.value.source, err.value.key) == ("--set", key)
    assert str(err.value).startswith(f"--set: key '{key}': ") and expected in str(err.value)
    assert str(DEFAULT_CONFIG) not in str(err.value)


def test_set_wins_over_the_environment_in_the_blame_too(tmp_path: Path) -> None:
    environ = {"LAMBDA_PIPELINE_SET": "serve.port=8000 batch.interval='2 minutes'"}
    with pytest.raises(ConfigError) as err:
        load_settings(None, ["serve.port=-1"], environ=environ)
    assert (err.value.source, err.value.key) == ("--set", "serve.port")
    # A bad value in the file is still the file's, whatever the overrides set elsewhere.
    with pytest.raises(ConfigError) as err:
        load_settings(write(tmp_path, "batch:\n  interval: soon\n"), ["serve.port=8000"], environ={})
    assert (err.value.source, err.value.key) == (str(tmp_path / "conf.yaml"), "batch.interval")


@pytest.mark.parametrize(
    ("text", "key", "guess", "valid"),
    [
        ("emr:\n  log_prefixx: logs\n", "emr.log_prefixx", "log_prefix", "in 'emr' are: bucket, artifact_prefix, "),
        ("ingest:\n  kafka:\n    topik: t\n", "ingest.kafka.topik", "topic", "in 'ingest.kafka' are: "),
        ("spak:\n  master: local[1]\n", "spak", "spark", "at the top level are: pipeline, workdir, "),
        ("batch:\n  cadence: 1 minute\n", "batch.cadence", None, "in 'batch' are: interval"),
    ],
)
def test_an_unknown_key_suggests_the_closest_and_lists_the_valid_ones(
    tmp_path: Path, text: str, key: str, guess: str | None, valid: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_settings(path)
    message = str(err.value)
    assert err.value.key == key and message.startswith(f"{path}: key '{key}': unknown key")
    assert (f"did you mean '{guess}'?" in message) if guess else ("did you mean" not in message)
    assert f"the valid keys {valid}" in message
    assert "local.yaml" not in message and "conf/" not in message  # pip users have no repository files


@pytest.mark.parametrize("key", ["speed.trigger", "speed.max_files_per_trigger"])
def test_the_keys_no_job_read_are_gone(key: str) -> None:
    with pytest.raises(ConfigError, match="unknown key"):
        load_settings(None, [f"{key}=1"])


def test_missing_file_and_invalid_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        load_settings(tmp_path / "absent.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_settings(write(tmp_path, "speed: [unclosed\n"))


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


def test_a_workdir_without_a_scheme_is_refused_with_a_cluster_master(tmp_path: Path, capsys) -> None:
    """Spark would look for it on fs.defaultFS (HDFS on EMR), Python on this machine's disk: refused before any
    Spark starts, in one line that says how to write it."""
    from lambda_pipeline.cli.main import main

    cluster = ["--set", "spark.master=spark://127.0.0.1:7077"]
    assert main(["batch", "--workdir", str(tmp_path / "work"), *cluster]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error: --workdir: key 'workdir': ") and "spark.master is spark://127.0.0.1:7077" in line
    assert "file:///shared/mount/..." in line and "s3a://..." in line and "hdfs://..." in line
    assert not (tmp_path / "work").exists()  # nothing was created for it

    # An absolute warehouse outside the work directory is a root too; the config file is named for it.
    config = write(tmp_path, "spark:\n  master: yarn\nwarehouse: /data/warehouse\n")
    assert main(["batch", "--config", str(config), "--workdir", f"file://{tmp_path}/work"]) == 2
    assert f"{config}: key 'warehouse': '/data/warehouse' has no scheme" in capsys.readouterr().err


def test_a_workdir_without_a_scheme_is_refused_once_spark_runs_on_a_cluster_after_all(tmp_path: Path) -> None:
    """Under ``spark-submit --master spark://...`` the config may say local: the master that runs decides."""
    from lambda_pipeline.core.errors import ConfigError
    from lambda_pipeline.core.locations import Locations

    plain = Locations.create(load_settings(DEFAULT_CONFIG), tmp_path / "work")
    plain.check_master("local[2]")  # local: the driver's disk is everyone's
    with pytest.raises(ConfigError, match=r"has no scheme and this job runs on spark://127\.0\.0\.1:7077.*file:///"):
        plain.check_master("spark://127.0.0.1:7077")
    Locations.create(load_settings(DEFAULT_CONFIG), f"file://{tmp_path}/work").check_master("yarn")
    Locations.create(load_settings(DEFAULT_CONFIG), "s3a://bucket/work").check_master("yarn")


def test_a_file_uri_workdir_is_a_local_folder_for_python_too(tmp_path: Path) -> None:
    from lambda_pipeline.core.locations import Locations, local_path

    settings = load_settings(DEFAULT_CONFIG, ["spark.master=spark://127.0.0.1:7077"])
    locations = Locations.create(settings, f"file://{tmp_path}/shared/../work")
    assert locations.workdir == f"file://{tmp_path}/work" and locations.landing == f"file://{tmp_path}/work/landing"
    locations.ensure_local_dirs()  # Python's side: no Spark needed for a folder on this machine
    assert (tmp_path / "work" / "landing").is_dir() and (tmp_path / "work" / "warehouse").is_dir()
    assert local_path(locations.master) == tmp_path / "work" / "warehouse" / "master" / "master_events"
    assert local_path("s3a://bucket/work") is None and local_path("relative/work") == Path("relative/work")
