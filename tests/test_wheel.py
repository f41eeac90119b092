"""The package works installed, outside a checkout: wheel -> fresh venv -> demo from a temporary folder.

A wheel installed with its declared dependencies into a new virtual environment, run from a folder with no
checkout on the path (no PYTHONPATH, another working directory): the default config must come from the
package itself, and the merged view must equal a recompute. ``new`` from the wheel: ``tests/test_new.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pyspark.sql import SparkSession

from tests.helpers import assert_same_view, recompute
from tests.wheel_support import ROOT, build_wheel, run_outside, venv_with_wheel


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bin/ folder of a fresh venv holding the wheel built from this checkout's committed files."""
    base = tmp_path_factory.mktemp("wheel")
    return venv_with_wheel(build_wheel(base), base / "venv", with_dependencies=True)


@pytest.mark.integration
def test_the_installed_wheel_runs_the_demo_from_anywhere(installed: Path, tmp_path: Path, spark: SparkSession) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    python = str(installed / "python")
    where = run_outside([python, "-c", "import lambda_pipeline, sys; print(lambda_pipeline.__file__)"], elsewhere, 60)
    assert "site-packages" in where.stdout and str(ROOT) not in where.stdout

    workdir = tmp_path / "work"
    cli = str(installed / "lambda-pipeline")
    demo = run_outside([cli, "demo", "--events", "400", "--seed", "11", "--workdir", str(workdir)], elsewhere, 900)
    assert "merged      :       400" in demo.stdout

    # The merged view the installed CLI serves, against a recompute from master by this test's own Spark.
    query = run_outside(
        [
            cli,
            "query",
            "SELECT * FROM serving.page_activity",
            "--format",
            "json",
            "--limit",
            "100000",
            "--workdir",
            str(workdir),
        ],
        elsewhere,
        300,
    )
    served = [json.loads(line) for line in query.stdout.splitlines()]
    got = {(row["page"], row["window_start"]): row for row in served}
    expected = {
        (page, str(window)): row
        for (page, window), row in recompute(spark, f"{workdir}/warehouse/master/master_events").items()
    }
    assert_same_view(got, expected, users_tolerance=0.02)
