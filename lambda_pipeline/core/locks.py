"""Coordination between processes: one exclusive file lock (fetching jars), and whether a process still runs."""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from lambda_pipeline.core.errors import EnvironmentProblem

__all__ = ["file_lock", "process_alive"]


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


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this host (one owned by another user counts as running)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
