"""The one gate for user SQL: an allow-list over Spark's own parse, then a check of the resolved plan.

Every statement a user sends (CLI, Python API, any server) goes through :func:`parse` and
:func:`bind`, in this order, before Spark analyses or runs anything:

1. **Parse.** Spark's parser turns the text into a plan; nothing is read or run. A statement is
   accepted only when it is *one* of: a read query (SELECT, WITH … SELECT, VALUES, set operations,
   the pipe syntax), ``EXPLAIN`` or ``DESCRIBE QUERY`` of such a query, ``DESCRIBE`` / ``SHOW
   COLUMNS`` of a registered relation, ``SHOW TABLES`` / ``SHOW VIEWS`` of a layer, ``SHOW DATABASES``.
   Every plan node must be of a class on :data:`QUERY_NODES`, every expression a syntax node of
   Catalyst's expression package or one of :data:`UNRESOLVED_EXPRESSIONS`, every function call a
   name on :data:`FUNCTIONS` (builtins that compute on their arguments only: nothing that reaches
   the JVM, the file system, the network or the session), every table-valued function one of
   :data:`TABLE_FUNCTIONS`, and every relation a registered name (``serving.<view>``, …) or a CTE
   of the statement. Everything else is refused, whatever it is: the list says what is allowed,
   so a statement Spark adds in its next release is refused until someone adds it here.
2. **Bind.** Each registered name in the plan is replaced by the pinned DataFrame plan behind it
   (built with the DataFrame API, never with path-based SQL), so the user's statement never
   resolves a name through the catalog or a file path.
3. **Check the resolved plan.** After analysis (in a session where SQL on files is off), every leaf
   must be one of the pinned relations' leaves, the query's own literal rows or range, or a reference
   to one of its CTEs (whose definitions are checked as part of the plan).

The serving layer never runs a Spark command for the user: SHOW and DESCRIBE are answered from
the registry of names and the pinned schemas, EXPLAIN from the bound plan.
"""

from __future__ import annotations

import json
from collections.abc import Container, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from lambda_pipeline.core.errors import ReadOnlyViolation
from lambda_pipeline.core.jvm import empty_scala_map, parse_plan, scala_list, scala_tuple3, subquery_alias
from lambda_pipeline.serving_layer._functions import GROUPS

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

__all__ = [
    "ACCEPTED",
    "ANY_LAYER",
    "FUNCTIONS",
    "LAYERS",
    "QUERY_NODES",
    "TABLE_FUNCTIONS",
    "Statement",
    "bind",
    "check_resolved",
    "parse",
]

LAYERS = ("master", "batch", "speed", "serving")

ACCEPTED = (
    "The query path accepts one read-only statement at a time: SELECT, WITH ... SELECT, VALUES and set "
    "operations of those over serving.*, batch.*, speed.* and master.*, with builtin functions that compute "
    "on their arguments; EXPLAIN and DESCRIBE QUERY of such a query; DESCRIBE and SHOW COLUMNS of those "
    "relations; SHOW TABLES, SHOW VIEWS and SHOW DATABASES. Use --as-of for an earlier publication; data "
    "changes go through the ingest and batch jobs."
)

_LOGICAL = "org.apache.spark.sql.catalyst.plans.logical."
_ANALYSIS = "org.apache.spark.sql.catalyst.analysis."
_EXPRESSIONS = "org.apache.spark.sql.catalyst.expressions."

QUERY_NODES = frozenset(
    [_LOGICAL + name for name in (
        "Aggregate", "Distinct", "Except", "Filter", "Generate", "GlobalLimit", "Intersect", "Join",
        "LateralJoin", "LocalLimit", "LocalRelation", "Offset", "OneRowRelation", "Pivot", "Project",
        "RepartitionByExpression", "Sample", "Sort", "SubqueryAlias", "Union", "Unpivot", "UnresolvedHint",
        "UnresolvedWith", "WithWindowDefinition",
    )]
    + [_ANALYSIS + name for name in (
        "UnresolvedRelation", "UnresolvedTableValuedFunction", "UnresolvedInlineTable", "UnresolvedHaving",
        "UnresolvedSubqueryColumnAliases", "UnresolvedTVFAliases",
    )]
)  # fmt: skip
"""Plan nodes Spark's parser builds for read queries. Anything else (commands, DDL, DML, scripts,
``TRANSFORM ... USING``, ``IDENTIFIER(...)`` with a non-constant argument, time travel) is refused."""

