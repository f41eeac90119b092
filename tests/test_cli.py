"""The command line as a user meets it: clear errors without Spark, and the demo end to end."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args: str, timeout: int = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lambda_pipeline.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def test_bad_config_is_one_clear_line(tmp_path: Path) -> None:
    conf = tmp_path / "bad.yaml"
    conf.write_text("ingest:\n  trigger: fast\n")
    result = run_cli("batch", "--config", str(conf), timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"error: {conf}: key 'ingest.trigger': expected a duration like '1 second', '500 ms' or '5 minutes', got 'fast'"
    )


def test_bad_override_names_the_key() -> None:
    result = run_cli("query", "SELECT 1", "--set", "spark.shuffle_partitions=-1", timeout=60)
    assert result.returncode == 2 and "key 'spark.shuffle_partitions'" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.integration
def test_demo_runs_end_to_end_and_reruns_and_spark_submit_reads_it(tmp_path: Path) -> None:
    workdir = tmp_path / "demo"
    first = run_cli("demo", "--events", "600", "--seed", "4", "--workdir", str(workdir))
    assert first.returncode == 0, first.stderr[-3000:]
    assert "batch layer :       480" in first.stdout
    assert "speed layer :       120" in first.stdout
    assert "merged      :       600" in first.stdout
    again = run_cli("demo", "--events", "100", "--seed", "5", "--workdir", str(workdir))
    assert again.returncode == 0, again.stderr[-3000:]
    assert "merged      :       700" in again.stdout
    query = run_cli(
        "query", "SELECT sum(events) AS n FROM serving.page_activity", "--format", "csv", "--workdir", str(workdir)
    )
    assert query.returncode == 0 and query.stdout.splitlines() == ["n", "700"]

    # The spark-submit entry file of the checkout reads what the CLI wrote (no artifact: --packages, PYTHONPATH).
    import pyspark

    from lambda_pipeline.core.jvm_packages import DELTA_COORDINATE

    submit = Path(sys.executable).parent / "spark-submit"
    result = subprocess.run(
        [
            str(submit),
            "--master",
            "local[2]",
            "--packages",
            DELTA_COORDINATE,
            "pipelines/jobs/query_job.py",
            "SELECT sum(events) AS n FROM serving.page_activity",
            "--format",
            "csv",
            "--workdir",
            str(workdir),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
        env={
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "SPARK_HOME": str(Path(pyspark.__file__).parent),
            "PYSPARK_PYTHON": sys.executable,
        },
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.splitlines()[-2:] == ["n", "700"]


@pytest.mark.parametrize("fmt", ["csv", "json"])
def test_a_cut_answer_says_so_on_stderr_and_keeps_stdout_well_formed(fmt: str, capsys) -> None:
    from lambda_pipeline.cli.output import print_rows

    printed = print_rows(["page", "events"], [("/a", 1), ("/b", 2), ("/c", 3)], fmt, limit=2)
    out, err = capsys.readouterr()
    assert printed == 2
    assert err.strip() == "query: the answer has more than 2 rows; printed the first 2 (use --limit)"
    lines = out.splitlines()
    assert len(lines) == (3 if fmt == "csv" else 2) and "/c" not in out


def test_an_answer_within_the_limit_prints_no_note(capsys) -> None:
    from lambda_pipeline.cli.output import print_rows

    print_rows(["n"], [(1,), (2,)], "csv", limit=2)
    assert capsys.readouterr().err == ""


def test_demo_with_too_few_events_is_one_clear_line(tmp_path: Path) -> None:
    result = run_cli("demo", "--events", "5", "--workdir", str(tmp_path / "w"), timeout=60)
    assert result.returncode == 1
    assert result.stderr.strip().startswith("error: demo --events 5: the demo needs at least 10 events")
    assert "Traceback" not in result.stderr


def test_the_dead_speed_once_flag_is_gone() -> None:
    from lambda_pipeline.cli.parser import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["speed", "--once"])


@pytest.mark.integration
def test_demo_dashboard_stops_cleanly_on_ctrl_c(tmp_path: Path) -> None:
    """Ctrl-C while the live demo runs stops ingest, the batches and the server, with no stack trace."""
    import signal
    import time

    out, err = tmp_path / "out.txt", tmp_path / "err.txt"
    command = [sys.executable, "-m", "lambda_pipeline.cli", "demo", "--events", "300", "--dashboard"]
    command += ["--rate", "100", "--workdir", str(tmp_path / "w"), "--set", "serve.port=0"]
    with out.open("w") as stdout, err.open("w") as stderr:
        demo = subprocess.Popen(
            command, stdout=stdout, stderr=stderr, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}
        )
        try:
            deadline = time.monotonic() + 300
            while "live: dashboard at" not in out.read_text() and time.monotonic() < deadline:
                assert demo.poll() is None, err.read_text()[-3000:]
                time.sleep(0.5)  # polling the demo's own output, bounded by the deadline
            time.sleep(3)  # a few micro-batches under load, so that the stop meets one running
            demo.send_signal(signal.SIGINT)
            demo.wait(timeout=180)
        finally:
            if demo.poll() is None:
                demo.kill()
    errors = err.read_text()
    assert demo.returncode == 0, errors[-3000:]
    assert "live: stopping" in out.read_text()
    # What a stop that cut a micro-batch or left listeners behind prints: Python and Java traces, the stream's
    # failure, the listener bus calling a Python that is gone.
    for noise in ("Traceback", "Exception", "StackOverflowError", "refused", "ERROR MicroBatchExecution"):
        assert noise not in errors, errors[-3000:]
    assert "ERROR StreamingQueryListenerBus" not in errors
