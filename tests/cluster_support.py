"""Pytest plugin: a Spark standalone cluster on 127.0.0.1, and spark-submit of the built artifact to it.

Register it in ``tests/conftest.py`` (``pytest_plugins``). ``spark_cluster`` starts one master and one
worker (:class:`lambda_pipeline.local_services.spark_cluster.LocalCluster`) for the module that asks for it and
stops them afterwards; :func:`cluster_submit` runs a job of the artifact on it in client mode: the driver is the
spark-submit process on this machine (a Python that imports the project from the zip alone), the executors are
JVMs the worker launches, with the jars the application carries.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import pytest

from lambda_pipeline.local_services.process import free_port
from lambda_pipeline.local_services.spark_cluster import LocalCluster

__all__ = ["Submitted", "cluster_submit", "spark_cluster", "stop_group"]

# The cluster's executors reach the test S3 server with these placeholder keys (moto accepts any): they
# exist only in the worker's environment, as an instance role's would on EMR.
S3_ENV = {"AWS_ACCESS_KEY_ID": "local", "AWS_SECRET_ACCESS_KEY": "local", "AWS_REGION": "us-east-1"}


@pytest.fixture(scope="module")
def spark_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """One master and one worker with four cores (each application takes one), stopped after the module."""
    ports = [free_port() for _ in range(4)]
    cluster = LocalCluster(tmp_path_factory.mktemp("cluster"), ports[0], ports[2], cores=4, memory="4g", env=S3_ENV)
    cluster.worker.port, cluster.worker.ui_port = ports[1], ports[3]
    cluster.start(timeout=120)
    try:
        yield cluster
    finally:
        cluster.stop(timeout=30)


class Submitted:
    """A spark-submit running in the background in its own process group (driver JVM and Python driver)."""

    def __init__(self, process: subprocess.Popen[str], log: Path) -> None:
        self.process = process
        self.log = log

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait(self, timeout: float) -> int:
        return self.process.wait(timeout=timeout)

    def kill(self) -> None:
        """SIGKILL the whole group at once, as a crashed machine would: no shutdown hook runs."""
        stop_group(self.process, signal.SIGKILL)


def stop_group(process: subprocess.Popen[str], sig: signal.Signals) -> None:
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)


def _env(python: Path, extra: Mapping[str, str]) -> dict[str, str]:
    import pyspark

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYSPARK_SUBMIT_ARGS")}
    env.update(SPARK_HOME=str(Path(pyspark.__file__).parent), PYSPARK_PYTHON=str(python))
    env.update(PYSPARK_DRIVER_PYTHON=str(python), SPARK_LOCAL_IP="127.0.0.1", **S3_ENV, **extra)
    return env


def cluster_submit(
    cluster: LocalCluster,
    dist: Path,
    python: Path,
    jars: Sequence[str],
    job: str,
    *args: str,
    cwd: Path,
    log: Path,
    env: Mapping[str, str] | None = None,
    executor_class_path: Sequence[str] = (),
) -> Submitted:
    """Start ``<job>_job.py`` of the artifact in ``dist`` on ``cluster``, in the background; output to ``log``."""
    with log.open("w") as out:
        process = subprocess.Popen(
            cluster.submit_command(dist, job, args, jars=jars, node_jars=executor_class_path),
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=cwd,
            env=_env(python, env or {}),
            start_new_session=True,
        )
    return Submitted(process, log)