UNRESOLVED_EXPRESSIONS = frozenset(
    _ANALYSIS + name
    for name in (
        "UnresolvedAlias", "UnresolvedAttribute", "UnresolvedExtractValue", "UnresolvedFunction",
        "UnresolvedGenerator", "UnresolvedOrdinal", "UnresolvedStar", "UnresolvedStarExceptOrReplace",
        "UnresolvedRegex", "MultiAlias",
    )
)  # fmt: skip
"""Placeholders the parser leaves for the analyser. Function names are checked against FUNCTIONS."""

_REFUSED_EXPRESSIONS = frozenset(
    _EXPRESSIONS + name
    for name in (
        "CallMethodViaReflection", "TryReflect", "InputFileName", "InputFileBlockStart", "InputFileBlockLength",
        "CurrentUser", "CurrentDatabase", "CurrentCatalog",
    )
)  # fmt: skip
"""Catalyst expressions that reach the JVM, the files a scan reads, or the session."""

FUNCTIONS = frozenset(name for names in GROUPS.values() for name in names.split())
"""Builtin functions a query may call: they compute on their arguments and nothing else."""

TABLE_FUNCTIONS = frozenset(
    ["range", "explode", "explode_outer", "inline", "inline_outer", "posexplode", "posexplode_outer", "stack",
     "json_tuple", "variant_explode", "variant_explode_outer"]
)  # fmt: skip
"""Table-valued functions a query may use: none of them reads a file or a table."""

_PATH_SOURCES = frozenset(
    ["delta", "parquet", "json", "csv", "text", "orc", "avro", "binaryfile", "xml", "jdbc", "kafka", "libsvm",
     "image", "noop", "console", "memory"]
)  # fmt: skip
"""Data sources Spark reads by path in SQL (``text.`/etc/passwd```): named in the refusal."""


class _AnyLayer(Container[tuple[str, str]]):
    """Every ``<layer>.<name>``: checks a statement's shape without a work directory."""

    def __contains__(self, item: object) -> bool:
        return isinstance(item, tuple) and len(item) == 2 and item[0] in LAYERS

    def __repr__(self) -> str:
        return ", ".join(f"{layer}.*" for layer in LAYERS)


ANY_LAYER = _AnyLayer()

Registered = Container[tuple[str, str]]
"""The ``(layer, name)`` pairs a statement may read."""


@dataclass(frozen=True)
class Statement:
    """One accepted statement: what to answer, and the registered names it reads."""

    kind: str
    """query | explain | describe_query | describe | describe_column | show_columns | show_tables | show_namespaces"""
    sql: str
    plan: Any = None
    """The parsed query (Java), for query, explain and describe_query."""
    relation: tuple[str, str] | None = None
    namespace: str | None = None
    pattern: str | None = None
    column: str | None = None
    extended: bool = False
    explain_mode: Any = None
    reads: frozenset[tuple[str, str]] = field(default_factory=frozenset)


def _refuse(sql: str, what: str) -> ReadOnlyViolation:
    shown = " ".join(sql.split())
    shown = shown if len(shown) <= 80 else shown[:77] + "..."
    return ReadOnlyViolation(f"refused: '{shown}': {what}. {ACCEPTED}")


def _names(seq: Any) -> tuple[str, ...]:
    """A Scala Seq[String] as a Python tuple."""
    return tuple(seq.apply(i) for i in range(seq.size()))


def _option(opt: Any) -> Any:
    return opt.get() if opt.isDefined() else None


