"""Running a job again and again: the ``--every`` of the long-running verbs (``batch``, ``maintain``)."""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["repeat"]


def repeat(every: float | None, run: Callable[[], None]) -> None:
    """Call ``run`` once, then again ``every`` seconds after each run ends; once only when ``every`` is None.

    The pause counts from the end of a run, so runs never overlap however long one takes. Ctrl-C (or SIGTERM
    turned into KeyboardInterrupt by the caller) stops between runs, or interrupts the pause.
    """
    while True:
        run()
        if every is None:
            return
        time.sleep(every)  # the schedule itself
