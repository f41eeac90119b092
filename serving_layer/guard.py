"""The one gate for user SQL: an allow-list over Spark's own parse.

Every statement a user sends (CLI, Python API, any server) goes through :func:`parse`, then through
:mod:`lambda_pipeline.serving_layer.binding`, in this order, before Spark analyses or runs anything:

1. **Parse** (here). Spark's parser turns the text into a plan; nothing is read or run. A statement is
   accepted only when it is *one* of: a read query (SELECT, WITH … SELECT, VALUES, set operations,
   the pipe syntax), ``EXPLAIN`` or ``DESCRIBE QUERY`` of such a query, ``DESCRIBE`` / ``SHOW
   COLUMNS`` of a registered relation, ``SHOW TABLES`` / ``SHOW VIEWS`` of a layer, ``SHOW DATABASES``.
   Every plan node must be of a class on :data:`QUERY_NODES`, every expression a syntax node of
   Catalyst's expression package or one of :data:`UNRESOLVED_EXPRESSIONS`, every function call a
   name on :data:`FUNCTIONS` (builtins that compute on their arguments only: nothing that reaches
   the JVM, the file system, the network or the session), every table-valued function one of
   :data:`TABLE_FUNCTIONS`, and every relation a registered name (``serving.<view>``, …) or a CTE
   of the statement. Everything else is refused, whatever it is: the list says what is allowed,
   so a statement Spark adds in its next release is refused until someone adds it here. A name in
   a layer that the pipeline does not have (a misspelled view) is not a refusal but a mistake: it
   gets :class:`UnknownRelation`, one line with the names that exist.
2. **Bind** the pinned relations into the plan, and 3. **check the resolved plan**: see
   :mod:`lambda_pipeline.serving_layer.binding`.

The serving layer never runs a Spark command for the user: SHOW and DESCRIBE are answered from
the registry of names and the pinned schemas, EXPLAIN from the bound plan.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Container, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from lambda_pipeline.core.errors import LambdaError, ReadOnlyViolation
from lambda_pipeline.core.jvm import parse_plan
from lambda_pipeline.serving_layer._catalyst import ANALYSIS, EXPRESSIONS, LOGICAL, option, strings
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
    "Registered",
    "Statement",
    "UnknownRelation",
    "check_read_only",
    "parse",
    "refusal",
]

LAYERS = ("master", "batch", "speed", "serving")

ACCEPTED = (
    "The query path accepts one read-only statement at a time: SELECT, WITH ... SELECT, VALUES and set "
    "operations of those over serving.*, batch.*, speed.* and master.*, with builtin functions that compute "
    "on their arguments; EXPLAIN and DESCRIBE QUERY of such a query; DESCRIBE and SHOW COLUMNS of those "
    "relations; SHOW TABLES, SHOW VIEWS and SHOW DATABASES. Use --as-of for an earlier publication; data "
    "changes go through the ingest and batch jobs."
)

QUERY_NODES = frozenset(
    [LOGICAL + name for name in (
        "Aggregate", "Distinct", "Except", "Filter", "Generate", "GlobalLimit", "Intersect", "Join",
        "LateralJoin", "LocalLimit", "LocalRelation", "Offset", "OneRowRelation", "Pivot", "Project",
        "RepartitionByExpression", "Sample", "Sort", "SubqueryAlias", "Union", "Unpivot", "UnresolvedHint",
        "UnresolvedWith", "WithWindowDefinition",
    )]
    + [ANALYSIS + name for name in (
        "UnresolvedRelation", "UnresolvedTableValuedFunction", "UnresolvedInlineTable", "UnresolvedHaving",
        "UnresolvedSubqueryColumnAliases", "UnresolvedTVFAliases",
    )]
)  # fmt: skip
"""Plan nodes Spark's parser builds for read queries. Anything else (commands, DDL, DML, scripts,
``TRANSFORM ... USING``, ``IDENTIFIER(...)`` with a non-constant argument, time travel) is refused."""

UNRESOLVED_EXPRESSIONS = frozenset(
    ANALYSIS + name
    for name in (
        "UnresolvedAlias", "UnresolvedAttribute", "UnresolvedExtractValue", "UnresolvedFunction",
        "UnresolvedGenerator", "UnresolvedOrdinal", "UnresolvedStar", "UnresolvedStarExceptOrReplace",
        "UnresolvedRegex", "MultiAlias",
    )
)  # fmt: skip
"""Placeholders the parser leaves for the analyser. Function names are checked against FUNCTIONS."""

_REFUSED_EXPRESSIONS = frozenset(
    EXPRESSIONS + name
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

Registered = frozenset[tuple[str, str]] | _AnyLayer
"""The ``(layer, name)`` pairs a statement may read: a pipeline's names, or any name in a layer."""