def parse(spark: SparkSession, sql: str, registered: Registered) -> Statement:
    """Accept ``sql`` if it is one allowed statement over ``registered`` names; else ReadOnlyViolation."""
    if not sql.strip():
        raise _refuse(sql, "the statement is empty")
    try:
        plan = parse_plan(spark, sql)
    except Exception as exc:  # ParseException: Spark's message, not a Java trace
        lines = [line for line in str(exc).strip().splitlines() if line.strip()]
        first = lines[0] if lines else type(exc).__name__
        raise ReadOnlyViolation(
            f"the query does not parse: {first[:300]} (one statement at a time; several statements or a "
            f"script are refused). {ACCEPTED}"
        ) from None
    root = plan.getClass().getName()
    simple = root.rsplit(".", 1)[-1]
    if root in QUERY_NODES:
        return Statement("query", sql, plan=plan, reads=_check_query(sql, plan, registered))
    if simple == "ExplainCommand":
        inner = plan.logicalPlan()
        return Statement(
            "explain", sql, plan=inner, explain_mode=plan.mode(), reads=_check_query(sql, inner, registered)
        )
    if simple == "DescribeQueryCommand":
        inner = plan.plan()
        return Statement("describe_query", sql, plan=inner, reads=_check_query(sql, inner, registered))
    if simple in {"DescribeRelation", "DescribeColumn", "ShowColumns"}:
        target = plan.relation() if simple != "ShowColumns" else plan.child()
        namespace = _option(plan.namespace()) if simple == "ShowColumns" else None
        relation = _registered_table(sql, target, registered, namespace)
        if simple == "DescribeRelation":
            extended = bool(plan.isExtended())
            return Statement("describe", sql, relation=relation, extended=extended, reads=frozenset([relation]))
        if simple == "DescribeColumn":
            column = plan.column()
            if column.getClass().getName() != _ANALYSIS + "UnresolvedAttribute":
                raise _refuse(sql, "DESCRIBE of a column takes a column name")
            name = ".".join(_names(column.nameParts()))
            return Statement("describe_column", sql, relation=relation, column=name, reads=frozenset([relation]))
        return Statement("show_columns", sql, relation=relation, reads=frozenset([relation]))
    if simple in {"ShowTables", "ShowViews"}:
        namespace = _layer(sql, plan.namespace())
        return Statement("show_tables", sql, namespace=namespace, pattern=_option(plan.pattern()))
    if simple == "ShowNamespacesCommand":
        if _names(plan.child().multipartIdentifier()):
            raise _refuse(sql, "SHOW DATABASES lists the layers; it takes no namespace")
        return Statement("show_namespaces", sql, pattern=_option(plan.pattern()))
    raise _refuse(sql, _root_reason(simple))


def _root_reason(simple: str) -> str:
    if simple in {"UnresolvedExecuteImmediate", "ExecuteImmediateQuery"}:
        return "EXECUTE IMMEDIATE runs another statement"
    if simple in {"CompoundBody", "SingleStatement"} or "Compound" in simple:
        return "a SQL script (BEGIN ... END) runs several statements"
    if simple in {"ScriptTransformation"}:
        return "TRANSFORM ... USING runs a program"
    if "Set" in simple or "Reset" in simple:
        return f"{simple} changes the session or its configuration"
    if "Show" in simple or "Describe" in simple:
        return f"{simple} is not one of the SHOW and DESCRIBE forms the serving layer answers"
    return (
        f"{simple} is not a read query (commands, DDL, DML, RESTORE, CLONE, CALL, caching and temporary "
        "objects are refused)"
    )


def _layer(sql: str, namespace_plan: Any) -> str | None:
    if namespace_plan.getClass().getName() != _ANALYSIS + "UnresolvedNamespace":
        return None  # the current namespace: every layer
    parts = _names(namespace_plan.multipartIdentifier())
    if not parts:
        return None
    if len(parts) == 1 and parts[0].lower() in LAYERS:
        return parts[0].lower()
    raise _refuse(sql, f"'{'.'.join(parts)}' is not a layer ({', '.join(LAYERS)})")


def _registered_table(sql: str, target: Any, registered: Registered, namespace: Any = None) -> tuple[str, str]:
    if target.getClass().getName() != _ANALYSIS + "UnresolvedTableOrView":
        raise _refuse(sql, "the statement does not name a registered relation")
    parts = _names(target.multipartIdentifier())
    if namespace is not None:
        parts = (*_names(namespace), *parts)
    key = tuple(p.lower() for p in parts)
    if len(key) == 2 and key in registered:
        return key[0], key[1]
    raise _refuse(sql, f"'{'.'.join(parts)}' is not a registered relation ({_known(registered)})")


