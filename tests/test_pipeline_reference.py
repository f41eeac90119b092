"""A user's pipeline by reference, and every bad declaration or reference refused with one line that says why;
nothing starts."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest
from pyspark.sql import types as T

import lambda_pipeline as lp
from lambda_pipeline.cli.context import pipeline_of
from lambda_pipeline.core.config_loader import load_settings
from lambda_pipeline.core.errors import ConfigError, ViewDefinitionError
from lambda_pipeline.pipelines.registry import load_pipeline
from tests.user_pipeline import write_module

SCHEMA = T.StructType(
    [
        T.StructField("id", T.StringType()),
        T.StructField("ts", T.TimestampType()),
        T.StructField("name", T.StringType()),
        T.StructField("n", T.LongType()),
        T.StructField("device", T.StructType([T.StructField("site", T.StringType())])),
    ]
)
SOURCE = lp.EventSource("s", SCHEMA, "id", "ts", time_format="epoch_seconds")


def test_the_public_api_is_what_a_user_declares_with() -> None:
    assert set(lp.__all__) >= {
        "EventSource", "View", "Pipeline", "TumblingWindow", "HoppingWindow", "count", "sum_of", "min_of",
        "max_of", "avg_of", "approx_distinct", "approx_quantile",
    }  # fmt: skip
    for name in lp.__all__:
        assert getattr(lp, name).__doc__, f"lp.{name} has no docstring"


@pytest.mark.parametrize(
    ("declare", "message"),
    [
        (lambda: lp.View("v", SOURCE, keys=("nope",), measures={"n": lp.count()}), "key 'nope' is neither"),
        (lambda: lp.View("v", SOURCE, columns={"r": "rand() * 2"}, measures={"n": lp.count()}), "rand() draws"),
        (lambda: lp.View("v", SOURCE, where="ts < current_timestamp", measures={"n": lp.count()}), "reads the clock"),
        (lambda: lp.View("v", SOURCE, columns={"u": "uuid()"}, measures={"n": lp.count()}), "uuid() draws"),
        (lambda: lp.View("v", SOURCE, measures={"t": lp.sum_of("name")}), "view 'v': measure 't': sum(name) needs a"),
        (lambda: lp.View("v", SOURCE, measures={"m": "median"}), "approx_quantile(column, 0.5)"),
        (lambda: lp.View("v", SOURCE, measures={}), "declare at least one measure"),
        (lambda: lp.View("v", SOURCE, columns={"name": "lower(name)"}, measures={"n": lp.count()}), "hides"),
        (lambda: lp.HoppingWindow("ts", "10 minutes", "3 minutes"), "whole multiple"),
        (
            lambda: lp.View("v", SOURCE, window=lp.TumblingWindow("name", "1 minute"), measures={"n": lp.count()}),
            "must be a timestamp",
        ),
        (lambda: lp.EventSource("s", SCHEMA, "id", "ts", time_format="unix"), "time_format 'unix' is not one of"),
        (lambda: lp.EventSource("s", SCHEMA, "id", "name"), "must be declared as TimestampType()"),
        (lambda: lp.Pipeline("p", SOURCE, lp.View("v", SOURCE, measures={"n": lp.count()})), "must be a list"),
    ],
)
def test_a_bad_declaration_is_refused_when_declared(declare, message: str) -> None:
    with pytest.raises(ViewDefinitionError) as refused:
        declare()
    assert message in str(refused.value)


@pytest.mark.parametrize(
    ("columns", "where", "message"),
    [
        ({"x": "nosuch + 1"}, None, "UNRESOLVED_COLUMN"),
        ({"x": "device.nope"}, None, "nope"),
        ({"x": "concat(name"}, None, "PARSE_SYNTAX_ERROR"),
        ({"x": "uniform(0, 10)"}, None, "uniform() gives a different answer on each run"),
        ({}, "device.site", "a filter must be a boolean, this is string"),
    ],
)
def test_a_bad_expression_is_refused_by_spark_before_anything_starts(spark, columns, where, message: str) -> None:
    view = lp.View("v", SOURCE, columns=columns, where=where, measures={"n": lp.count()})
    with pytest.raises(ViewDefinitionError) as refused:
        lp.Pipeline("p", SOURCE, [view]).check(spark)
    assert message in str(refused.value)
    assert str(refused.value).startswith("view 'v': ")


def test_a_derived_column_of_the_wrong_type_for_its_measure_is_refused(spark) -> None:
    view = lp.View("v", SOURCE, columns={"site": "device.site"}, measures={"s": lp.sum_of("site")})
    with pytest.raises(ViewDefinitionError, match=r"sum\(site\) needs a column of type .* but 'site' is string"):
        view.resolve(spark)


def test_bad_references_name_the_reference_and_what_was_found(tmp_path: Path) -> None:
    module = write_module(tmp_path / "proj", "refs_pipeline.py")
    (tmp_path / "proj" / "broken.py").write_text("import lambda_pipeline as lp\nP = lp.Pipeline('p', None, [])\n")
    cases = {
        "mine": "is not a shipped pipeline (clickstream, iot), 'package.module:ATTRIBUTE' or 'path/to/file.py:ATTR",
        f"{tmp_path}/nowhere.py:P": "no file",
        f"{module}:NOPE": "has no attribute 'NOPE'; it defines PIPELINE",
        f"{module}:PAYMENTS": "'PAYMENTS' is a EventSource, not an lp.Pipeline; it defines PIPELINE",
        "no_such_package.pipelines:P": "no module 'no_such_package.pipelines' on the Python path",
        f"{tmp_path}/proj/broken.py:P": "running",
    }
    for ref, message in cases.items():
        with pytest.raises(ConfigError) as refused:
            load_pipeline(ref, origin="--pipeline")
        assert message in str(refused.value), (ref, str(refused.value))
        assert ref in str(refused.value)


def test_a_relative_file_is_found_in_the_current_directory_then_beside_the_config(tmp_path: Path, monkeypatch) -> None:
    config_dir, elsewhere = tmp_path / "conf", tmp_path / "cwd"
    write_module(config_dir, "beside_pipeline.py")
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    found = load_pipeline("beside_pipeline.py:PIPELINE", config_path=config_dir / "local.yaml")
    assert found.name == "payments"
    write_module(elsewhere, "beside_pipeline.py").write_text(
        (config_dir / "beside_pipeline.py").read_text().replace('lp.Pipeline("payments"', 'lp.Pipeline("here"')
    )
    sys.modules.pop("beside_pipeline", None)
    assert load_pipeline("beside_pipeline.py:PIPELINE", config_path=config_dir / "local.yaml").name == "here"


def test_precedence_is_flag_then_set_then_environment_then_file(tmp_path: Path, monkeypatch) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("pipeline: clickstream\n")
    monkeypatch.setenv("LAMBDA_PIPELINE_PIPELINE", "iot")

    def chosen(*overrides: str, flag: str | None = None) -> str:
        args = argparse.Namespace(config=str(config), overrides=list(overrides), pipeline=flag)
        return pipeline_of(args, load_settings(str(config), overrides)).name

    assert chosen() == "iot"  # the environment over the file
    assert chosen("pipeline=clickstream") == "clickstream"  # --set over the environment
    assert chosen("pipeline=clickstream", flag="iot") == "iot"  # --pipeline over everything
    monkeypatch.delenv("LAMBDA_PIPELINE_PIPELINE")
    assert chosen() == "clickstream"


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    return subprocess.run(
        [sys.executable, "-m", "lambda_pipeline.cli", *args], cwd=cwd, env=env, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip


def test_the_cli_refuses_a_bad_reference_in_one_line(tmp_path: Path) -> None:
    done = _cli("batch", "--workdir", str(tmp_path / "w"), "--pipeline", "mine.py:PIPELINE", cwd=tmp_path)
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "mine.py:PIPELINE" in lines[0] and "--pipeline" in lines[0], done.stderr
    assert not (tmp_path / "w").exists()  # nothing started


@pytest.mark.integration
def test_the_cli_refuses_a_bad_expression_before_any_job_starts(tmp_path: Path) -> None:
    (tmp_path / "bad_pipeline.py").write_text(
        write_module(tmp_path / "tmp").read_text().replace('"lower(merchant.country)"', '"lower(merchant.nation)"')
    )
    done = _cli("batch", "--workdir", str(tmp_path / "w"), "--pipeline", "bad_pipeline.py:PIPELINE", cwd=tmp_path)
    assert done.returncode != 0
    errors = [line for line in done.stderr.strip().splitlines() if line.startswith("error")]
    assert len(errors) == 1 and "view 'failed_hourly': column 'country'" in errors[0], done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "w" / "warehouse").exists()
