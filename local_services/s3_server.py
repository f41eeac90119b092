"""A real S3-compatible HTTP server on 127.0.0.1 (moto's standalone server), for local runs and tests.

The pipeline reaches it exactly as it reaches AWS: ``s3a://`` paths through hadoop-aws, over HTTP,
with the S3 protocol. Nothing is patched in-process: the server is a separate Python process, started
and stopped here, so the jobs, the generator and the tests see the same endpoint.

moto keeps buckets and objects in the server's memory: stopping the server discards them (large
objects spill to ``<base_dir>/spool`` while it runs). Log, pid and state files live under ``base_dir``;
the pid file lets one process start the server and another one query or stop it.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lambda_core.errors import EnvironmentProblem, LambdaError
from local_services.kafka_broker import HOST, _command_line, free_port, port_in_use

__all__ = ["DEFAULT_PORT", "S3Server", "S3ServerStatus", "free_port", "server_package_missing"]

DEFAULT_PORT = 9000
_POLL_SECONDS = 0.1
_REQUEST_TIMEOUT = 10.0
_S3_NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"
# moto's server, with werkzeug's one-line-per-request access log turned down to warnings.
_LAUNCHER = (
    "import logging, sys; logging.getLogger('werkzeug').setLevel(logging.WARNING); "
    "from moto.server import main; main(sys.argv[1:])"
)
_INSTALL_HINT = "install it with: pip install -e '.[local]' (or pip install 'moto[server]')"


def server_package_missing() -> str | None:
    """Why moto's server cannot run in this Python, or None when it can."""
    for module in ("moto", "moto.server", "flask", "werkzeug"):
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:
            found = False
        if not found:
            return f"the local S3 server needs the Python package providing '{module}' (moto[server]); {_INSTALL_HINT}"
    return None


@dataclass(frozen=True)
class S3ServerStatus:
    """What ``lambda-pipeline s3 status`` shows; ``pid`` is None when not running."""

    running: bool
    pid: int | None
    port: int
    base_dir: Path
    log_file: Path

    @property
    def endpoint(self) -> str:
        return f"http://{HOST}:{self.port}"


