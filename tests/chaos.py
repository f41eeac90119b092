"""Crash the pipeline on purpose: SIGKILL the ingest process at random points, restart it.

Used by the crash tests (tests/test_kafka_crash.py, a few dozen kills) and by
``bench/crash_loop.py`` (hundreds). The process is the real CLI verb
(``lambda-pipeline ingest``, which writes master, quarantine and the speed
partials) in its own JVM, so a kill loses whatever a real crash loses. Two kinds
of kill point:

- ``random``: after a random uptime (often mid-micro-batch, sometimes during start-up);
- ``on_commit``: the instant a new Delta commit of one of the process's output
  tables appears. After a master commit, that is between the one hop's master and
  speed commits; after a speed commit, between the data commits and the
  checkpoint's record of the micro-batch: the windows where a non-idempotent
  sink duplicates or a naive one-hop loses the partials.

Every wait is bounded by a deadline; nothing here sleeps to synchronise.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import lambda_pipeline.cli as cli

__all__ = ["FAST_START_JVM", "ChaosReport", "PipelineProcess", "run_chaos"]

VERBS = ("ingest",)
# The jobs here live seconds before the next SIGKILL, so start-up dominates: C1 alone (no C2 compilation)
# and the serial collector took a (then separate) speed job's start from 21.6 s to 16.4 s until its stream
# ran (idle 2-core machine). JIT flags change no semantics; run_chaos(java_options=None) runs as deployed.
FAST_START_JVM = "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC"


def _commits(log_dir: Path) -> int:
    """Number of Delta commits in a table's ``_delta_log`` (0 when the table does not exist yet)."""
    try:
        return sum(1 for name in os.listdir(log_dir) if name.endswith(".json") and name[:20].isdigit())
    except FileNotFoundError:
        return 0


class PipelineProcess:
    """One CLI verb as a child process, restartable, its output in a log file per start."""

    def __init__(
        self,
        verb: str,
        workdir: Path,
        overrides: Sequence[str],
        config: str | None = None,
        java_options: str | None = None,
    ) -> None:
        self.verb, self.workdir, self.overrides, self.config = verb, workdir, list(overrides), config
        self.env = None if java_options is None else {**os.environ, "JAVA_TOOL_OPTIONS": java_options}
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        (workdir / "logs").mkdir(parents=True, exist_ok=True)

    def command(self, *extra: str) -> list[str]:
        cmd = [sys.executable, "-m", cli.__name__, self.verb, "--workdir", str(self.workdir), *extra]
        if self.config:
            cmd += ["--config", self.config]
        for item in self.overrides:
            cmd += ["--set", item]
        return cmd

    def start(self) -> None:
        if self.alive:
            return
        self.starts += 1
        log = open(self.workdir / "logs" / f"{self.verb}-{self.starts:03d}.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            self.command(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=self.env
        )
        log.close()

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL the whole process group (the Python driver and its JVM), then reap it."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self, timeout: float = 60.0) -> int | None:
        """SIGTERM (the CLI stops its query between micro-batches), SIGKILL after ``timeout``."""
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return None

    def ready(self) -> bool:
        """Whether the job has started its stream (the CLI prints one line then)."""
        path = self.workdir / "logs" / f"{self.verb}-{self.starts:03d}.log"
        try:
            return f"{self.verb}: ".encode() in path.read_bytes()
        except FileNotFoundError:
            return False

    def last_log(self, lines: int = 20) -> str:
        path = self.workdir / "logs" / f"{self.verb}-{self.starts:03d}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""


@dataclass
class ChaosReport:
    kills: dict[str, int] = field(default_factory=lambda: {v: 0 for v in VERBS})
    on_commit_kills: int = 0
    startup_kills: int = 0
    early_exits: list[str] = field(default_factory=list)
    seconds: float = 0.0
    ready_seconds: dict[str, list[float]] = field(default_factory=lambda: {v: [] for v in VERBS})
    """Per start that came up: seconds from the process start to its stream running (what a restart costs)."""

    def median_ready(self) -> dict[str, float | None]:
        return {v: round(statistics.median(s), 1) if s else None for v, s in self.ready_seconds.items()}

    @property
    def total(self) -> int:
        return sum(self.kills.values())


def _wait(condition, until: float, interval: float) -> bool:
    """Poll ``condition`` until it holds or the deadline passes (bounded)."""
    while time.monotonic() < until:
        if condition():
            return True
        time.sleep(interval)  # polling a child process and its files, bounded by ``until``
    return condition()


