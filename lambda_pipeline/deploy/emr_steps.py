"""``lambda-pipeline emr-steps``: the EMR steps (AddJobFlowSteps ``Steps``) that run the jobs on a cluster.

Generated, not hand-written, so that the steps can only name what exists: files listed in the
artifact's manifest (``lambda-pipeline package``) and a config that validates. The jobs are
long-running YARN applications submitted in cluster mode: ingest streams (writing master and the speed
partials in each micro-batch), the batch job runs ``batch --every`` (or is added by an EventBridge
schedule, ``emr.batch_trigger: schedule``). There is no maintenance step: on S3 with Delta's default log store
only one application may write a table (``core/log_store.py``), so ingest and the batch job maintain their own
tables.

Printed on stdout: the JSON list for ``aws emr add-steps --steps file://steps.json``. With ``--out``,
also written there: ``steps.json``, ``configurations.json`` (cluster classifications), ``cluster.json``
(release, log URI, step concurrency, bootstrap action) and, in schedule mode, ``batch-schedule.json``
(input of ``aws scheduler create-schedule --cli-input-json``). With Glue on: ``glue-tables.sql``.

Every job gets the pipeline reference as ``--pipeline REF`` (``--pipeline``, else the config's ``pipeline`` as
``--set`` and the environment leave it); a reference whose module the artifact does not carry, or carries in
another version than the one here, is refused (``package --pipeline REF`` carries it, deploy/includes.py).

Every jar a job loads comes from the artifact's ``jars/`` (``--jars``, by the manifest's groups), never from
Maven (no ``--packages``): a cluster in a private subnet has no internet.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import posixpath
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lambda_pipeline.core.config import Settings
from lambda_pipeline.core.config_loader import DEFAULT_CONFIG, add_override_option, config_file, load_settings
from lambda_pipeline.core.durations import duration_seconds
from lambda_pipeline.core.errors import ConfigError
from lambda_pipeline.core.pipeline import Pipeline

__all__ = ["EmrPlan", "add_emr_steps_parser", "glue_spark_conf", "plan_emr", "rate_expression", "run_emr_steps"]

GLUE_FACTORY = "com.amazonaws.glue.catalog.metastore.AWSGlueDataCatalogHiveClientFactory"
STREAMING_JOBS = ("ingest",)
CLUSTER_ID_PLACEHOLDER = "j-REPLACE_WITH_CLUSTER_ID"
ROLE_PLACEHOLDER = "arn:aws:iam::REPLACE_WITH_ACCOUNT:role/lambda-pipeline-scheduler"


@dataclass
class EmrPlan:
    """Everything the deployment needs, as JSON-ready values."""

    steps: list[dict[str, Any]]
    configurations: list[dict[str, Any]]
    cluster: dict[str, Any]
    schedule: dict[str, Any] | None = None
    glue_sql: str | None = None
    referenced: list[str] = field(default_factory=list)  # artifact files the steps name


def glue_spark_conf() -> dict[str, str]:
    """Spark settings that make the Glue Data Catalog Spark's metastore (EMR ships the client factory)."""
    return {
        "spark.sql.catalogImplementation": "hive",
        "spark.hadoop.hive.metastore.client.factory.class": GLUE_FACTORY,
    }


def rate_expression(interval: str) -> str:
    """An EventBridge Scheduler ``rate(...)`` for ``batch.interval``; it counts whole minutes at least."""
    seconds = duration_seconds(interval)
    minutes = max(1, math.ceil(seconds / 60))
    for unit, size in (("day", 1440), ("hour", 60), ("minute", 1)):
        if minutes % size == 0:
            count = minutes // size
            return f"rate({count} {unit}{'s' if count > 1 else ''})"
    raise AssertionError("unreachable: every whole number of minutes is a rate in minutes")


def _artifact(manifest: dict[str, Any], name: str, referenced: list[str], dist: Path) -> str:
    """The artifact-relative name of a file, refused if the manifest does not list it."""
    listed = {entry["path"] for entry in manifest.get("files", [])}
    if name not in listed:
        raise ConfigError(
            str(dist / "manifest.json"), None, f"the artifact has no {name}: rebuild it with 'lambda-pipeline package'"
        )
    referenced.append(name)
    return name


