"""The pipeline on S3: ``s3a://`` through hadoop-aws against a real S3-compatible server on loopback.

The unit tests check the ``s3:`` config (its mapping to ``fs.s3a.*``, the refusal of credentials) and
the local server's life cycle. The integration test runs every layer with every location in a bucket
and holds the serving view to the same exactness as on local disk: equal to a full recompute from
master, each generated event counted once.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from lambda_pipeline.cli.context import Context
from lambda_pipeline.core.config import S3Settings
from lambda_pipeline.core.config_loader import load_settings
from lambda_pipeline.core.errors import ConfigError, EnvironmentProblem
from lambda_pipeline.core.locations import Locations
from lambda_pipeline.local_services.s3_server import S3Server, free_port
from lambda_pipeline.pipelines.clickstream import CLICKSTREAM
from tests.helpers import assert_same_view, by_key, recompute


def test_s3_settings_map_to_s3a_confs() -> None:
    local = S3Settings(
        endpoint="http://127.0.0.1:9000",
        path_style_access=True,
        credentials_provider="software.amazon.awssdk.auth.credentials.EnvironmentVariableCredentialsProvider",
    )
    assert local.spark_conf() == {
        "spark.hadoop.fs.s3a.endpoint": "http://127.0.0.1:9000",
        "spark.hadoop.fs.s3a.optimized.copy.from.local.enabled": "false",
        "spark.hadoop.fs.s3a.endpoint.region": "us-east-1",
        "spark.hadoop.fs.s3a.path.style.access": "true",
        "spark.hadoop.fs.s3a.connection.ssl.enabled": "false",
        "spark.hadoop.fs.s3a.aws.credentials.provider": (
            "software.amazon.awssdk.auth.credentials.EnvironmentVariableCredentialsProvider"
        ),
    }
    assert S3Settings(region="eu-west-1").hadoop_conf(bucket="data-eu") == {
        "fs.s3a.bucket.data-eu.endpoint.region": "eu-west-1",
        "fs.s3a.bucket.data-eu.path.style.access": "false",
        "fs.s3a.bucket.data-eu.connection.ssl.enabled": "true",
    }
    # AWS itself: no endpoint, no provider: S3A's defaults and the default credential chain.
    assert S3Settings().spark_conf() == {
        "spark.hadoop.fs.s3a.path.style.access": "false",
        "spark.hadoop.fs.s3a.connection.ssl.enabled": "true",
    }


def test_s3_section_from_yaml_and_bad_values(tmp_path: Path) -> None:
    config = tmp_path / "s3.yaml"
    config.write_text("workdir: s3a://lake/work\ns3:\n  endpoint: http://127.0.0.1:9000\n  path_style_access: true\n")
    settings = load_settings(config)
    assert settings.s3.endpoint == "http://127.0.0.1:9000" and settings.s3.path_style_access
    with pytest.raises(ConfigError, match=r"s3\.ssl=true contradicts the endpoint's scheme http://"):
        load_settings(config, ["s3.ssl=true"])
    with pytest.raises(ConfigError, match=r"key 's3\.endpoint': expected an endpoint"):
        load_settings(config, ["s3.endpoint=ftp://example.com/x"])
    with pytest.raises(ConfigError, match=r"key 's3\.bucket_name': unknown key"):
        load_settings(config, ["s3.bucket_name=lake"])


@pytest.mark.parametrize(
    "override",
    [
        "s3.secret_key=wJalrXUtnFEMIxK7MDENGbPxRfiCYEXAMPLEKEY",
        "s3.access_key=wJalrXUtnFEMIxK7MDENGbPxRfiCYEXAMPLEKEY",
        "s3.aws_secret_access_key=wJalrXUtnFEMIxK7MDENGbPxRfiCYEXAMPLEKEY",
        "spark.conf.spark.hadoop.fs.s3a.secret.key=wJalrXUtnFEMIxK7MDENGbPxRfiCYEXAMPLEKEY",
        "spark.conf.spark.hadoop.fs.s3a.bucket.lake.access.key=wJalrXUtnFEMIxK7MDENGbPxRfiCYEXAMPLEKEY",
        "emr.submit_conf={spark.hadoop.fs.s3a.secret.key: wJalrXUtnFEMIxK7MDENGbPxRfiCYEXAMPLEKEY}",
    ],
)
def test_s3_credentials_in_the_config_are_refused(override: str) -> None:
    with pytest.raises(ConfigError) as refused:
        load_settings(None, [override])
    message = str(refused.value)
    assert "AWS_ACCESS_KEY_ID" in message and "instance role" in message
    assert "wJalrXUtnFEMIxK7MDENGbPxRfiCYEXAMPLEKEY" not in message  # never echo a secret


def test_s3a_locations_ask_for_hadoop_aws() -> None:
    settings = load_settings(None, ["checkpoints=s3a://state/checkpoints"])
    local = Context(settings, Locations.create(settings, "/tmp/work"), CLICKSTREAM)
    assert local.locations.needs_s3a and local.locations.s3a_buckets() == ("state",)
    assert any(":hadoop-aws:" in p for p in local.jvm_packages)
    on_s3 = Locations.create(load_settings(None), "s3a://lake/work")
    assert on_s3.landing == "s3a://lake/work/landing" and on_s3.master.startswith("s3a://lake/work/warehouse/")
    assert on_s3.s3a_buckets() == ("lake",)
    plain = Context(load_settings(None), Locations.create(load_settings(None), "/tmp/work"), CLICKSTREAM)
    assert not plain.locations.needs_s3a and plain.jvm_packages == ()


def test_s3_server_starts_refuses_a_taken_port_and_stops(tmp_path: Path) -> None:
    server = S3Server(tmp_path / "s3", port=free_port())
    server.start()
    try:
        assert server.status().running and server.create_bucket("first") and not server.create_bucket("first")
        assert server.buckets() == ["first"]
        with pytest.raises(EnvironmentProblem, match=rf"port {server.port} on 127.0.0.1 is already in use"):
            S3Server(tmp_path / "other", port=server.port).start()
        # Another process's view of the same base_dir finds and stops it.
        assert S3Server(tmp_path / "s3", port=server.port).stop() is True
        assert not server.status().running
    finally:
        server.stop()


def test_s3_cli_verb_status_and_refusal(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from lambda_pipeline.cli.main import main

    state = tmp_path / "state"
    assert main(["s3", "status", "--dir", str(state), "--port", str(free_port())]) == 1
    assert "not running" in capsys.readouterr().out
    assert main(["s3", "stop", "--dir", str(state)]) == 0


@pytest.mark.integration
def test_pipeline_on_s3_is_exact_and_stays_in_the_bucket(
    spark, s3_server: S3Server, s3_bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lambda_pipeline.batch_layer.job import run_batch
    from lambda_pipeline.pipelines.generator import ClickstreamGenerator
    from lambda_pipeline.pipelines.ingest import start_ingest
    from lambda_pipeline.serving_layer.catalog import ServingLayer

    monkeypatch.chdir(tmp_path)  # anything written to local disk by mistake would show up here
    settings = load_settings(None, ["speed.compact_every=0"])
    loc = Locations.create(settings, f"s3a://{s3_bucket}/work")
    assert loc.needs_s3a
    generator = ClickstreamGenerator(41, late_fraction=0.1, duplicate_fraction=0.05, malformed_fraction=0.03)

    first = generator.write(loc.landing, 600, files=3, spark=spark)
    start_ingest(spark, CLICKSTREAM, settings, loc, once=True).awaitTermination()
    coverage, staged = run_batch(spark, CLICKSTREAM, loc)
    assert staged is not None and coverage.master_version >= 1
    second = generator.write(loc.landing, 300, files=2, spark=spark)  # after the batch: speed layer only
    start_ingest(spark, CLICKSTREAM, settings, loc, once=True).awaitTermination()

    serving = ServingLayer(spark, CLICKSTREAM, loc)
    serving.take_pin()
    got = by_key(serving.query("SELECT * FROM serving.page_activity", new_pin=False))
    assert_same_view(got, recompute(spark, loc.master), users_tolerance=0.02)
    generated = {e for f in first + second for e in f.event_ids}
    assert sum(row["events"] for row in got.values()) == len(generated)
    share = serving.query(
        "SELECT (SELECT sum(events) FROM batch.page_activity) AS b, (SELECT sum(events) FROM speed.page_activity) AS s"
    ).first()
    first_ids, second_ids = ({e for f in wave for e in f.event_ids} for wave in (first, second))
    assert (share.b, share.s) == (len(first_ids), len(second_ids))  # both layers served their wave

    # The data is in the S3 server, seen through the S3 API rather than through s3a.
    keys = s3_server.list_keys(s3_bucket, "work/")
    expected_prefixes = {
        "landing file": "work/landing/clicks-",
        "master log": "work/warehouse/master/master_events/_delta_log/",
        "quarantine": "work/warehouse/master/quarantine/",
        "coverage": "work/warehouse/batch/_coverage/_delta_log/",
        "batch view": "work/warehouse/batch/page_activity/",
        "speed partials": "work/warehouse/speed/page_activity/",
        "ingest checkpoint": "work/checkpoints/ingest/offsets/",
    }
    missing = {what: where for what, where in expected_prefixes.items() if not any(k.startswith(where) for k in keys)}
    assert not missing, f"not in the bucket: {missing}; keys: {sorted(keys)[:20]}"
    # Every landing file is in the bucket: still in landing, or archived by ingest once committed.
    landed = [k for k in keys if k.startswith(("work/landing/clicks-", "work/landing-archive/"))]
    assert len([k for k in landed if "/landing/clicks-" in k]) == len(first) + len(second), landed
    sources = {r[0] for r in spark.read.format("delta").load(loc.master).select("source_file").distinct().collect()}
    assert sources and all(s.startswith(f"s3a://{s3_bucket}/work/landing/") for s in sources)
    assert list(tmp_path.iterdir()) == [], "something was written to local disk instead of S3"