def _crash_loop(
    proc: PipelineProcess,
    kills: int,
    rng: random.Random,
    report: ChaosReport,
    lock: threading.Lock,
    uptime: tuple[float, float],
    on_commit_fraction: float,
    startup_fraction: float,
    watch: Sequence[Path],
    deadline: float,
) -> None:
    """Kill one process ``kills`` times: mostly once it runs (random uptime or at a commit), sometimes at start-up."""
    done = 0
    while done < kills and time.monotonic() < deadline:
        proc.start()
        started = time.monotonic()
        roll = rng.random()
        if roll >= startup_fraction:  # let it come up first: kills during start-up alone prove little
            _wait(lambda: not proc.alive or proc.ready(), min(deadline, time.monotonic() + 180), 0.2)
            if proc.alive and proc.ready():
                with lock:
                    report.ready_seconds[proc.verb].append(time.monotonic() - started)
        on_commit = bool(watch) and roll >= startup_fraction and rng.random() < on_commit_fraction
        if roll < startup_fraction:
            _wait(lambda: not proc.alive, time.monotonic() + rng.uniform(0.5, 6.0), 0.1)
        elif on_commit:
            log = rng.choice(list(watch))
            seen = _commits(log)
            _wait(
                lambda log=log, seen=seen: not proc.alive or _commits(log) > seen,
                min(deadline, time.monotonic() + 90),
                0.01,
            )
        else:
            _wait(lambda: not proc.alive, min(deadline, time.monotonic() + rng.uniform(*uptime)), 0.1)
        if not proc.alive:  # died by itself: a finding, not a kill
            with lock:
                report.early_exits.append(f"{proc.verb} exited with {proc.proc.returncode}: {proc.last_log(8)}")
                if len(report.early_exits) > 3:
                    raise RuntimeError("a pipeline process keeps exiting by itself:\n" + "\n".join(report.early_exits))
            continue
        proc.kill()
        done += 1
        with lock:
            report.kills[proc.verb] += 1
            report.on_commit_kills += on_commit
            report.startup_kills += roll < startup_fraction
    proc.start()  # leave it running; run_chaos stops it cleanly


def run_chaos(
    workdir: Path,
    overrides: Sequence[str],
    *,
    kills: int,
    seed: int = 0,
    uptime: tuple[float, float] = (2.0, 20.0),
    on_commit_fraction: float = 0.3,
    startup_fraction: float = 0.1,
    output_logs: dict[str, Sequence[Path]] | None = None,
    deadline_seconds: float = 1800.0,
    config: str | None = None,
    only: str | None = None,
    java_options: str | None = FAST_START_JVM,
) -> ChaosReport:
    """Run ingest, SIGKILL it ``kills`` times, restart it each time.

    ``only`` names the verb every kill aims at (the only one now: ``ingest``).
    ``java_options`` become the children's ``JAVA_TOOL_OPTIONS`` (None: the environment's own).

    ``output_logs`` maps a verb to the ``_delta_log`` folders of the tables it commits to (for
    ``on_commit`` kills, each aimed at one of them at random). Bounded by ``kills`` and by
    ``deadline_seconds``; the process is stopped cleanly (SIGTERM) at the end.
    """
    procs = {verb: PipelineProcess(verb, workdir, overrides, config, java_options) for verb in VERBS}
    report = ChaosReport()
    lock = threading.Lock()
    start = time.monotonic()
    deadline = start + deadline_seconds
    errors: list[BaseException] = []

    def loop(verb: str, n: int, loop_seed: int) -> None:
        try:
            _crash_loop(
                procs[verb],
                n,
                random.Random(loop_seed),
                report,
                lock,
                uptime,
                on_commit_fraction,
                startup_fraction,
                (output_logs or {}).get(verb, ()),
                deadline,
            )
        except BaseException as exc:
            errors.append(exc)

    shares = {"ingest": kills}
    if only is not None:
        shares = {verb: kills if verb == only else 0 for verb in VERBS}
    threads = [threading.Thread(target=loop, args=(v, shares[v], seed * 31 + i)) for i, v in enumerate(VERBS)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=deadline_seconds + 300)
    finally:
        for proc in procs.values():
            proc.stop()
        report.seconds = time.monotonic() - start
    if errors:
        raise errors[0]
    return report