def _config_in_artifact(config: Path, manifest: dict[str, Any], dist: Path) -> str:
    """The config must ship byte for byte in the artifact: what the steps name is what was uploaded."""
    name = f"conf/{config.name}"
    entry = next((e for e in manifest.get("files", []) if e["path"] == name), None)
    digest = hashlib.sha256(config.read_bytes()).hexdigest() if config.is_file() else None
    if entry is None or entry["sha256"] != digest:
        state = "is not in" if entry is None else "differs from the copy in"
        raise ConfigError(
            str(config),
            None,
            f"{state} the artifact in {dist}: rebuild it with 'lambda-pipeline package'"
            + ("" if config.parent.resolve() == DEFAULT_CONFIG.parent else f" --add-config {config}"),
        )
    return name


def _pipeline_in_artifact(ref: str, config: Path, origin: str, manifest: dict[str, Any], dist: Path) -> None:
    """The module the jobs will import for ``ref`` must be in the artifact's zip, as it is here; the hint names
    the config when the reference is the config's own (``--add-config`` carries it), else ``--pipeline``."""
    from lambda_pipeline.deploy.includes import carried_module, local_include

    name = carried_module(ref)
    if name is None:
        return
    carried = {entry["name"]: entry for entry in manifest.get("includes", [])}
    option = f"--add-config {config}" if origin == str(config) else f"--pipeline {shlex.quote(ref)}"
    rebuild = f"rebuild it with 'lambda-pipeline package {option}'"
    if name not in carried:
        raise ConfigError(origin, "pipeline", f"{ref!r}: the artifact in {dist} carries no module '{name}': {rebuild}")
    here = local_include(ref, config, origin)
    if here is not None and here.digest() != carried[name]["sha256"]:
        raise ConfigError(
            origin, "pipeline", f"{ref!r}: {here.source} differs from the copy in the artifact in {dist}: {rebuild}"
        )


def _workdir(settings: Settings, source: str, bucket: str) -> str:
    """Jobs on EMR keep everything on S3: a relative workdir goes under the bucket."""
    workdir = settings.workdir
    if "://" in workdir:
        if not workdir.startswith(("s3://", "s3a://")):
            raise ConfigError(source, "workdir", f"on EMR the work directory must be on S3 (s3://...), got {workdir!r}")
        return workdir.rstrip("/")
    if workdir.startswith("/"):
        raise ConfigError(
            source,
            "workdir",
            f"on EMR the work directory must be on S3: make it relative to emr.bucket, not {workdir!r}",
        )
    for key in ("warehouse", "checkpoints"):
        value = getattr(settings, key)
        if value.startswith("/"):
            raise ConfigError(source, key, f"on EMR it must be relative to the work directory or s3://, got {value!r}")
    return f"s3://{bucket}/{workdir.strip('/')}"


def _job_jars(job: str, settings: Settings, workdir: str, manifest: dict[str, Any], dist: Path) -> list[str]:
    """The artifact's jars a job loads, by the manifest's groups: Delta's for every job, the Kafka connector's
    for ingest from Kafka (and MSK IAM's when its options use it), hadoop-aws's for an ``s3a://`` workdir when
    the artifact carries it (EMRFS serves ``s3://`` without it)."""
    groups = manifest["jars"]
    wanted = ["delta"]
    if job == "ingest" and settings.ingest.source == "kafka":
        wanted.append("kafka")
        if _kafka_needs_msk_iam(settings):
            wanted.append("msk_iam")
    if workdir.startswith("s3a://") and "hadoop_aws" in groups:
        wanted.append("hadoop_aws")
    flags = {"msk_iam": " --with-msk-iam", "hadoop_aws": " --with-hadoop-aws"}
    for group in wanted:
        if group not in groups:
            raise ConfigError(
                str(dist / "manifest.json"),
                None,
                f"the artifact carries no {group} jars, which the {job} job needs: rebuild it with "
                f"'lambda-pipeline package{flags.get(group, '')}'",
            )
    return [jar for group in wanted for jar in groups[group]]


