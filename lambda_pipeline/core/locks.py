"""Coordination between processes: one exclusive file lock (fetching jars), and whether a process still runs."""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from lambda_pipeline.core.errors import EnvironmentProblem

__all__ = ["file_lock", "process_alive", "process_identity"]


@contextmanager
def file_lock(path: Path, timeout: float, doing: str = "resolving jars") -> Iterator[None]:
    """Exclusive ``flock`` on ``path``: a second process waits (bounded) instead of racing the first.

    The kernel drops the lock when its holder dies, so a killed process never leaves it stuck.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+") as handle:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise EnvironmentProblem(
                        f"another process has held {path} for over {timeout:.0f}s while {doing}; "
                        "wait for it to finish, or stop it"
                    ) from None
                time.sleep(0.5)  # polling the lock, bounded by the deadline
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def process_alive(pid: int, identity: str | None = None) -> bool:
    """Whether process ``pid`` runs on this host (one owned by another user counts as running).

    With ``identity`` (from :func:`process_identity`), only if it is still the same process: a pid that was
    reused after a restart or a reboot, or a container's pid namespace started again, does not count.
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    if identity is None:
        return True
    now = process_identity(pid)
    return now is None or now == identity


def process_identity(pid: int) -> str | None:
    """The boot and the start time of process ``pid`` (Linux's ``/proc``), or None where they cannot be read.

    Together with the pid they name one process for good: no later process of this machine has both.
    """
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2 :].split()  # the command name may hold spaces and parentheses
    return f"{boot}:{fields[19]}" if len(fields) > 19 else None
