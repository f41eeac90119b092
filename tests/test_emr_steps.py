"""``lambda-pipeline emr-steps``: steps that name only what the artifact holds and what the config accepts."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from lambda_pipeline.cli.parser import build_parser
from lambda_pipeline.core.config_loader import load_settings
from lambda_pipeline.deploy.artifact import build_artifact
from lambda_pipeline.deploy.emr_steps import GLUE_FACTORY, rate_expression
from tests.user_pipeline import write_module

ROOT = Path(__file__).resolve().parents[1]
EMR_CONF = ROOT / "conf" / "emr.yaml"
BUCKET = ["--set", "emr.bucket=lambda-test-bucket"]
ON_NODES = ["--set", "emr.python=/usr/bin/python3.11"]
RELEASE = ["--set", "emr.release_label=emr-8.0.0"]  # cluster.json, written with --out, needs one


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("dist")
    build_artifact(folder, with_msk_iam=True)  # conf/emr.yaml authenticates to MSK with IAM
    return folder


def emr_steps(*args: str, dist: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lambda_pipeline.cli", "emr-steps", "--dist", str(dist), *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def _artifact_uri(args: list[str]) -> str:
    zip_uri = args[args.index("--py-files") + 1]
    return zip_uri.rsplit("/", 1)[0] + "/"


def _referenced(args: list[str], uri: str) -> set[str]:
    """Every artifact file an argument list names (comma lists, '#alias' fragments and '--conf' values)."""
    names = set()
    for previous, arg in zip(["", *args[:-1]], args, strict=True):
        if previous == "--workdir":  # the tables' location, not a file of the artifact
            continue
        for part in arg.split(","):
            part = part.split("#", 1)[0].split("=", 1)[-1]
            if part.startswith("s3://"):
                assert part.startswith(uri), f"{part} is outside the artifact {uri}"
                names.add(part.removeprefix(uri))
    return names


def test_steps_run_ingest_and_batch_from_files_the_manifest_lists(dist: Path) -> None:
    result = emr_steps("--config", str(EMR_CONF), *BUCKET, *ON_NODES, dist=dist)
    assert result.returncode == 0, result.stderr
    steps = json.loads(result.stdout)
    manifest = json.loads((dist / "manifest.json").read_text())
    listed = {entry["path"] for entry in manifest["files"]}

    mains, job_jars = [], []
    for step in steps:
        assert step["ActionOnFailure"] == "CONTINUE"
        jar = step["HadoopJarStep"]
        assert jar["Jar"] == "command-runner.jar"
        args = jar["Args"]
        assert args[:5] == ["spark-submit", "--deploy-mode", "cluster", "--master", "yarn"]
        uri = _artifact_uri(args)
        assert uri == f"s3://lambda-test-bucket/artifacts/lambda-pipeline/{manifest['version']}/"
        referenced = _referenced(args, uri)
        assert referenced <= listed, referenced - listed
        assert {manifest["zip"], "conf/emr.yaml"} <= referenced
        main = next(a for a in args if a.endswith("_job.py"))
        mains.append(main.removeprefix(uri))
        assert "spark.yarn.appMasterEnv.PYSPARK_PYTHON=/usr/bin/python3.11" in args
        # Nothing is resolved on the cluster (no internet there): every jar comes from the artifact.
        assert not {"--packages", "--exclude-packages", "--repositories"} & set(args)
        jars = [j.removeprefix(uri) for j in args[args.index("--jars") + 1].split(",")]
        assert set(jars) <= listed and jars[: len(manifest["jars"]["delta"])] == manifest["jars"]["delta"]
        job_jars.append(jars)
    # No maintain step: on S3 each table has one writing application, which maintains it (core/log_store.py).
    assert mains == ["ingest_job.py", "batch_job.py"]
    groups = manifest["jars"]
    assert job_jars[0] == groups["delta"] + groups["kafka"] + groups["msk_iam"]  # ingest from MSK with IAM
    assert job_jars[1] == groups["delta"]
    names = " ".join(groups["kafka"] + groups["msk_iam"])
    for jar in (
        "spark-sql-kafka-0-10_2.13-",
        "kafka-clients-",
        "spark-token-provider-kafka-0-10_2.13-",
        "aws-msk-iam-auth",
    ):
        assert jar in names, jar


def test_an_artifact_without_a_group_a_job_needs_is_refused_with_the_flag_that_adds_it(
    dist: Path, tmp_path: Path
) -> None:
    without = tmp_path / "dist"
    without.mkdir()
    manifest = json.loads((dist / "manifest.json").read_text())
    del manifest["jars"]["msk_iam"]
    (without / "manifest.json").write_text(json.dumps(manifest))
    result = emr_steps("--config", str(EMR_CONF), *BUCKET, *ON_NODES, dist=without)
    assert result.returncode == 2
    assert "the artifact carries no msk_iam jars, which the ingest job needs" in result.stderr
    assert "'lambda-pipeline package --with-msk-iam'" in result.stderr


def test_job_arguments_are_what_the_cli_accepts_with_the_shipped_config(dist: Path) -> None:
    result = emr_steps("--config", str(EMR_CONF), *BUCKET, *ON_NODES, "--set", "ingest.trigger=30 seconds", dist=dist)
    assert result.returncode == 0, result.stderr
    verbs = []
    for step in json.loads(result.stdout):
        args = step["HadoopJarStep"]["Args"]
        main = next(i for i, a in enumerate(args) if a.endswith("_job.py"))
        verb = Path(args[main]).name.removesuffix("_job.py")
        parsed = build_parser().parse_args([verb, *args[main + 1 :]])
        verbs.append((verb, getattr(parsed, "once", None), getattr(parsed, "every", None)))
        # --files ships conf/emr.yaml; the driver finds it in its working directory by that name.
        assert parsed.config == "emr.yaml" and parsed.workdir == "s3://lambda-test-bucket/lambda"
        assert parsed.overrides == ["ingest.trigger=30 seconds"]  # emr.* is the generator's, not the jobs'
        assert parsed.pipeline == "clickstream"  # every job is told the pipeline, whatever its environment
        settings = load_settings(EMR_CONF, parsed.overrides)
        assert settings.ingest.trigger == "30 seconds" and settings.spark.master == "yarn"
    assert verbs == [("ingest", False, None), ("batch", None, "config")]


def test_out_folder_holds_cluster_description_and_glue(dist: Path, tmp_path: Path) -> None:
    out = tmp_path / "emr"
    glue = ["--set", "emr.glue.enabled=true", "--set", "emr.release_label=emr-8.0.0"]
    result = emr_steps("--config", str(EMR_CONF), *BUCKET, *glue, *ON_NODES, "--out", str(out), dist=dist)
    assert result.returncode == 0, result.stderr
    assert json.loads((out / "steps.json").read_text()) == json.loads(result.stdout)
    configurations = json.loads((out / "configurations.json").read_text())
    assert configurations == [
        {"Classification": "spark-hive-site", "Properties": {"hive.metastore.client.factory.class": GLUE_FACTORY}}
    ]
    cluster = json.loads((out / "cluster.json").read_text())
    assert cluster["ReleaseLabel"] == "emr-8.0.0" and cluster["StepConcurrencyLevel"] == 4
    assert cluster["LogUri"] == "s3://lambda-test-bucket/logs/emr/"
    args = json.loads(result.stdout)[1]["HadoopJarStep"]["Args"]
    assert f"spark.hadoop.hive.metastore.client.factory.class={GLUE_FACTORY}" in args
    sql = (out / "glue-tables.sql").read_text()
    assert "CREATE DATABASE IF NOT EXISTS lambda_pipeline;" in sql
    assert (
        "lambda_pipeline.batch_page_activity USING DELTA LOCATION 's3://lambda-test-bucket/lambda/warehouse/batch/"
        in sql
    )
    assert not (out / "batch-schedule.json").exists()  # 'batch --every' is a step: no second batch writer


def test_schedule_mode_moves_the_batch_into_an_eventbridge_schedule(dist: Path, tmp_path: Path) -> None:
    out = tmp_path / "emr"
    mode = ["--set", "emr.batch_trigger=schedule", "--set", "batch.interval=2 hours", "--cluster-id", "j-ABC123"]
    result = emr_steps("--config", str(EMR_CONF), *BUCKET, *ON_NODES, *RELEASE, *mode, "--out", str(out), dist=dist)
    assert result.returncode == 0, result.stderr
    steps = json.loads(result.stdout)
    assert [s["Name"] for s in steps] == ["lambda-pipeline ingest (streaming)"]
    schedule = json.loads((out / "batch-schedule.json").read_text())
    assert schedule["ScheduleExpression"] == "rate(2 hours)"
    assert schedule["Target"]["Arn"] == "arn:aws:scheduler:::aws-sdk:emr:addJobFlowSteps"
    target = json.loads(schedule["Target"]["Input"])
    assert target["JobFlowId"] == "j-ABC123"
    (batch,) = target["Steps"]
    args = batch["HadoopJarStep"]["Args"]
    assert args[args.index(next(a for a in args if a.endswith("_job.py"))) + 1] == "--config"  # one run, no --every
    assert next(a for a in args if a.endswith("_job.py")).endswith("/batch_job.py")


@pytest.mark.parametrize(
    ("interval", "expected"),
    [
        ("5 minutes", "rate(5 minutes)"),
        ("1 minute", "rate(1 minute)"),
        ("90 seconds", "rate(2 minutes)"),
        ("1 hour", "rate(1 hour)"),
        ("48 hours", "rate(2 days)"),
        ("500 ms", "rate(1 minute)"),
    ],
)
def test_rate_expression_counts_whole_minutes(interval: str, expected: str) -> None:
    assert rate_expression(interval) == expected


def test_missing_bucket_is_one_line_naming_the_key(dist: Path) -> None:
    result = emr_steps("--config", str(EMR_CONF), *ON_NODES, dist=dist)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.strip() == (
        f"error: {EMR_CONF}: key 'emr.bucket': required by emr-steps: the S3 bucket name; "
        "set it in the file or --set emr.bucket=NAME"
    )


def test_cluster_description_without_a_release_label_is_refused(dist: Path, tmp_path: Path) -> None:
    out = tmp_path / "emr"
    result = emr_steps("--config", str(EMR_CONF), *BUCKET, *ON_NODES, "--out", str(out), dist=dist)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.strip() == (
        f"error: {EMR_CONF}: key 'emr.release_label': required by emr-steps --out for cluster.json: an EMR release "
        "whose Spark is 4.2 (list them with: aws emr list-release-labels --filters Application=Spark@4.2); "
        "set it in the file or --set emr.release_label=emr-X.Y.Z"
    )
    assert not out.exists()  # no cluster.json with "ReleaseLabel": null, nor anything beside it


COMMON_OPTIONS = {"--config", "--workdir", "--set", "--verbose"}


def _options(verb: str) -> set[str]:
    verbs = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return {option for action in verbs.choices[verb]._actions for option in action.option_strings}


@pytest.mark.parametrize(
    ("verb", "common"),
    [("emr-steps", {"--config", "--set"}), ("package", set()), ("new", set()), ("ingest", COMMON_OPTIONS)],
)
def test_verbs_take_only_the_common_options_they_use(verb: str, common: set[str]) -> None:
    assert _options(verb) & COMMON_OPTIONS == common


@pytest.mark.parametrize("option", [["--workdir", "s3://lambda-test-bucket/elsewhere"], ["--verbose"]])
def test_emr_steps_does_not_accept_an_option_it_would_ignore_or_refuse(dist: Path, option: list[str]) -> None:
    result = emr_steps("--config", str(EMR_CONF), *BUCKET, *ON_NODES, *option, dist=dist)
    assert result.returncode == 2 and result.stdout == ""
    assert f"unrecognized arguments: {' '.join(option)}" in result.stderr


@pytest.mark.parametrize(
    ("override", "source", "key", "message"),
    [
        ("emr.buckt=x", "--set", "emr.buckt", "unknown key"),
        ("emr.glue.databse=x", "--set", "emr.glue.databse", "unknown key"),
        ("emr.bucket=s3://my-bucket", "--set", "emr.bucket", "expected an S3 bucket name"),
        ("emr.step_concurrency=1", str(EMR_CONF), "emr.step_concurrency", "the 2 long-running steps run at once"),
        ("workdir=/data/lambda", str(EMR_CONF), "workdir", "on EMR the work directory must be on S3"),
    ],
)
def test_bad_config_is_one_clear_line(dist: Path, override: str, source: str, key: str, message: str) -> None:
    result = emr_steps("--config", str(EMR_CONF), *BUCKET, *ON_NODES, "--set", override, dist=dist)
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"error: {source}: key '{key}': ") and message in line, line


def test_unknown_key_in_the_file_is_refused(dist: Path, tmp_path: Path) -> None:
    config = tmp_path / "emr.yaml"
    config.write_text(EMR_CONF.read_text().replace("  log_prefix:", "  log_prefixx:"))
    result = emr_steps("--config", str(config), *BUCKET, *ON_NODES, dist=dist)
    assert result.returncode == 2
    assert (
        result.stderr.strip()
        == f"error: {config}: key 'emr.log_prefixx': unknown key (did you mean 'log_prefix'?); the valid keys in "
        "'emr' are: bucket, artifact_prefix, log_prefix, release_label, step_concurrency, batch_trigger, python, "
        "submit_conf, spark_submit_args, glue"
    )


def test_config_not_in_the_artifact_and_artifact_without_env_are_refused(dist: Path, tmp_path: Path) -> None:
    edited = tmp_path / "emr.yaml"
    edited.write_text(EMR_CONF.read_text() + "\n# edited after packaging\n")
    result = emr_steps("--config", str(edited), *BUCKET, *ON_NODES, dist=dist)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"--add-config {edited}" in result.stderr and "differs from the copy in" in result.stderr

    without_env = emr_steps("--config", str(EMR_CONF), *BUCKET, dist=dist)
    assert without_env.returncode == 2
    assert "no packed environment" in without_env.stderr and "package --with-env" in without_env.stderr

    missing = emr_steps("--config", str(EMR_CONF), *BUCKET, dist=tmp_path / "nothing")
    assert missing.returncode == 2 and "build the artifact first" in missing.stderr


def test_packaged_extra_config_is_accepted(tmp_path: Path) -> None:
    prod = tmp_path / "prod.yaml"
    prod.write_text(EMR_CONF.read_text().replace("bucket: null", "bucket: prod-bucket"))
    folder = tmp_path / "dist"
    build_artifact(folder, extra_configs=[prod], with_msk_iam=True)
    result = emr_steps("--config", str(prod), *ON_NODES, dist=folder)
    assert result.returncode == 0, result.stderr
    args = json.loads(result.stdout)[0]["HadoopJarStep"]["Args"]
    assert "s3://prod-bucket/artifacts/lambda-pipeline/0.1.0/conf/prod.yaml" in args
    assert "upload first: aws s3 sync" in result.stderr and shlex.quote(str(folder)) in result.stderr


# ---- the user's own pipeline -----------------------------------------------------------------------------


def _user_project(folder: Path) -> Path:
    """A user's EMR config outside conf/, naming the pipeline file beside it."""
    write_module(folder, "pipeline.py")
    config = folder / "payments-emr.yaml"
    config.write_text(EMR_CONF.read_text().replace("pipeline: clickstream", "pipeline: pipeline.py:PIPELINE"))
    return config