def _kafka_needs_msk_iam(settings: Settings) -> bool:
    options = settings.ingest.kafka.options
    return options.get("sasl.mechanism") == "AWS_MSK_IAM" or "IAMLoginModule" in options.get("sasl.jaas.config", "")


def plan_emr(
    settings: Settings,
    manifest: dict[str, Any],
    *,
    config: Path,
    overrides: list[str],
    dist: Path,
    artifact_uri: str | None = None,
    cluster_id: str | None = None,
    scheduler_role_arn: str | None = None,
    pipeline: tuple[str, str, Pipeline] | None = None,
) -> EmrPlan:
    """Build the steps and the cluster description for ``settings`` from the artifact's ``manifest``.

    ``pipeline``: ``(reference, origin, loaded pipeline)``; by default the config's ``pipeline``.
    """
    from lambda_pipeline.pipelines.registry import load_pipeline

    source = str(config)
    if pipeline is None:
        pipeline = (settings.pipeline, source, load_pipeline(settings.pipeline, config_path=config, origin=source))
    ref, origin, loaded = pipeline
    emr = settings.emr
    if emr.bucket is None:
        raise ConfigError(
            source,
            "emr.bucket",
            "required by emr-steps: the S3 bucket name; set it in the file or --set emr.bucket=NAME",
        )
    uri = (artifact_uri or f"s3://{emr.bucket}/{emr.artifact_prefix}/{manifest['version']}").rstrip("/")
    if not uri.startswith("s3://"):
        raise ConfigError("--artifact-uri", None, f"expected an s3:// URI of the uploaded artifact, got {uri!r}")
    referenced: list[str] = []

    def at(name: str) -> str:
        return f"{uri}/{_artifact(manifest, name, referenced, dist)}"

    config_name = _config_in_artifact(config, manifest, dist)
    _pipeline_in_artifact(ref, config, origin, manifest, dist)
    config_uri = at(config_name)
    workdir = _workdir(settings, source, emr.bucket)

    submit_conf: dict[str, str] = {}
    archives: list[str] = []
    if emr.python is not None:
        python = emr.python
    elif manifest.get("env"):
        archives.append(f"{at(manifest['env']['archive'])}#env")
        python = f"./env/{manifest['env']['python']}"
    else:
        raise ConfigError(
            str(dist / "manifest.json"),
            None,
            "the artifact has no packed environment: build it with 'lambda-pipeline package --with-env', "
            "or set emr.python to an interpreter installed on the cluster nodes",
        )
    submit_conf["spark.yarn.appMasterEnv.PYSPARK_PYTHON"] = python
    submit_conf["spark.executorEnv.PYSPARK_PYTHON"] = python
    if emr.glue.enabled:
        submit_conf.update(glue_spark_conf())
    submit_conf.update(emr.submit_conf)
    zip_uri = at(manifest["zip"])

    def step(job: str, job_args: list[str], name: str) -> dict[str, Any]:
        jars = [at(jar) for jar in _job_jars(job, settings, workdir, manifest, dist)]
        # Cluster mode: the driver runs in a YARN container, so a step ends only when its application does,
        # and the config shipped by --files lands in the driver's working directory under its own name.
        args = ["spark-submit", "--deploy-mode", "cluster", "--master", "yarn"]
        args += ["--name", f"{settings.spark.app_name}-{job}"]
        args += ["--py-files", zip_uri, "--files", config_uri]
        if archives:
            args += ["--archives", ",".join(archives)]
        for key, value in submit_conf.items():
            args += ["--conf", f"{key}={value}"]
        args += ["--jars", ",".join(jars)]  # the artifact's: the cluster downloads nothing
        args += list(emr.spark_submit_args)
        args.append(at(manifest["jobs"][job]))
        args += [*job_args, "--config", posixpath.basename(config_name), "--workdir", workdir, "--pipeline", ref]
        for override in overrides:  # the jobs see the same config; emr.* is read here only
            if not override.strip().startswith("emr."):
                args += ["--set", override]
        return {
            "Name": name,
            "ActionOnFailure": "CONTINUE",
            "HadoopJarStep": {"Jar": "command-runner.jar", "Args": args},
        }

    app = settings.spark.app_name
    steps = [step(job, [], f"{app} {job} (streaming)") for job in STREAMING_JOBS]
    batch_once = step("batch", [], f"{app} batch")
    schedule = None
    if emr.batch_trigger == "every":
        steps.append(step("batch", ["--every"], f"{app} batch every {settings.batch.interval}"))
    else:
        schedule = {
            "Name": f"{app}-batch",
            "Description": f"adds the batch step to the EMR cluster every batch.interval ({settings.batch.interval})",
            "ScheduleExpression": rate_expression(settings.batch.interval),
            "FlexibleTimeWindow": {"Mode": "OFF"},
            "Target": {
                "Arn": "arn:aws:scheduler:::aws-sdk:emr:addJobFlowSteps",
                "RoleArn": scheduler_role_arn or ROLE_PLACEHOLDER,
                "Input": json.dumps({"JobFlowId": cluster_id or CLUSTER_ID_PLACEHOLDER, "Steps": [batch_once]}),
            },
        }

    configurations: list[dict[str, Any]] = []
    if emr.glue.enabled:
        configurations.append(
            {"Classification": "spark-hive-site", "Properties": {"hive.metastore.client.factory.class": GLUE_FACTORY}}
        )
    cluster: dict[str, Any] = {
        "Name": app,
        "ReleaseLabel": emr.release_label,
        "Applications": [{"Name": "Spark"}, {"Name": "Hadoop"}],
        "LogUri": f"s3://{emr.bucket}/{emr.log_prefix}/",
        "StepConcurrencyLevel": emr.step_concurrency,
        "Configurations": configurations,
        "BootstrapActions": [
            {"Name": "python", "ScriptBootstrapAction": {"Path": at(manifest["bootstrap"]), "Args": []}}
        ]
        if emr.python is None
        else [],
    }
    long_running = len(steps)
    if emr.step_concurrency < long_running:
        raise ConfigError(
            source,
            "emr.step_concurrency",
            f"the {long_running} long-running steps run at once: expected at least {long_running}, "
            f"got {emr.step_concurrency}",
        )
    glue_sql = _glue_tables_sql(settings, workdir, loaded) if emr.glue.enabled else None
    return EmrPlan(steps, configurations, cluster, schedule, glue_sql, sorted(set(referenced)))


