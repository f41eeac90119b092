"""Session settings the project pins, whatever the cluster's defaults and whatever a config says.

A view's derived columns and filter are SQL whose value depends on them (``hour(ts)`` on the time zone,
``cast('x' as int)`` on ANSI mode): every session of the project runs with these values, and the fingerprint
of every view with expressions records them.
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["PINNED_SESSION"]

PINNED_SESSION: Mapping[str, str] = {"spark.sql.session.timeZone": "UTC", "spark.sql.ansi.enabled": "true"}
