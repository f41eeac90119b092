"""A local server run as a detached background process, tracked through files under one ``base_dir``.

The Kafka broker and the S3 server share this life cycle: a pid file so that one process can start
the server and another query or stop it, a log the failure messages quote, a JSON state file (the
port it runs on, and whatever else the server keeps), a bounded wait for readiness and a
SIGTERM-then-SIGKILL stop that never signals an unrelated process which reused the pid. Subclasses
supply the command line check, the readiness probe and the wording of their messages.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

from lambda_pipeline.core.errors import EnvironmentProblem

__all__ = ["HOST", "ManagedProcess", "command_line", "free_port", "port_in_use"]

HOST = "127.0.0.1"
_STOP_POLL_SECONDS = 0.1
_KILL_WAIT_SECONDS = 10.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (for tests; racy by nature)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def port_in_use(port: int, host: str = HOST) -> bool:
    """True if ``host:port`` cannot be bound, i.e. another socket listens there.

    SO_REUSEADDR as the JVM sets it, so a port in TIME_WAIT after a broker restart counts as free.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def command_line(pid: int) -> str | None:
    """The command line of a live (non-zombie) process, or None."""
    proc = Path("/proc")
    if proc.joinpath("self").exists():
        try:
            stat = proc.joinpath(str(pid), "stat").read_text()
            if stat.rsplit(")", 1)[-1].split()[0] in ("Z", "X"):
                return None
            return proc.joinpath(str(pid), "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, IndexError):
            return None
    try:  # macOS and other systems without /proc
        out = subprocess.run(
            ["ps", "-o", "stat=,command=", "-p", str(pid)], capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return None
    if not out or out.split()[0].startswith("Z"):
        return None
    return out.split(None, 1)[1] if " " in out else ""


class ManagedProcess(ABC):
    """One server process on ``HOST:port`` whose pid, log and state files live under ``base_dir``.

    Subclasses set the class attributes below and implement ``_address``, ``_owns`` and ``_answers``;
    their ``start`` composes ``_already_running``, ``_check_free``, ``_spawn`` and ``_await_ready``.
    """

    _file_stem: ClassVar[str]  # "<stem>.pid", "<stem>.log" and "<stem>.json" under base_dir
    _label: ClassVar[str]  # subject of the messages: "the Kafka broker"
    _base_dir_role: ClassVar[str]  # how the server relates to base_dir in messages: "with storage"
    _cli_verb: ClassVar[str]  # the CLI group that stops it: "lambda-pipeline <verb> stop"
    _port_hint: ClassVar[str]  # how to choose another port, quoted when the port is taken
    _ready_poll_seconds: ClassVar[float] = 0.1
    # A start that timed out: SIGTERM grace before SIGKILL (None: SIGKILL at once), and what the error adds.
    _abandon_grace_seconds: ClassVar[float | None] = None
    _stopped_note: ClassVar[str] = ""

    def __init__(self, base_dir: str | Path, port: int) -> None:
        self.base_dir = Path(base_dir).expanduser().resolve()
        self.port = int(port)
        self._proc: subprocess.Popen[bytes] | None = None

    # -- hooks ----------------------------------------------------------------------------------------------------
    @property
    @abstractmethod
    def _address(self) -> str:
        """Where clients reach the server, as the messages show it."""

    @abstractmethod
    def _owns(self, cmdline: str) -> bool:
        """Whether a live process's command line is this server's (and not a stranger that reused the pid)."""

    @abstractmethod
    def _answers(self, remaining: float) -> bool:
        """One readiness probe, bounded by about ``remaining`` seconds; exceptions count as not ready."""

    # -- files ----------------------------------------------------------------------------------------------------
    @property
    def log_file(self) -> Path:
        return self.base_dir / f"{self._file_stem}.log"

    @property
    def pid_file(self) -> Path:
        return self.base_dir / f"{self._file_stem}.pid"

    @property
    def state_file(self) -> Path:
        return self.base_dir / f"{self._file_stem}.json"

    def _state(self) -> dict[str, Any]:
        try:
            state = json.loads(self.state_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return state if isinstance(state, dict) else {}

    def _save_state(self, **values: Any) -> None:
        """Merge ``values`` into the state file: keys a start does not set (e.g. a cluster id) survive it."""
        state = {**self._state(), **values}
        self._write_atomically(self.state_file, json.dumps(state, indent=2, sort_keys=True) + "\n")

    @staticmethod
    def _write_atomically(file: Path, text: str) -> None:
        """Readers in other processes see the old file or the new one, never half of it."""
        tmp = file.with_suffix(".tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(file)

    def _log_tail(self, offset: int = 0, lines: int = 8) -> str:
        try:
            with self.log_file.open("rb") as log:
                log.seek(offset)
                text = log.read().decode(errors="replace")
        except OSError:
            return "(no log)"
        tail = [line.strip() for line in text.strip().splitlines() if line.strip()][-lines:]
        return " | ".join(tail) or "(empty)"

    # -- process identity ---------------------------------------------------------------------------------------
    def _recorded_pid(self) -> int | None:
        try:
            return int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None

    def _recorded_port(self) -> int:
        """The port the last start of this ``base_dir`` used (the running server's, while it runs)."""
        return int(self._state().get("port", self.port))

    def _is_ours(self, pid: int) -> bool:
        """Alive and really this server: guards against signalling an unrelated process that reused the pid."""
        if self._proc is not None and self._proc.pid == pid and self._proc.poll() is not None:
            return False
        cmdline = command_line(pid)
        return cmdline is not None and self._owns(cmdline)

    def _running_pid(self) -> int | None:
        pid = self._recorded_pid()
        return pid if pid is not None and self._is_ours(pid) else None

    def _running(self) -> tuple[int, int] | None:
        """(pid, port) of this ``base_dir``'s live server, or None."""
        pid = self._running_pid()
        return None if pid is None else (pid, self._recorded_port())

    # -- start ----------------------------------------------------------------------------------------------------
    def _already_running(self) -> bool:
        """True if this ``base_dir``'s server runs on ``self.port``; an error if it runs on another one."""
        running = self._running()
        if running is None:
            return False
        pid, actual = running
        if actual != self.port:
            raise EnvironmentProblem(
                f"{self._label} {self._base_dir_role} {self.base_dir} already runs on {HOST}:{actual} (pid {pid}); "
                f"stop it first (lambda-pipeline {self._cli_verb} stop) to run it on port {self.port}"
            )
        return True

    def _check_free(self, port: int, what: str = "port") -> None:
        if port_in_use(port):
            raise EnvironmentProblem(
                f"{what} {port} on {HOST} is already in use by another process, so {self._label} cannot listen "
                f"there; stop that process (find it with: ss -ltnp 'sport = :{port}') or use another port "
                f"({self._port_hint})"
            )

    def _spawn(self, command: Sequence[str], what: str, env: Mapping[str, str] | None = None) -> int:
        """Launch ``command`` detached, logging to ``log_file``, and record its pid; the log offset of its output.

        Own session: Ctrl-C in the terminal that started it, or the end of that process, leaves it running.
        """
        with self.log_file.open("ab") as log:
            log.write(
                f"=== lambda-pipeline: starting {what} on {self._address} "
                f"at {time.strftime('%Y-%m-%d %H:%M:%SZ', time.gmtime())} ===\n".encode()
            )
            log.flush()
            offset = log.tell()
            self._proc = subprocess.Popen(
                list(command),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.base_dir,
                env=None if env is None else dict(env),
                start_new_session=True,
                close_fds=True,
            )
        self._write_atomically(self.pid_file, f"{self._proc.pid}\n")
        return offset

    def _await_ready(self, deadline: float, log_offset: int | None) -> None:
        """Probe until the server answers; fail with the log's tail if it dies or ``deadline`` passes.

        ``log_offset`` is None for a server some earlier start launched: on a timeout it is left running.
        One this start launched (``log_offset`` from ``_spawn``) is stopped, so no half-started server stays.
        """
        while True:
            if self._proc is not None and (code := self._proc.poll()) is not None:
                self.pid_file.unlink(missing_ok=True)
                raise EnvironmentProblem(
                    f"{self._label} exited during start-up (exit code {code}); last lines of {self.log_file}: "
                    f"{self._log_tail(log_offset or 0)}"
                )
            with contextlib.suppress(Exception):  # not ready yet: retry until the deadline
                if self._answers(deadline - time.monotonic()):
                    return
            if time.monotonic() > deadline:
                started = self._proc if log_offset is not None else None
                if started is not None:
                    self._terminate(started.pid, self._abandon_grace_seconds)
                    self.pid_file.unlink(missing_ok=True)
                raise EnvironmentProblem(
                    f"{self._label} did not answer on {self._address} within the start timeout"
                    f"{self._stopped_note if started is not None else ''}. "
                    f"Last lines of {self.log_file}: {self._log_tail(log_offset or 0)}"
                )
            time.sleep(self._ready_poll_seconds)

    # -- stop -----------------------------------------------------------------------------------------------------
    def _alive(self, pid: int) -> bool:
        if self._proc is not None and self._proc.pid == pid:
            return self._proc.poll() is None  # also reaps our own child, so it leaves no zombie
        return command_line(pid) is not None

    def _signal_and_wait(self, pid: int, sig: signal.Signals, timeout: float) -> bool:
        """Send ``sig`` and wait (bounded) for the process to go; True if it did."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        deadline = time.monotonic() + timeout
        while self._alive(pid):
            if time.monotonic() > deadline:
                return False
            time.sleep(_STOP_POLL_SECONDS)
        return True

    def _terminate(self, pid: int, grace: float | None) -> bool:
        """SIGTERM, then SIGKILL after ``grace`` seconds (at once if None); True if SIGTERM was enough."""
        if grace is not None and self._signal_and_wait(pid, signal.SIGTERM, grace):
            return True
        self._signal_and_wait(pid, signal.SIGKILL, _KILL_WAIT_SECONDS)
        return False

    def stop(self, timeout: float = 30.0) -> bool:
        """SIGTERM, SIGKILL after ``timeout``; False only if it had to be killed. Not running is not an error."""
        pid = self._running_pid()
        clean = pid is None or self._terminate(pid, timeout)
        self.pid_file.unlink(missing_ok=True)
        return clean

    def kill(self) -> bool:
        """SIGKILL, as a crash would; True if a running server was killed."""
        pid = self._running_pid()
        if pid is not None:
            self._signal_and_wait(pid, signal.SIGKILL, _KILL_WAIT_SECONDS)
        self.pid_file.unlink(missing_ok=True)
        return pid is not None
