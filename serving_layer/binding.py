"""Steps 2 and 3 of the guard: bind the pinned relations into an accepted plan, then check the resolved plan.

2. **Bind.** Each registered name in the parsed plan is replaced by the pinned DataFrame plan behind it
   (built with the DataFrame API, never with path-based SQL), so the user's statement never resolves a
   name through the catalog or a file path.
3. **Check the resolved plan.** After analysis (in a session where SQL on files is off), every leaf must
   be one of the pinned relations' leaves, the query's own literal rows or range, or a reference to one of
   its CTEs (whose definitions are checked as part of the plan).

Step 1, the allow-list over Spark's parse, is :mod:`lambda_pipeline.serving_layer.guard`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from lambda_pipeline.core.errors import ReadOnlyViolation
from lambda_pipeline.core.jvm import empty_scala_map, scala_list, scala_tuple3, subquery_alias
from lambda_pipeline.serving_layer._catalyst import ANALYSIS, EXPRESSIONS, LOGICAL, items, strings
from lambda_pipeline.serving_layer.guard import ACCEPTED, refusal

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

__all__ = ["bind", "check_resolved"]


def bind(spark: SparkSession, plan: Any, relations: Mapping[tuple[str, str], Any]) -> Any:
    """The parsed ``plan`` with every registered name replaced by its pinned (analysed) plan.

    Walks the plan, the plans of subquery expressions and the CTE definitions; a Scala ``Map``
    from the old node to the new one serves as the partial function Spark's transforms take.
    """
    empty_map = empty_scala_map(spark)

    def rewrite(node: Any) -> Any:
        cls = node.getClass().getName()
        if cls == ANALYSIS + "UnresolvedRelation":
            parts = tuple(p.lower() for p in strings(node.multipartIdentifier()))
            if len(parts) == 2:
                if parts not in relations:
                    raise ReadOnlyViolation(f"'{'.'.join(parts)}' is not a registered relation. {ACCEPTED}")
                return subquery_alias(spark, parts, relations[parts])
            if len(parts) != 1:
                raise ReadOnlyViolation(f"'{'.'.join(parts)}' is not a registered relation. {ACCEPTED}")
            return node
        old = items(node.children())
        new = [rewrite(child) for child in old]
        if any(a is not b for a, b in zip(old, new, strict=True)):
            node = node.withNewChildren(scala_list(spark, new))
        swaps = empty_map
        for expression in items(node.expressions()):
            for sub in _subqueries(expression):
                swaps = swaps.updated(sub, sub.withNewPlan(rewrite(sub.plan())))
        if not swaps.isEmpty():
            node = node.transformExpressionsUp(swaps)
        if cls == LOGICAL + "UnresolvedWith":
            rebuilt = [
                scala_tuple3(spark, entry._1(), rewrite(entry._2()), entry._3()) for entry in items(node.cteRelations())
            ]
            node = node.copy(node.child(), scala_list(spark, rebuilt), node.allowRecursion())
        return node

    return rewrite(plan)


def _subqueries(expression: Any) -> Iterator[Any]:
    """The subquery expressions in an expression tree, outermost first (their plans are rewritten whole)."""
    if expression.getClass().getName() in _SUBQUERY_EXPRESSIONS:
        yield expression
        return
    for child in items(expression.children()):
        yield from _subqueries(child)


_SUBQUERY_EXPRESSIONS = frozenset(
    EXPRESSIONS + name for name in ("ScalarSubquery", "Exists", "ListQuery", "LateralSubquery")
)


# ---- the resolved plan ------------------------------------------------------------------------

_INLINE_LEAVES = frozenset(
    [LOGICAL + "LocalRelation", LOGICAL + "OneRowRelation", LOGICAL + "Range", LOGICAL + "CTERelationRef"]
)
"""Leaves a query may hold besides the pinned relations: its own literal rows and ranges, and references
to its CTEs (whose definitions are children of the plan, and checked as such)."""


def check_resolved(sql: str, analyzed: Any, pinned: list[Any]) -> None:
    """Every leaf of the analysed plan is a leaf of a ``pinned`` relation, or the query's own rows.

    Functions are settled at parse time (each call a name on FUNCTIONS, and no statement can define
    one); this check is about what the resolved plan reads. It stays off the plan's JSON form, which
    costs about 45 ms for a merged view against under a millisecond for the leaves.
    """
    # Compared in canonical form: a relation read twice gets fresh attribute ids, nothing else.
    allowed = [leaf.canonicalized() for plan in pinned for leaf in _leaves(plan)]
    for leaf in _leaves(analyzed):
        if leaf.getClass().getName() in _INLINE_LEAVES:
            continue
        canonical = leaf.canonicalized()
        if any(canonical.equals(known) for known in allowed):
            continue
        raise refusal(sql, f"the query reads {leaf.getClass().getSimpleName()}, which is not a registered relation")


def _leaves(plan: Any) -> Iterator[Any]:
    """Leaf plans, including those of subqueries (at any depth) and CTE definitions (children of WithCTE).

    Collected on the JVM: a few calls across the gateway rather than a few per node.
    """
    for tree in (plan, *items(plan.subqueriesAll())):
        yield from items(tree.collectLeaves())