def test_steps_run_the_user_pipeline_the_artifact_carries(tmp_path: Path) -> None:
    config = _user_project(tmp_path / "project")
    folder = tmp_path / "dist"
    build_artifact(folder, extra_configs=[config], with_msk_iam=True)  # the config brings the pipeline file it names
    out = tmp_path / "emr"
    glue = ["--set", "emr.glue.enabled=true", *RELEASE]
    result = emr_steps("--config", str(config), *BUCKET, *ON_NODES, *glue, "--out", str(out), dist=folder)
    assert result.returncode == 0, result.stderr
    for step in json.loads(result.stdout):
        args = step["HadoopJarStep"]["Args"]
        main = next(i for i, a in enumerate(args) if a.endswith("_job.py"))
        parsed = build_parser().parse_args([Path(args[main]).name.removesuffix("_job.py"), *args[main + 1 :]])
        # On the node, no pipeline.py beside emr.yaml: the loader imports the module 'pipeline' from the zip.
        assert parsed.pipeline == "pipeline.py:PIPELINE" and parsed.config == "payments-emr.yaml"
    sql = (out / "glue-tables.sql").read_text()
    tables = {line.split()[5] for line in sql.splitlines() if line.startswith("CREATE TABLE")}
    views = ("failed_hourly", "country_hopping", "merchant_all_time", "everything")
    assert {f"lambda_pipeline.batch_{view}" for view in views} <= tables
    assert not any("page_activity" in t for t in tables)


