"""A real Spark standalone cluster on 127.0.0.1: one master and one worker, from pyspark's own ``spark-class``.

Local mode runs the driver and the executors in one JVM. A cluster does not: each application's driver
is its own JVM (the ``spark-submit`` that started it), its executors are JVMs the worker launches, and the
jars a job needs reach them through the application (``--jars``), not through the driver's class path. The
tests and demos that must show the jobs work as on EMR (several drivers at once, each with executors in
their own JVMs, leases taken over between drivers) run them on this cluster with ``spark-submit --master
spark://127.0.0.1:<port>``.

The worker offers more cores than the machine has (``cores``, default 4): each long-running application
takes ``spark.cores.max`` of them (1 in the shipped configs) and keeps them for its life, so ingest, batch,
the query server and one more job can run side by side on a laptop, as on a real cluster's several nodes.

Master and worker are two background processes tracked like the other local services
(:mod:`.process`): pid, log and state files under one ``base_dir``; ``lambda-pipeline cluster
start|stop|status`` from any terminal, and the ``spark_cluster`` test fixture, share this class.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from lambda_pipeline.core.errors import EnvironmentProblem
from lambda_pipeline.local_services.process import HOST, ManagedProcess

__all__ = ["DEFAULT_PORT", "DEFAULT_UI_PORT", "ClusterStatus", "LocalCluster", "spark_home"]

DEFAULT_PORT = 7077
DEFAULT_UI_PORT = 8080
_REQUEST_TIMEOUT = 5.0
_DAEMON_MEMORY = "256m"  # the master and worker daemons themselves; executors get the worker's --memory


def spark_home() -> Path:
    """The Spark installation pyspark ships (its ``bin/spark-class``, ``bin/spark-submit`` and ``jars/``)."""
    import pyspark

    home = Path(pyspark.__file__).parent
    if not (home / "bin" / "spark-class").is_file():
        raise EnvironmentProblem(
            f"pyspark at {home} has no bin/spark-class, so no local cluster can start; reinstall it: "
            "pip install --force-reinstall pyspark"
        )
    return home


def _master_json(ui_port: int) -> dict[str, Any]:
    """The master's state as its web UI serves it (``/json/``): status, workers, applications."""
    with urllib.request.urlopen(f"http://{HOST}:{ui_port}/json/", timeout=_REQUEST_TIMEOUT) as answer:
        state = json.loads(answer.read().decode())
    return state if isinstance(state, dict) else {}


def _daemon_env(base_dir: Path, home: Path, extra: Mapping[str, str]) -> dict[str, str]:
    """The environment ``spark-class`` needs: Spark's home, loopback only, logs and work under ``base_dir``.

    Executors inherit the worker's environment: ``extra`` (or the starting shell's variables) is how
    credentials from the environment (``AWS_ACCESS_KEY_ID``, ...) reach them, as an instance role does on EMR.
    """
    env = {k: v for k, v in os.environ.items() if k not in ("PYSPARK_SUBMIT_ARGS", "SPARK_CONF_DIR")}
    env.update(extra)
    env.update(
        SPARK_HOME=str(home),
        SPARK_LOCAL_IP=HOST,
        SPARK_LOG_DIR=str(base_dir / "logs"),
        SPARK_DAEMON_MEMORY=_DAEMON_MEMORY,
        # Finished applications' folders (their jars and logs) are removed from the worker's disk.
        SPARK_WORKER_OPTS="-Dspark.worker.cleanup.enabled=true -Dspark.worker.cleanup.appDataTtl=3600",
    )
    return env


class _Daemon(ManagedProcess):
    """One ``spark-class`` daemon (master or worker); ``spark-class`` execs the JVM, so the pid is the JVM's."""

    _main_class: ClassVar[str]
    _base_dir_role = "of"
    _cli_verb = "cluster"
    _ready_poll_seconds = 0.2
    _abandon_grace_seconds = 5.0

    def __init__(self, base_dir: str | Path, port: int, ui_port: int, env: Mapping[str, str]) -> None:
        super().__init__(base_dir, port)
        self.ui_port = int(ui_port)
        self.env = dict(env)

    def _owns(self, cmdline: str) -> bool:
        return self._main_class in cmdline and f"--webui-port {self._state().get('ui_port', self.ui_port)}" in cmdline

    def _launch(self, home: Path, arguments: list[str], deadline: float) -> None:
        self._check_free(self.port)
        self._check_free(self.ui_port, "web UI port")
        self.base_dir.mkdir(parents=True, exist_ok=True)
        command = [str(home / "bin" / "spark-class"), self._main_class, *arguments]
        offset = self._spawn(command, self._label, env=_daemon_env(self.base_dir, home, self.env))
        self._save_state(port=self.port, ui_port=self.ui_port)
        self._await_ready(deadline, offset)


class _Master(_Daemon):
    _file_stem = "spark-master"
    _label = "the Spark master"
    _main_class = "org.apache.spark.deploy.master.Master"
    _port_hint = "--port and --ui-port of 'lambda-pipeline cluster start'"

    @property
    def _address(self) -> str:
        return f"spark://{HOST}:{self.port}"

    def _answers(self, remaining: float) -> bool:
        return _master_json(self.ui_port).get("status") == "ALIVE"

    def start(self, home: Path, deadline: float) -> None:
        if self._already_running():
            self._await_ready(deadline, None)
            return
        self._launch(home, ["--host", HOST, "--port", str(self.port), "--webui-port", str(self.ui_port)], deadline)