class S3Server:
    """One moto server process bound to 127.0.0.1, its files kept under ``base_dir``.

    ``start`` is idempotent (a no-op when this server already runs on the same port). Any process may
    call ``status``/``stop`` for the same ``base_dir``. Requests are unsigned: moto does not check
    credentials, and this client needs none.
    """

    def __init__(self, base_dir: str | Path, port: int = DEFAULT_PORT, region: str = "us-east-1") -> None:
        self.base_dir = Path(base_dir).expanduser().resolve()
        self.port = int(port)
        self.region = region
        self._proc: subprocess.Popen[bytes] | None = None

    def __repr__(self) -> str:
        return f"S3Server({str(self.base_dir)!r}, port={self.port})"

    # -- files ----------------------------------------------------------------------------------------------------
    @property
    def log_file(self) -> Path:
        return self.base_dir / "s3-server.log"

    @property
    def pid_file(self) -> Path:
        return self.base_dir / "s3-server.pid"

    @property
    def state_file(self) -> Path:
        return self.base_dir / "s3-server.json"

    @property
    def spool_dir(self) -> Path:
        """Where moto spills objects above its in-memory buffer (its TMPDIR)."""
        return self.base_dir / "spool"

    @property
    def endpoint(self) -> str:
        return f"http://{HOST}:{self.port}"

    def _state(self) -> dict[str, Any]:
        try:
            state = json.loads(self.state_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return state if isinstance(state, dict) else {}

    def _write_atomically(self, file: Path, text: str) -> None:
        tmp = file.with_suffix(".tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(file)

    # -- process identity ---------------------------------------------------------------------------------------
    def _recorded(self) -> tuple[int, int] | None:
        """(pid, port) of the server this ``base_dir`` started, from its pid and state files."""
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid, int(self._state().get("port", self.port))

    def _is_ours(self, pid: int, port: int) -> bool:
        """Alive and really this server: guards against signalling an unrelated process that reused the pid."""
        if self._proc is not None and self._proc.pid == pid and self._proc.poll() is not None:
            return False
        cmdline = _command_line(pid)
        return cmdline is not None and "moto.server" in cmdline and f"-p {port}" in cmdline

    def _running(self) -> tuple[int, int] | None:
        recorded = self._recorded()
        return recorded if recorded is not None and self._is_ours(*recorded) else None

    def status(self) -> S3ServerStatus:
        """Whether this ``base_dir``'s server runs, from any process."""
        running = self._running()
        pid, port = running if running is not None else (None, self.port)
        return S3ServerStatus(running is not None, pid, port, self.base_dir, self.log_file)

    # -- start ----------------------------------------------------------------------------------------------------
    def start(self, timeout: float = 60.0) -> None:
        """Start the server and return once it answers S3 requests (at most ``timeout`` seconds)."""
        deadline = time.monotonic() + timeout
        running = self._running()
        if running is not None:
            pid, actual = running
            if actual != self.port:
                raise EnvironmentProblem(
                    f"the S3 server of {self.base_dir} already runs on {HOST}:{actual} (pid {pid}); stop it first "
                    f"(lambda-pipeline s3 stop) to run it on port {self.port}"
                )
            self._wait_ready(deadline, None)
            return
        missing = server_package_missing()
        if missing:
            raise EnvironmentProblem(missing)
        if port_in_use(self.port):
            raise EnvironmentProblem(
                f"port {self.port} on {HOST} is already in use by another process, so the S3 server cannot listen "
                f"there; stop that process (find it with: ss -ltnp 'sport = :{self.port}') or use another port "
                f"(--port, and s3.endpoint=http://{HOST}:<port> for the jobs)"
            )
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self.spool_dir.mkdir(exist_ok=True)
        self._write_atomically(self.state_file, json.dumps({"port": self.port, "region": self.region}) + "\n")
        env = {**os.environ, "TMPDIR": str(self.spool_dir), "PYTHONUNBUFFERED": "1"}
        command = [sys.executable, "-c", _LAUNCHER, "-H", HOST, "-p", str(self.port)]
        with self.log_file.open("ab") as log:
            log.write(
                f"=== lambda-pipeline: starting the S3 server (moto) on {self.endpoint} "
                f"at {time.strftime('%Y-%m-%d %H:%M:%S')} ===\n".encode()
            )
            log.flush()
            offset = log.tell()
            # Own session: Ctrl-C in the terminal that started it, or the end of that process, leaves it running.
            self._proc = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.base_dir,
                env=env,
                start_new_session=True,
                close_fds=True,
            )
        self._write_atomically(self.pid_file, f"{self._proc.pid}\n")
        self._wait_ready(deadline, offset)

    def _wait_ready(self, deadline: float, log_offset: int | None) -> None:
        """Poll ListBuckets until it answers; fail with the log's tail if the process dies or time runs out."""
        while True:
            if self._proc is not None and (code := self._proc.poll()) is not None:
                self.pid_file.unlink(missing_ok=True)
                raise EnvironmentProblem(
                    f"the S3 server exited during start-up (exit code {code}); last lines of {self.log_file}: "
                    f"{self._log_tail(log_offset or 0)}"
                )
            with contextlib.suppress(OSError):
                self._request("GET", "/", timeout=1.0)
                return
            if time.monotonic() > deadline:
                if log_offset is not None:  # we started it: do not leave a half-started server behind
                    self.stop(timeout=5.0)
                raise EnvironmentProblem(
                    f"the S3 server did not answer on {self.endpoint} within the start timeout. "
                    f"Last lines of {self.log_file}: {self._log_tail(log_offset or 0)}"
                )
            time.sleep(_POLL_SECONDS)

    def _log_tail(self, offset: int = 0, lines: int = 8) -> str:
        try:
            with self.log_file.open("rb") as log:
                log.seek(offset)
                text = log.read().decode(errors="replace")
        except OSError:
            return "(no log)"
        tail = [line.strip() for line in text.strip().splitlines() if line.strip()][-lines:]
        return " | ".join(tail) or "(empty)"

    # -- stop -----------------------------------------------------------------------------------------------------
    def _alive(self, pid: int) -> bool:
        if self._proc is not None and self._proc.pid == pid:
            return self._proc.poll() is None  # also reaps our own child, so it leaves no zombie
        return _command_line(pid) is not None

    def _signal_and_wait(self, pid: int, sig: signal.Signals, timeout: float) -> bool:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        deadline = time.monotonic() + timeout
        while self._alive(pid):
            if time.monotonic() > deadline:
                return False
            time.sleep(_POLL_SECONDS)
        return True

    def stop(self, timeout: float = 15.0) -> bool:
        """SIGTERM, SIGKILL after ``timeout``; False only if it had to be killed. Not running is not an error.

        moto keeps the objects in memory: they are gone once the server stops.
        """
        running = self._running()
        clean = True
        if running is not None:
            pid = running[0]
            clean = self._signal_and_wait(pid, signal.SIGTERM, timeout)
            if not clean:
                self._signal_and_wait(pid, signal.SIGKILL, 10.0)
        self.pid_file.unlink(missing_ok=True)
        return clean

    # -- S3 requests (unsigned; enough to set up buckets and to look at what the pipeline wrote) -----------------
    def _request(
        self, method: str, path: str, query: dict[str, str] | None = None, body: bytes | None = None, timeout: float = 0
    ) -> bytes:
        url = self.endpoint + urllib.parse.quote(path) + ("?" + urllib.parse.urlencode(query) if query else "")
        request = urllib.request.Request(url, data=body, method=method)
        if body is not None:
            request.add_header("Content-Type", "application/octet-stream")
        with urllib.request.urlopen(request, timeout=timeout or _REQUEST_TIMEOUT) as response:
            return bytes(response.read())

    def _s3_call(self, what: str, method: str, path: str, **kwargs: Any) -> bytes:
        try:
            return self._request(method, path, **kwargs)
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")[:300]
            raise LambdaError(f"the S3 server refused to {what} (HTTP {exc.code}): {detail}") from None
        except OSError as exc:
            raise EnvironmentProblem(
                f"could not {what} on the S3 server {self.endpoint} ({exc}); is it running? "
                "(check with: lambda-pipeline s3 status)"
            ) from None

    def buckets(self) -> list[str]:
        root = ET.fromstring(self._s3_call("list buckets", "GET", "/"))
        return [e.text or "" for e in root.iter(f"{_S3_NS}Name")]

    def create_bucket(self, name: str) -> bool:
        """Create ``name`` (path-style); False if it already existed."""
        if name in self.buckets():
            return False
        body = None
        if self.region != "us-east-1":
            body = (
                f'<CreateBucketConfiguration xmlns="{_S3_NS[1:-1]}">'
                f"<LocationConstraint>{self.region}</LocationConstraint></CreateBucketConfiguration>"
            ).encode()
        self._s3_call(f"create bucket {name!r}", "PUT", f"/{name}", body=body)
        return True

    def list_keys(self, bucket: str, prefix: str = "") -> list[str]:
        """Every key under ``prefix`` (ListObjectsV2, all pages)."""
        keys: list[str] = []
        query = {"list-type": "2", "prefix": prefix}
        while True:
            root = ET.fromstring(self._s3_call(f"list {bucket}/{prefix}", "GET", f"/{bucket}", query=query))
            keys += [c.findtext(f"{_S3_NS}Key") or "" for c in root.iter(f"{_S3_NS}Contents")]
            token = root.findtext(f"{_S3_NS}NextContinuationToken")
            if root.findtext(f"{_S3_NS}IsTruncated") != "true" or not token:
                return keys
            query = {**query, "continuation-token": token}