def _known(registered: Registered) -> str:
    if isinstance(registered, _AnyLayer):
        return repr(registered)
    return ", ".join(sorted(".".join(n) for n in registered)) or "none yet"  # type: ignore[attr-defined]


# ---- the parsed query --------------------------------------------------------------------------


def _nodes(tree: Any) -> Iterator[dict[str, Any]]:
    """Every tree node (plan or expression) anywhere in Spark's JSON form of a plan."""
    if isinstance(tree, dict):
        if "class" in tree:
            yield tree
        for value in tree.values():
            yield from _nodes(value)
    elif isinstance(tree, list):
        for value in tree:
            yield from _nodes(value)


def _parts(text: Any) -> tuple[str, ...]:
    """Spark's JSON renders a Seq[String] as ``"[a, b]"``."""
    inner = str(text or "").strip()
    inner = inner[1:-1] if inner.startswith("[") and inner.endswith("]") else inner
    return tuple(p.strip() for p in inner.split(",")) if inner else ()


def _check_query(sql: str, plan: Any, registered: Registered) -> frozenset[tuple[str, str]]:
    """Every node of a parsed query against the allow-lists; returns the registered names it reads."""
    nodes = list(_nodes(json.loads(plan.toJSON())))
    ctes = {
        str(rel["_1"]).lower()
        for node in nodes
        if node["class"] == _LOGICAL + "UnresolvedWith"
        for rel in node.get("cteRelations", [])
    }
    reads: set[tuple[str, str]] = set()
    for node in nodes:
        cls = node["class"]
        simple = cls.rsplit(".", 1)[-1]
        if cls == _ANALYSIS + "UnresolvedRelation":
            parts = tuple(p.lower() for p in _parts(node.get("multipartIdentifier")))
            if len(parts) == 2 and parts in registered:
                reads.add((parts[0], parts[1]))
            elif len(parts) == 1 and parts[0] in ctes:
                pass
            elif (parts and parts[0] in _PATH_SOURCES) or any("/" in p or ":" in p for p in parts):
                raise _refuse(sql, f"'{'.'.join(parts)}' reads files by path; only registered relations can be read")
            else:
                raise _refuse(sql, f"'{'.'.join(parts)}' is not a registered relation ({_known(registered)})")
        elif cls == _ANALYSIS + "UnresolvedTableValuedFunction":
            name = _parts(node.get("name"))
            if len(name) != 1 or name[0].lower() not in TABLE_FUNCTIONS:
                raise _refuse(sql, f"the table-valued function '{'.'.join(name)}' is not allowed")
        elif cls == _ANALYSIS + "UnresolvedFunction":
            name = _parts(node.get("nameParts"))
            if len(name) != 1 or name[0].lower() not in FUNCTIONS:
                raise _refuse(sql, _function_reason(".".join(name)))
        elif cls in QUERY_NODES or cls in UNRESOLVED_EXPRESSIONS or _syntax_expression(cls):
            pass
        elif simple == "RelationTimeTravel":
            raise _refuse(sql, "time travel (VERSION/TIMESTAMP AS OF) picks its own versions; use --as-of PUBLICATION")
        elif "Identifier" in simple:
            raise _refuse(sql, "IDENTIFIER(...) names a relation or function only at run time")
        elif simple == "ScriptTransformation":
            raise _refuse(sql, "TRANSFORM ... USING runs a program")
        else:
            raise _refuse(sql, f"{simple} is not part of a read query over the registered relations")
    return frozenset(reads)


def _syntax_expression(cls: str) -> bool:
    """A class of Catalyst's expression package itself (operators, CASE, CAST, LIKE, subqueries ...).

    Its subpackages (``objects``: JVM object calls, ``xml``, ``aggregate``, ...) are not included, and
    the parser builds function calls as UnresolvedFunction, checked by name.
    """
    return cls.startswith(_EXPRESSIONS) and "." not in cls[len(_EXPRESSIONS) :] and cls not in _REFUSED_EXPRESSIONS