class UnknownRelation(LambdaError):
    """A name in one of the layers that this pipeline does not have (a misspelled view, say): a mistake to
    fix, not a statement to refuse, so one line with the names that exist instead of the allow-list."""

    exit_code = 2


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


def refusal(sql: str, what: str) -> ReadOnlyViolation:
    """The refusal of ``sql`` (shortened), why, and what the query path accepts."""
    shown = " ".join(sql.split())
    shown = shown if len(shown) <= 80 else shown[:77] + "..."
    return ReadOnlyViolation(f"refused: '{shown}': {what}. {ACCEPTED}")


def check_read_only(spark: SparkSession, sql: str, registered: Registered = ANY_LAYER) -> None:
    """Refuse ``sql`` unless the guard accepts it (over ``registered`` names, by default any in a layer)."""
    parse(spark, sql, registered)


def parse(spark: SparkSession, sql: str, registered: Registered) -> Statement:
    """Accept ``sql`` if it is one allowed statement over ``registered`` names; else ReadOnlyViolation."""
    if not sql.strip():
        raise refusal(sql, "the statement is empty")
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
        namespace = option(plan.namespace()) if simple == "ShowColumns" else None
        relation = _registered_table(sql, target, registered, namespace)
        if simple == "DescribeRelation":
            extended = bool(plan.isExtended())
            return Statement("describe", sql, relation=relation, extended=extended, reads=frozenset([relation]))
        if simple == "DescribeColumn":
            column = plan.column()
            if column.getClass().getName() != ANALYSIS + "UnresolvedAttribute":
                raise refusal(sql, "DESCRIBE of a column takes a column name")
            name = ".".join(strings(column.nameParts()))
            return Statement("describe_column", sql, relation=relation, column=name, reads=frozenset([relation]))
        return Statement("show_columns", sql, relation=relation, reads=frozenset([relation]))
    if simple in {"ShowTables", "ShowViews"}:
        namespace = _layer(sql, plan.namespace())
        return Statement("show_tables", sql, namespace=namespace, pattern=option(plan.pattern()))
    if simple == "ShowNamespacesCommand":
        if strings(plan.child().multipartIdentifier()):
            raise refusal(sql, "SHOW DATABASES lists the layers; it takes no namespace")
        return Statement("show_namespaces", sql, pattern=option(plan.pattern()))
    raise refusal(sql, _root_reason(simple))


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
    if namespace_plan.getClass().getName() != ANALYSIS + "UnresolvedNamespace":
        return None  # the current namespace: every layer
    parts = strings(namespace_plan.multipartIdentifier())
    if not parts:
        return None
    if len(parts) == 1 and parts[0].lower() in LAYERS:
        return parts[0].lower()
    raise refusal(sql, f"'{'.'.join(parts)}' is not a layer ({', '.join(LAYERS)})")