def _glue_tables_sql(settings: Settings, workdir: str, pipeline: Pipeline) -> str:
    """Register the published tables in the Glue database (path-based Delta tables stay the source of truth):
    master, quarantine, coverage and the batch table of each of the pipeline's views."""
    from lambda_pipeline.core.locations import Locations

    locations = Locations.create(settings, workdir)
    database = settings.emr.glue.database
    tables = {
        settings.tables.master: locations.master,
        settings.tables.quarantine: locations.quarantine,
        f"batch_{settings.tables.coverage}": locations.coverage,
    }
    for view in pipeline.views:
        tables[f"batch_{view.name}"] = locations.batch_view(view.name)
    lines = [f"CREATE DATABASE IF NOT EXISTS {database};"]
    for name, path in tables.items():
        lines.append(f"CREATE TABLE IF NOT EXISTS {database}.{name} USING DELTA LOCATION '{path}';")
    return "\n".join(lines) + "\n"


def add_emr_steps_parser(verbs: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    """Register ``emr-steps`` with the options it uses: of the verbs' common ones, --config and --set only.

    No --workdir: the jobs' work directory is the config's ``workdir``, on S3. No --verbose: nothing here
    starts Spark or resolves jars.
    """
    parser = verbs.add_parser(
        "emr-steps",
        help="print the EMR steps (aws emr add-steps --steps file://...) that run ingest and batch",
        description=__doc__.split("\n\n")[2] if __doc__ else None,
    )
    parser.add_argument(
        "--config",
        help="the config the jobs read; it must ship in the artifact (default: $LAMBDA_PIPELINE_CONFIG, else the "
        "shipped local.yaml)",
    )
    add_override_option(
        parser, "override a config value (repeatable); passed on to every job as the same --set, except emr.*"
    )
    parser.add_argument(
        "--pipeline",
        metavar="REF",
        help="the pipeline every job runs, passed on as --pipeline; the artifact must carry its module "
        "('package --pipeline REF') (default: $LAMBDA_PIPELINE_PIPELINE, else the config's 'pipeline')",
    )
    parser.add_argument(
        "--artifact-uri",
        help="where the artifact folder was uploaded (default: s3://<emr.bucket>/<emr.artifact_prefix>/<version>)",
    )
    parser.add_argument("--dist", default="dist", help="the built artifact folder with manifest.json (default: dist)")
    parser.add_argument("--out", help="also write steps.json, cluster.json, configurations.json (and more) here")
    parser.add_argument("--cluster-id", help="the cluster the batch schedule adds steps to (schedule mode)")
    parser.add_argument("--scheduler-role-arn", help="role EventBridge Scheduler assumes (schedule mode)")
    return parser


def run_emr_steps(args: argparse.Namespace) -> int:
    """Load the config, plan, print the steps; with ``--out`` also write the cluster description and the rest."""
    from lambda_pipeline.deploy.artifact import load_manifest
    from lambda_pipeline.pipelines.registry import load_pipeline

    settings = load_settings(args.config, args.overrides)
    config = config_file(args.config)  # the same file load_settings read
    ref = args.pipeline or settings.pipeline
    origin = str(config)  # where the reference came from, as the verbs name it (cli/context.py)
    if args.pipeline:
        origin = "--pipeline"
    elif any(o.strip().startswith("pipeline=") for o in args.overrides):
        origin = "--set"
    elif os.environ.get("LAMBDA_PIPELINE_PIPELINE", "").strip():
        origin = "environment variable LAMBDA_PIPELINE_PIPELINE"
    pipeline = load_pipeline(ref, config_path=config, origin=origin)  # refused as by every other verb
    dist = Path(args.dist)
    plan = plan_emr(
        settings,
        load_manifest(dist),
        config=config,
        overrides=list(args.overrides),
        dist=dist,
        artifact_uri=args.artifact_uri,
        cluster_id=args.cluster_id,
        scheduler_role_arn=args.scheduler_role_arn,
        pipeline=(ref, origin, pipeline),
    )
    if args.out and settings.emr.release_label is None:
        raise ConfigError(
            str(config),
            "emr.release_label",
            "required by emr-steps --out for cluster.json: an EMR release whose Spark is 4.2 (list them with: "
            "aws emr list-release-labels --filters Application=Spark@4.2); set it in the file or "
            "--set emr.release_label=emr-X.Y.Z",
        )
    print(json.dumps(plan.steps, indent=2))
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        files = {
            "steps.json": plan.steps,
            "configurations.json": plan.configurations,
            "cluster.json": plan.cluster,
        }
        if plan.schedule is not None:
            files["batch-schedule.json"] = plan.schedule
        for name, value in files.items():
            (out / name).write_text(json.dumps(value, indent=2) + "\n")
        if plan.glue_sql is not None:
            (out / "glue-tables.sql").write_text(plan.glue_sql)
        written = [*files, *(["glue-tables.sql"] if plan.glue_sql else [])]
        print(f"wrote {', '.join(str(out / n) for n in written)}", file=sys.stderr)
    uri = plan.steps[0]["HadoopJarStep"]["Args"][plan.steps[0]["HadoopJarStep"]["Args"].index("--py-files") + 1]
    print(f"upload first: aws s3 sync {shlex.quote(str(dist))} {shlex.quote(posixpath.dirname(uri))}/", file=sys.stderr)
    return 0