class _Worker(_Daemon):
    _file_stem = "spark-worker"
    _label = "the Spark worker"
    _main_class = "org.apache.spark.deploy.worker.Worker"
    _port_hint = "--port and --ui-port of 'lambda-pipeline cluster start' (the worker takes the next two ports)"

    def __init__(self, base_dir: str | Path, port: int, ui_port: int, env: Mapping[str, str], master: _Master) -> None:
        super().__init__(base_dir, port, ui_port, env)
        self.master = master

    @property
    def _address(self) -> str:
        return f"{HOST}:{self.port}"

    def _answers(self, remaining: float) -> bool:
        workers = _master_json(self.master.ui_port).get("workers", [])
        return any(w.get("state") == "ALIVE" and w.get("port") == self.port for w in workers)

    def start(self, home: Path, deadline: float, cores: int, memory: str) -> None:
        if self._already_running():
            self._await_ready(deadline, None)
            return
        work = self.base_dir / "work"
        shutil.rmtree(work, ignore_errors=True)  # the previous run's application folders
        arguments = ["--host", HOST, "--port", str(self.port), "--webui-port", str(self.ui_port)]
        arguments += ["--cores", str(cores), "--memory", memory, "--work-dir", str(work), self.master._address]
        self._launch(home, arguments, deadline)


@dataclass(frozen=True)
class ClusterStatus:
    """What ``lambda-pipeline cluster status`` shows."""

    master_pid: int | None
    worker_pid: int | None
    master_url: str
    ui_url: str
    cores: int
    cores_used: int
    applications: tuple[str, ...]

    @property
    def running(self) -> bool:
        return self.master_pid is not None and self.worker_pid is not None


class LocalCluster:
    """A standalone master on ``HOST:port`` (web UI ``ui_port``) and one worker (ports ``port+1``, ``ui_port+1``).

    ``start`` is idempotent and returns once the worker has registered with the master; ``stop`` stops both.
    """

    def __init__(
        self,
        base_dir: str | Path,
        port: int = DEFAULT_PORT,
        ui_port: int = DEFAULT_UI_PORT,
        *,
        cores: int = 4,
        memory: str = "6g",
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.base_dir = Path(base_dir).expanduser().resolve()
        self.cores = cores
        self.memory = memory
        self.master = _Master(self.base_dir, port, ui_port, env or {})
        self.worker = _Worker(self.base_dir, port + 1, ui_port + 1, env or {}, self.master)

    @property
    def master_url(self) -> str:
        return f"spark://{HOST}:{self.master.port}"

    def start(self, timeout: float = 90.0) -> None:
        """Start the master, then the worker; at most ``timeout`` seconds in all."""
        deadline = time.monotonic() + timeout
        home = spark_home()
        self.master.start(home, deadline)
        try:
            self.worker.start(home, deadline, self.cores, self.memory)
        except BaseException:
            self.master.stop(timeout=10.0)
            raise

    def stop(self, timeout: float = 30.0) -> bool:
        """Stop the worker (and with it the executors it launched), then the master; False if one was killed."""
        worker_clean = self.worker.stop(timeout)
        return self.master.stop(timeout) and worker_clean

    def submit_command(
        self,
        dist: Path,
        job: str,
        args: Sequence[str] = (),
        *,
        jars: Sequence[str] = (),
        node_jars: Sequence[str] = (),
        conf: Mapping[str, str] | None = None,
    ) -> list[str]:
        """``spark-submit`` of the artifact in ``dist`` (``lambda-pipeline package``): its ``<job>_job.py`` on this
        cluster, in client mode, with the project's zip on ``--py-files`` and ``jars`` on ``--jars``.

        ``node_jars`` are on the driver's and the executors' class paths and are never copied: jars installed on
        every node, as EMRFS is on EMR (here, hadoop-aws and its 690 MB AWS SDK, which the worker would otherwise
        copy into each application's folder). Each job takes one core (``spark.cores.max``) unless ``conf`` says
        otherwise.
        """
        manifest = json.loads((dist / "manifest.json").read_text(encoding="utf-8"))
        settings = {
            "spark.cores.max": "1",
            "spark.executor.cores": "1",
            "spark.executor.memory": "700m",
            "spark.driver.memory": "700m",
            "spark.ui.enabled": "false",
            **(conf or {}),
        }
        if node_jars:
            settings["spark.executor.extraClassPath"] = ":".join(node_jars)
        command = [str(spark_home() / "bin" / "spark-submit"), "--master", self.master_url, "--deploy-mode", "client"]
        for key, value in settings.items():
            command += ["--conf", f"{key}={value}"]
        if node_jars:
            command += ["--driver-class-path", ":".join(node_jars)]
        if jars:
            command += ["--jars", ",".join(jars)]
        return [*command, "--py-files", str(dist / manifest["zip"]), str(dist / f"{job}_job.py"), *args]

    def status(self) -> ClusterStatus:
        """Pids, the master's URLs, and the cores and applications it reports (from any process)."""
        master_pid, worker_pid = self.master._running_pid(), self.worker._running_pid()
        cores = used = 0
        apps: tuple[str, ...] = ()
        if master_pid is not None:
            try:
                state = _master_json(self.master.ui_port)
                cores, used = int(state.get("cores", 0)), int(state.get("coresused", 0))
                apps = tuple(f"{a.get('name')} ({a.get('id')})" for a in state.get("activeapps", []))
            except OSError:
                pass
        ui = f"http://{HOST}:{self.master.ui_port}"
        return ClusterStatus(master_pid, worker_pid, self.master_url, ui, cores, used, apps)