def _registered_table(sql: str, target: Any, registered: Registered, namespace: Any = None) -> tuple[str, str]:
    if target.getClass().getName() != ANALYSIS + "UnresolvedTableOrView":
        raise refusal(sql, "the statement does not name a registered relation")
    parts = strings(target.multipartIdentifier())
    if namespace is not None:
        parts = (*strings(namespace), *parts)
    key = tuple(p.lower() for p in parts)
    if len(key) == 2 and key in registered:
        return key[0], key[1]
    if len(key) == 2 and key[0] in LAYERS:
        raise _unknown(key[0], key[1], registered)
    raise refusal(sql, f"'{'.'.join(parts)}' is not a registered relation ({_known(registered)})")


def _known(registered: Registered) -> str:
    if isinstance(registered, _AnyLayer):
        return repr(registered)
    return ", ".join(sorted(".".join(n) for n in registered)) or "none yet"


def _unknown(layer: str, name: str, registered: Registered) -> UnknownRelation:
    """``layer.name`` is not one of the pipeline's names: say so, the closest name, and those that exist."""
    existing = [] if isinstance(registered, _AnyLayer) else sorted(n for ns, n in registered if ns == layer)
    what = "table" if layer == "master" else "view"
    close = difflib.get_close_matches(name, existing, n=1)
    hint = f"; did you mean '{layer}.{close[0]}'? The" if close else "; the"
    listed = ", ".join(existing) or "none"
    return UnknownRelation(f"'{layer}.{name}' is not a {what} of this pipeline{hint} {what}s in {layer} are: {listed}")


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
        if node["class"] == LOGICAL + "UnresolvedWith"
        for rel in node.get("cteRelations", [])
    }
    reads: set[tuple[str, str]] = set()
    for node in nodes:
        cls = node["class"]
        simple = cls.rsplit(".", 1)[-1]
        if cls == ANALYSIS + "UnresolvedRelation":
            parts = tuple(p.lower() for p in _parts(node.get("multipartIdentifier")))
            if len(parts) == 2 and parts in registered:
                reads.add((parts[0], parts[1]))
            elif len(parts) == 1 and parts[0] in ctes:
                pass
            elif (parts and parts[0] in _PATH_SOURCES) or any("/" in p or ":" in p for p in parts):
                raise refusal(sql, f"'{'.'.join(parts)}' reads files by path; only registered relations can be read")
            elif len(parts) == 2 and parts[0] in LAYERS:
                raise _unknown(parts[0], parts[1], registered)
            else:
                raise refusal(sql, f"'{'.'.join(parts)}' is not a registered relation ({_known(registered)})")
        elif cls == ANALYSIS + "UnresolvedTableValuedFunction":
            name = _parts(node.get("name"))
            if len(name) != 1 or name[0].lower() not in TABLE_FUNCTIONS:
                raise refusal(sql, f"the table-valued function '{'.'.join(name)}' is not allowed")
        elif cls == ANALYSIS + "UnresolvedFunction":
            name = _parts(node.get("nameParts"))
            if len(name) != 1 or name[0].lower() not in FUNCTIONS:
                raise refusal(sql, _function_reason(".".join(name)))
        elif cls in QUERY_NODES or cls in UNRESOLVED_EXPRESSIONS or _syntax_expression(cls):
            pass
        elif simple == "RelationTimeTravel":
            raise refusal(sql, "time travel (VERSION/TIMESTAMP AS OF) picks its own versions; use --as-of PUBLICATION")
        elif "Identifier" in simple:
            raise refusal(sql, "IDENTIFIER(...) names a relation or function only at run time")
        elif simple == "ScriptTransformation":
            raise refusal(sql, "TRANSFORM ... USING runs a program")
        else:
            raise refusal(sql, f"{simple} is not part of a read query over the registered relations")
    return frozenset(reads)


def _syntax_expression(cls: str) -> bool:
    """A class of Catalyst's expression package itself (operators, CASE, CAST, LIKE, subqueries ...).

    Its subpackages (``objects``: JVM object calls, ``xml``, ``aggregate``, ...) are not included, and
    the parser builds function calls as UnresolvedFunction, checked by name.
    """
    return cls.startswith(EXPRESSIONS) and "." not in cls[len(EXPRESSIONS) :] and cls not in _REFUSED_EXPRESSIONS


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
