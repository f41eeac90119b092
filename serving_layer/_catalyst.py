"""Reading the Catalyst objects py4j hands back: class-name prefixes and Scala values as Python ones.

Shared by the guard (the allow-list over the parsed plan) and the binding (pinned relations into that plan).
"""

from __future__ import annotations

from typing import Any

__all__ = ["ANALYSIS", "EXPRESSIONS", "LOGICAL", "items", "option", "strings"]

LOGICAL = "org.apache.spark.sql.catalyst.plans.logical."
ANALYSIS = "org.apache.spark.sql.catalyst.analysis."
EXPRESSIONS = "org.apache.spark.sql.catalyst.expressions."


def items(seq: Any) -> list[Any]:
    """A Scala Seq as a Python list."""
    return [seq.apply(i) for i in range(seq.size())]


def strings(seq: Any) -> tuple[str, ...]:
    """A Scala Seq[String] as a Python tuple."""
    return tuple(seq.apply(i) for i in range(seq.size()))


def option(opt: Any) -> Any:
    """A Scala Option's value, or None."""
    return opt.get() if opt.isDefined() else None
