"""The package works installed, outside a checkout: wheel -> fresh venv -> demo from a temporary folder.

A wheel installed with its declared dependencies into a new virtual environment, run from a folder with no
checkout on the path (no PYTHONPATH, another working directory): the default config must come from the
package itself, ``init`` must write editable copies, and the merged view must equal a recompute.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest
from pyspark.sql import SparkSession

from tests.helpers import assert_same_view, recompute

ROOT = Path(__file__).resolve().parents[1]


def _run(command: list[str], cwd: Path, timeout: int) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "LAMBDA_PIPELINE_CONFIG")}
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(command[:4])}: {result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bin/ folder of a fresh venv holding the wheel built from this checkout's committed files."""
    base = tmp_path_factory.mktemp("wheel")
    source = base / "source"
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    for name in filter(None, files.decode().split("\0")):
        if (ROOT / name).is_file():  # a file deleted in the work tree but not yet in the index is skipped
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            (source / name).write_bytes((ROOT / name).read_bytes())
    dist = base / "dist"
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(dist), str(source)], base, 600)
    (wheel,) = dist.glob("lambda_pipeline-*.whl")
    env = base / "venv"
    venv.create(env, with_pip=True)
    _run([str(env / "bin" / "python"), "-m", "pip", "install", "-q", str(wheel)], base, 1200)
    return env / "bin"


@pytest.mark.integration
def test_the_installed_wheel_runs_the_demo_from_anywhere(installed: Path, tmp_path: Path, spark: SparkSession) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    python = str(installed / "python")
    where = _run([python, "-c", "import lambda_pipeline, sys; print(lambda_pipeline.__file__)"], elsewhere, 60)
    assert "site-packages" in where.stdout and str(ROOT) not in where.stdout

    workdir = tmp_path / "work"
    cli = str(installed / "lambda-pipeline")
    demo = _run([cli, "demo", "--events", "400", "--seed", "11", "--workdir", str(workdir)], elsewhere, 900)
    assert "merged      :       400" in demo.stdout

    # The merged view the installed CLI serves, against a recompute from master by this test's own Spark.
    query = _run(
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


@pytest.mark.integration
def test_init_writes_editable_configs_that_config_reads(installed: Path, tmp_path: Path) -> None:
    cli = str(installed / "lambda-pipeline")
    _run([cli, "init", str(tmp_path / "conf")], tmp_path, 60)
    written = sorted(p.name for p in (tmp_path / "conf").glob("*.yaml"))
    assert written == sorted(p.name for p in (ROOT / "conf").glob("*.yaml"))
    config = tmp_path / "conf" / "local.yaml"
    config.write_text(config.read_text().replace("pipeline: clickstream", "pipeline: nope"))
    result = subprocess.run(
        [cli, "batch", "--config", str(config), "--workdir", str(tmp_path / "w")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2 and "unknown pipeline 'nope'" in result.stderr, result.stderr
    again = subprocess.run([cli, "init", str(tmp_path / "conf")], cwd=tmp_path, capture_output=True, text=True)
    assert again.returncode == 1 and "already there" in again.stderr and "--force" in again.stderr