_FUNCTION_REASONS = {
    "reflect": "calls JVM methods",
    "java_method": "calls JVM methods",
    "try_reflect": "calls JVM methods",
    "input_file_name": "reads file names",
    "input_file_block_start": "reads file positions",
    "input_file_block_length": "reads file positions",
    "read_files": "reads files",
    "current_user": "reads the session",
    "session_user": "reads the session",
    "user": "reads the session",
    "current_database": "reads the session",
    "current_schema": "reads the session",
    "current_catalog": "reads the session",
    "current_path": "reads the session",
}


def _function_reason(name: str) -> str:
    why = _FUNCTION_REASONS.get(name.lower())
    if why:
        return f"the function '{name}' {why}"
    return f"the function '{name}' is not on the list of allowed builtin functions (serving_layer/_functions.py)"


# ---- binding the registered names --------------------------------------------------------------


def bind(spark: SparkSession, plan: Any, relations: Mapping[tuple[str, str], Any]) -> Any:
    """The parsed ``plan`` with every registered name replaced by its pinned (analysed) plan.

    Walks the plan, the plans of subquery expressions and the CTE definitions; a Scala ``Map``
    from the old node to the new one serves as the partial function Spark's transforms take.
    """
    empty_map = empty_scala_map(spark)

    def rewrite(node: Any) -> Any:
        cls = node.getClass().getName()
        if cls == _ANALYSIS + "UnresolvedRelation":
            parts = tuple(p.lower() for p in _names(node.multipartIdentifier()))
            if len(parts) == 2:
                if parts not in relations:
                    raise ReadOnlyViolation(f"'{'.'.join(parts)}' is not a registered relation. {ACCEPTED}")
                return subquery_alias(spark, parts, relations[parts])
            if len(parts) != 1:
                raise ReadOnlyViolation(f"'{'.'.join(parts)}' is not a registered relation. {ACCEPTED}")
            return node
        children = node.children()
        old = [children.apply(i) for i in range(children.size())]
        new = [rewrite(child) for child in old]
        if any(a is not b for a, b in zip(old, new, strict=True)):
            node = node.withNewChildren(scala_list(spark, new))
        swaps = empty_map
        expressions = node.expressions()
        for i in range(expressions.size()):
            for sub in _subqueries(expressions.apply(i)):
                swaps = swaps.updated(sub, sub.withNewPlan(rewrite(sub.plan())))
        if not swaps.isEmpty():
            node = node.transformExpressionsUp(swaps)
        if cls == _LOGICAL + "UnresolvedWith":
            ctes = node.cteRelations()
            rebuilt = []
            for i in range(ctes.size()):
                entry = ctes.apply(i)
                rebuilt.append(scala_tuple3(spark, entry._1(), rewrite(entry._2()), entry._3()))
            node = node.copy(node.child(), scala_list(spark, rebuilt), node.allowRecursion())
        return node

    return rewrite(plan)


def _subqueries(expression: Any) -> Iterator[Any]:
    """The subquery expressions in an expression tree, outermost first (their plans are rewritten whole)."""
    if expression.getClass().getName() in _SUBQUERY_EXPRESSIONS:
        yield expression
        return
    children = expression.children()
    for i in range(children.size()):
        yield from _subqueries(children.apply(i))


_SUBQUERY_EXPRESSIONS = frozenset(
    _EXPRESSIONS + name for name in ("ScalarSubquery", "Exists", "ListQuery", "LateralSubquery")
)


# ---- the resolved plan ------------------------------------------------------------------------

_INLINE_LEAVES = frozenset(
    [_LOGICAL + "LocalRelation", _LOGICAL + "OneRowRelation", _LOGICAL + "Range", _LOGICAL + "CTERelationRef"]
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
        raise _refuse(sql, f"the query reads {leaf.getClass().getSimpleName()}, which is not a registered relation")


def _leaves(plan: Any) -> Iterator[Any]:
    """Leaf plans, including those of subqueries (at any depth) and CTE definitions (children of WithCTE).

    Collected on the JVM: a few calls across the gateway rather than a few per node.
    """
    for tree in (plan, *_seq(plan.subqueriesAll())):
        yield from _seq(tree.collectLeaves())


def _seq(seq: Any) -> list[Any]:
    return [seq.apply(i) for i in range(seq.size())]