def test_a_pipeline_the_artifact_does_not_carry_as_it_is_here_is_refused(dist: Path, tmp_path: Path) -> None:
    config = _user_project(tmp_path / "project")
    ref = f"{config.parent / 'pipeline.py'}:PIPELINE"
    missing = emr_steps("--config", str(EMR_CONF), *BUCKET, *ON_NODES, "--pipeline", ref, dist=dist)
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    assert missing.stderr.strip() == (
        f"error: --pipeline: key 'pipeline': '{ref}': the artifact in {dist} carries no module 'pipeline': "
        f"rebuild it with 'lambda-pipeline package --pipeline {ref}'"
    )

    folder = tmp_path / "dist"
    build_artifact(folder, extra_configs=[config], with_msk_iam=True)
    with (config.parent / "pipeline.py").open("a") as module:
        module.write("# edited after packaging\n")
    edited = emr_steps("--config", str(config), *BUCKET, *ON_NODES, dist=folder)
    assert edited.returncode == 2
    (line,) = edited.stderr.strip().splitlines()
    assert line == (
        f"error: {config}: key 'pipeline': 'pipeline.py:PIPELINE': {config.parent / 'pipeline.py'} differs from "
        f"the copy in the artifact in {folder}: rebuild it with 'lambda-pipeline package --add-config {config}'"
    )
