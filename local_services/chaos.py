"""Crash the pipeline on purpose: SIGKILL the ingest and speed processes at random points, restart them.

Used by the crash tests (tests/test_kafka_crash.py, a few dozen kills) and by
``bench/crash_loop.py`` (hundreds). The processes are the real CLI verbs
(``lambda-pipeline ingest`` / ``speed``) in their own JVMs, so a kill loses
whatever a real crash loses. Two kinds of kill point:

- ``random``: after a random uptime (often mid-micro-batch, sometimes during start-up);
- ``on_commit``: the instant a new Delta commit of the process's output table
  appears, i.e. after the data commit and before Spark records the micro-batch
  in its checkpoint: the exact window where a non-idempotent sink duplicates.

Every wait is bounded by a deadline; nothing here sleeps to synchronise.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["ChaosReport", "PipelineProcess", "run_chaos"]

VERBS = ("ingest", "speed")


def _commits(log_dir: Path) -> int:
    """Number of Delta commits in a table's ``_delta_log`` (0 when the table does not exist yet)."""
    try:
        return sum(1 for name in os.listdir(log_dir) if name.endswith(".json") and name[:20].isdigit())
    except FileNotFoundError:
        return 0


class PipelineProcess:
    """One CLI verb as a child process, restartable, its output in a log file per start."""

    def __init__(self, verb: str, workdir: Path, overrides: Sequence[str], config: str | None = None) -> None:
        self.verb, self.workdir, self.overrides, self.config = verb, workdir, list(overrides), config
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        (workdir / "logs").mkdir(parents=True, exist_ok=True)

    def command(self, *extra: str) -> list[str]:
        cmd = [sys.executable, "-m", "pipelines.cli", self.verb, "--workdir", str(self.workdir), *extra]
        if self.config:
            cmd += ["--config", self.config]
        for item in self.overrides:
            cmd += ["--set", item]
        return cmd

    def start(self) -> None:
        self.starts += 1
        log = open(self.workdir / "logs" / f"{self.verb}-{self.starts:03d}.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
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

    def last_log(self, lines: int = 20) -> str:
        path = self.workdir / "logs" / f"{self.verb}-{self.starts:03d}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""


@dataclass
class ChaosReport:
    kills: dict[str, int] = field(default_factory=lambda: {v: 0 for v in VERBS})
    on_commit_kills: int = 0
    early_exits: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def total(self) -> int:
        return sum(self.kills.values())


def run_chaos(
    workdir: Path,
    overrides: Sequence[str],
    *,
    kills: int,
    seed: int = 0,
    uptime: tuple[float, float] = (3.0, 15.0),
    on_commit_fraction: float = 0.3,
    output_logs: dict[str, Path] | None = None,
    deadline_seconds: float = 1800.0,
    config: str | None = None,
) -> ChaosReport:
    """Run ingest and speed, SIGKILL one of them ``kills`` times, restart each time; stop both cleanly.

    ``output_logs`` maps a verb to the ``_delta_log`` folder of the table it commits to (for
    ``on_commit`` kills). The loop is bounded by ``kills`` and by ``deadline_seconds``.
    """
    rng = random.Random(seed)
    procs = {verb: PipelineProcess(verb, workdir, overrides, config) for verb in VERBS}
    report = ChaosReport()
    start = time.monotonic()
    deadline = start + deadline_seconds
    for proc in procs.values():
        proc.start()
    try:
        while report.total < kills and time.monotonic() < deadline:
            verb = rng.choice(VERBS)
            victim = procs[verb]
            watch = (output_logs or {}).get(verb)
            on_commit = watch is not None and rng.random() < on_commit_fraction
            until = time.monotonic() + rng.uniform(*uptime) * (4 if on_commit else 1)
            seen = _commits(watch) if on_commit and watch else 0
            while time.monotonic() < min(until, deadline):
                if not victim.alive:
                    break
                if on_commit and watch and _commits(watch) > seen:
                    break
                time.sleep(0.02 if on_commit else 0.2)  # polling the process and its table, deadline-bounded
            if not victim.alive:  # died by itself: a finding, not a kill
                report.early_exits.append(f"{verb} exited with {victim.proc.returncode}: {victim.last_log(5)}")
                if len(report.early_exits) > 3:
                    raise RuntimeError(
                        "pipeline processes keep exiting by themselves:\n" + "\n".join(report.early_exits)
                    )
            else:
                victim.kill()
                report.kills[verb] += 1
                report.on_commit_kills += on_commit
            victim.start()
    finally:
        for proc in procs.values():
            proc.stop()
        report.seconds = time.monotonic() - start
    return report
