"""The query guard: an allow-list over Spark's parse and resolved plan, tried as an attacker would.

The hostile statements cover every statement kind of Spark 4.2's ``SqlBaseParser.g4`` (and Delta's
own grammar) that is not a read query, plus the read queries that reach files, the JVM or the session.
Each is sent through the CLI against a real work directory: it must be refused with the guard's
message, print no file content or JVM value, and leave every Delta table of the work directory at
its version.
"""

from __future__ import annotations

import getpass
import json
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hyp_settings
from hypothesis import strategies as st

from lambda_pipeline.batch_layer.job import run_batch
from lambda_pipeline.cli.main import main
from lambda_pipeline.core.config_loader import load_settings
from lambda_pipeline.core.errors import LambdaError, ReadOnlyViolation
from lambda_pipeline.core.locations import Locations
from lambda_pipeline.core.tables import table_version
from lambda_pipeline.pipelines.clickstream import CLICKSTREAM
from lambda_pipeline.pipelines.generator import ClickstreamGenerator
from lambda_pipeline.pipelines.ingest import start_ingest
from lambda_pipeline.serving_layer.catalog import ServingLayer
from lambda_pipeline.serving_layer.guard import ACCEPTED, FUNCTIONS, UnknownRelation, check_read_only

SECRET_FILE_MARKER = "guard-test-secret-7f3a"
"""Written into a file outside the warehouse: it must never appear in any output."""


def _hostile(secret: str, master: str) -> dict[str, list[str]]:
    """Refused statements by kind; ``secret`` is a file outside the warehouse, ``master`` the master table."""
    return {
        "path-based relation": [
            f"SELECT * FROM text.`{secret}`",
            f"SELECT * FROM csv.`{secret}`",
            f"SELECT * FROM json.`{secret}`",
            f"SELECT * FROM parquet.`{master}`",
            f"SELECT * FROM delta.`{master}`",
            f"SELECT * FROM orc.`{secret}`",
            f"SELECT * FROM binaryFile.`{secret}`",
            f"SELECT count(*) FROM `{secret}`",
            f"SELECT * FROM IDENTIFIER('text.`{secret}`')",
            f"WITH t AS (SELECT * FROM text.`{secret}`) SELECT * FROM t",
            f"SELECT (SELECT max(value) FROM text.`{secret}`) AS v",
        ],
        "JVM function": [
            "SELECT reflect('java.lang.System', 'getProperty', 'user.home')",
            "SELECT java_method('java.lang.System', 'getenv', 'HOME')",
            "SELECT try_reflect('java.lang.System', 'getProperty', 'user.name')",
            "SELECT page FROM serving.page_activity WHERE reflect('java.lang.System', 'exit', 0) IS NULL",
            "WITH x AS (SELECT java_method('java.lang.Runtime', 'getRuntime') AS r) SELECT * FROM x",
            "SELECT `reflect`('java.lang.System', 'getProperty', 'user.home')",
        ],
        "file, network or session function": [
            "SELECT input_file_name() FROM serving.page_activity",
            "SELECT input_file_block_start() FROM master.master_events",
            "SELECT current_user()",
            "SELECT session_user()",
            "SELECT current_database()",
            "SELECT xpath_string('<!DOCTYPE a [<!ENTITY e SYSTEM \"file:///etc/passwd\">]><a>&e;</a>', 'a')",
            "SELECT from_protobuf(CAST('x' AS BINARY), 'M', '/etc/passwd')",
        ],
        "table-valued function that reads files or tables": [
            f"SELECT * FROM read_files('{secret}')",
            f"SELECT * FROM table_changes_by_path('{master}', 0)",
            "SELECT * FROM table_changes('master.master_events', 0)",
            "SELECT * FROM python_worker_logs()",
        ],
        "DML": [
            "INSERT INTO master.master_events SELECT * FROM master.master_events",
            f"INSERT INTO delta.`{master}` SELECT * FROM master.master_events",
            "WITH a AS (SELECT 1) INSERT INTO t SELECT * FROM a",
            "INSERT OVERWRITE DIRECTORY '/tmp/guard-out' USING json SELECT 1",
            "DELETE FROM master.master_events WHERE true",
            f"DELETE FROM delta.`{master}`",
            "UPDATE master.master_events SET page = 'x'",
            "MERGE INTO master.master_events t USING serving.page_activity s ON t.page = s.page "
            "WHEN MATCHED THEN DELETE",
            f"LOAD DATA LOCAL INPATH '{secret}' INTO TABLE t",
            "TRUNCATE TABLE master.master_events",
            "FROM serving.page_activity INSERT INTO t SELECT page",
        ],
        "DDL": [
            "CREATE TABLE x (a INT)",
            f"CREATE TABLE x USING delta LOCATION '{master}'",
            f"CREATE OR REPLACE TABLE stolen SHALLOW CLONE delta.`{master}`",
            "CREATE TABLE copy AS SELECT * FROM master.master_events",
            "DROP TABLE master.master_events",
            "DROP VIEW serving.page_activity",
            "ALTER TABLE master.master_events ADD COLUMNS (x INT)",
            "ALTER TABLE master.master_events SET TBLPROPERTIES ('delta.logRetentionDuration' = '0 days')",
            "CREATE DATABASE evil",
            "DROP DATABASE serving CASCADE",
            "COMMENT ON TABLE master.master_events IS 'x'",
            "CREATE VIEW v AS SELECT 1",
            "ALTER VIEW serving.page_activity AS SELECT 1",
            "CREATE INDEX i ON master.master_events (page)",
        ],
        "Delta commands": [
            f"RESTORE TABLE delta.`{master}` TO VERSION AS OF 0",
            "RESTORE TABLE master.master_events TO VERSION AS OF 0",
            f"VACUUM delta.`{master}` RETAIN 0 HOURS",
            f"OPTIMIZE delta.`{master}`",
            f"CONVERT TO DELTA parquet.`{master}`",
            f"DESCRIBE HISTORY delta.`{master}`",
            f"DESCRIBE DETAIL delta.`{master}`",
            f"GENERATE symlink_format_manifest FOR TABLE delta.`{master}`",
            f"REORG TABLE delta.`{master}` APPLY (PURGE)",
            f"ALTER TABLE delta.`{master}` DROP FEATURE deletionVectors",
        ],
        "other commands": [
            "CACHE TABLE serving.page_activity",
            "CACHE TABLE c AS SELECT * FROM serving.page_activity",
            "UNCACHE TABLE serving.page_activity",
            "CLEAR CACHE",
            "REFRESH TABLE master.master_events",
            f"REFRESH '{secret}'",
            "ANALYZE TABLE master.master_events COMPUTE STATISTICS",
            "MSCK REPAIR TABLE master.master_events",
            f"ADD JAR '{secret}'",
            f"ADD FILE '{secret}'",
            "LIST FILES",
            "CALL system.some_procedure()",
            "SHOW CREATE TABLE serving.page_activity",
            "SHOW TBLPROPERTIES master.master_events",
            "SHOW PARTITIONS master.master_events",
            "SHOW FUNCTIONS",
            "SHOW CATALOGS",
            "SHOW CURRENT NAMESPACE",
            "SHOW TABLE EXTENDED IN serving LIKE '*'",
            "DESCRIBE FUNCTION reflect",
            "DESCRIBE DATABASE serving",
            "EXPLAIN DELETE FROM master.master_events",
            "DESCRIBE QUERY SELECT reflect('java.lang.System', 'getProperty', 'user.home')",
            "SHOW TABLES IN default",
        ],
        "statement that runs other statements": [
            f"EXECUTE IMMEDIATE 'DELETE FROM delta.`{master}`'",
            "EXECUTE IMMEDIATE 'SELECT 1'",
            "BEGIN SELECT 1; END",
            "BEGIN DECLARE x INT; SET x = 1; SELECT x; END",
            "SELECT TRANSFORM(page) USING 'cat /etc/passwd' AS (line) FROM serving.page_activity",
        ],
        "session or configuration change": [
            "SET spark.sql.runSQLOnFiles=true",
            "SET spark.sql.shuffle.partitions=1",
            "RESET",
            "SET TIME ZONE 'America/New_York'",
            "USE serving",
            "USE CATALOG spark_catalog",
            "SET VAR x = 1",
            "SET COLLATION UTF8_LCASE",
        ],
        "temporary view, function or variable": [
            "CREATE TEMPORARY VIEW t AS SELECT 1",
            "CREATE OR REPLACE GLOBAL TEMPORARY VIEW t AS SELECT 1",
            f"CREATE TEMPORARY VIEW f USING text OPTIONS (path '{secret}')",
            "CREATE TEMPORARY FUNCTION f AS 'java.lang.Runtime'",
            "CREATE FUNCTION f(x INT) RETURNS INT RETURN x",
            "DROP TEMPORARY FUNCTION IF EXISTS f",
            "DECLARE VARIABLE v INT DEFAULT 1",
            "DROP TEMPORARY VARIABLE v",
        ],
        "several statements": [
            "SELECT 1; SELECT 2",
            f"SELECT 1; DROP TABLE delta.`{master}`",
            "SELECT * FROM serving.page_activity; DELETE FROM master.master_events",
        ],
        "unregistered relation or time travel": [
            "SELECT * FROM default.anything",
            "SELECT * FROM warehouse.page_activity",
            "SELECT * FROM spark_catalog.default.t",
            "SELECT * FROM serving.page_activity VERSION AS OF 0",
            "SELECT * FROM master.master_events TIMESTAMP AS OF '2020-01-01'",
            "SELECT * FROM nope",
        ],
    }


ALLOWED = [
    "SELECT sum(events) AS n FROM serving.page_activity",
    "WITH a AS (SELECT page, events FROM serving.page_activity) SELECT page, sum(events) FROM a GROUP BY page",
    "SELECT page FROM batch.page_activity UNION SELECT page FROM speed.page_activity",
    "SELECT * FROM serving.page_activity s JOIN (SELECT page, count(*) AS n FROM master.master_events GROUP BY page) m "
    "ON s.page = m.page",
    "SELECT count(*) FROM master.quarantine WHERE reason LIKE 'malformed%'",
    "VALUES (1, 'a')",
    "SELECT * FROM range(3)",
    "SELECT explode(array(1, 2))",
    "SHOW TABLES",
    "SHOW TABLES IN serving",
    "SHOW VIEWS IN batch LIKE 'page*'",
    "SHOW DATABASES",
    "DESCRIBE serving.page_activity",
    "DESCRIBE TABLE EXTENDED master.master_events",
    "SHOW COLUMNS IN serving.page_activity",
    "EXPLAIN SELECT count(*) FROM serving.page_activity",
    "DESCRIBE QUERY SELECT page FROM serving.page_activity",
    "FROM serving.page_activity |> WHERE events > 0 |> AGGREGATE sum(events) AS n",
]


@pytest.fixture(scope="module")
def workdir(spark, tmp_path_factory: pytest.TempPathFactory) -> Locations:
    """A work directory with every layer written: master, quarantine, a batch, speed partials."""
    settings = load_settings(None, ["ingest.trigger=200 milliseconds"])
    loc = Locations.create(settings, tmp_path_factory.mktemp("guard") / "work")
    loc.ensure_local_dirs()
    generator = ClickstreamGenerator(21, malformed_fraction=0.05)
    generator.write(loc.landing, 300, files=1)
    start_ingest(spark, CLICKSTREAM, settings, loc, once=True).awaitTermination()
    run_batch(spark, CLICKSTREAM, loc)
    generator.write(loc.landing, 100, files=1)
    start_ingest(spark, CLICKSTREAM, settings, loc, once=True).awaitTermination()
    return loc


@pytest.fixture(scope="module")
def secret(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("outside") / "secret.txt"
    path.write_text(f"{SECRET_FILE_MARKER}\nroot:x:0:0\n")
    return str(path)


def _all_tables(loc: Locations) -> list[str]:
    roots = [Path(loc.warehouse)]
    return sorted(str(p.parent) for root in roots for p in root.rglob("_delta_log") if p.is_dir())


def _versions(spark, loc: Locations) -> dict[str, int | None]:
    return {path: table_version(spark, path) for path in _all_tables(loc)}


def _cases() -> list[tuple[str, int]]:
    table = _hostile("SECRET", "MASTER")
    return [(kind, i) for kind, statements in table.items() for i in range(len(statements))]


def test_every_kind_has_at_least_two_hostile_statements() -> None:
    table = _hostile("s", "m")
    assert len(table) >= 13 and all(len(statements) >= 2 for statements in table.values()), table


@pytest.mark.parametrize(("kind", "index"), _cases(), ids=[f"{k}-{i}" for k, i in _cases()])
def test_hostile_statement_is_refused_by_the_guard(spark, workdir, secret, kind: str, index: int) -> None:
    sql = _hostile(secret, workdir.master)[kind][index]
    serving = ServingLayer(spark, CLICKSTREAM, workdir)
    with pytest.raises(ReadOnlyViolation) as refused:
        serving.answer(sql).frame.collect()
    assert ACCEPTED in str(refused.value)


@pytest.mark.integration
def test_hostile_statements_through_the_cli_leak_nothing_and_change_nothing(spark, workdir, secret, capfd) -> None:
    before = _versions(spark, workdir)
    assert len(before) >= 5, before  # master, quarantine, coverage, batch view, speed partials
    leaks = [SECRET_FILE_MARKER, "root:x:0:0", os.path.expanduser("~"), getpass.getuser() + "\n"]
    base = ["--workdir", workdir.workdir]
    statements = [sql for group in _hostile(secret, workdir.master).values() for sql in group]
    for sql in statements:
        code = main(["query", sql, "--format", "json", *base])
        out = capfd.readouterr()
        assert code == 2, (sql, code, out.err[-500:])
        assert "refused" in out.err or "does not parse" in out.err, (sql, out.err[-500:])
        for leak in leaks:
            assert leak not in out.out, (sql, leak)
    assert _versions(spark, workdir) == before
    assert not Path("/tmp/guard-out").exists()


@pytest.mark.parametrize(
    ("sql", "said"),
    [
        (
            "SELECT * FROM serving.page_activty",
            "'serving.page_activty' is not a view of this pipeline; did you mean 'serving.page_activity'? "
            "The views in serving are: page_activity",
        ),
        (
            "SELECT count(*) FROM Batch.Page_Activities a JOIN serving.page_activity b ON a.page = b.page",
            "'batch.page_activities' is not a view of this pipeline; did you mean 'batch.page_activity'? "
            "The views in batch are: page_activity",
        ),
        (
            "WITH s AS (SELECT * FROM speed.nothing_like_it) SELECT * FROM s",
            "'speed.nothing_like_it' is not a view of this pipeline; the views in speed are: page_activity",
        ),
        (
            "SELECT * FROM master.quarantined",
            "'master.quarantined' is not a table of this pipeline; did you mean 'master.quarantine'? "
            "The tables in master are: master_events, quarantine",
        ),
        (
            "DESCRIBE serving.page_actvity",
            "'serving.page_actvity' is not a view of this pipeline; did you mean 'serving.page_activity'? "
            "The views in serving are: page_activity",
        ),
    ],
)
def test_a_name_the_pipeline_lacks_gets_one_line_with_the_names_it_has(spark, workdir, sql: str, said: str) -> None:
    serving = ServingLayer(spark, CLICKSTREAM, workdir)
    with pytest.raises(UnknownRelation) as unknown:
        serving.answer(sql)
    assert str(unknown.value) == said
    assert not isinstance(unknown.value, ReadOnlyViolation) and ACCEPTED not in str(unknown.value)


@pytest.mark.integration
def test_a_misspelled_view_through_the_cli_is_one_line_not_a_refusal(spark, workdir, capfd) -> None:
    before = _versions(spark, workdir)
    code = main(["query", "SELECT * FROM serving.page_activty", "--workdir", workdir.workdir])
    err = capfd.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith("error: 'serving.page_activty' is not a view of this pipeline")
    assert "did you mean 'serving.page_activity'?" in err[0] and "refused" not in err[0]
    assert len(err[0].split()) < 30, err[0]
    assert _versions(spark, workdir) == before


def test_outside_the_layers_a_name_is_still_refused(spark, workdir) -> None:
    serving = ServingLayer(spark, CLICKSTREAM, workdir)
    for sql in (
        "SELECT * FROM default.page_activity",
        "SELECT * FROM serving.`/etc/passwd`",
        "SELECT * FROM page_activty",
    ):
        with pytest.raises(ReadOnlyViolation) as refused:
            serving.answer(sql)
        assert ACCEPTED in str(refused.value), sql
    assert issubclass(UnknownRelation, LambdaError) and UnknownRelation.exit_code == ReadOnlyViolation.exit_code


def test_function_allow_list_names_only_builtins_and_none_that_reach_out(spark) -> None:
    registry = spark._jsparkSession.sessionState().functionRegistry()
    builtins = set()
    names = registry.listFunction().iterator()
    while names.hasNext():
        builtins.add(names.next().funcName())
    assert builtins >= FUNCTIONS, sorted(FUNCTIONS - builtins)  # the list does not rot silently
    refused = {"reflect", "java_method", "try_reflect", "input_file_name", "current_user", "xpath", "from_protobuf"}
    assert not FUNCTIONS & refused
    assert {"sum", "count", "hll_sketch_estimate", "date_trunc", "regexp_extract"} <= FUNCTIONS


# ---- allowed statements -----------------------------------------------------------------------


@pytest.mark.parametrize("sql", ALLOWED)
def test_allowed_statement_is_answered(spark, workdir, sql: str) -> None:
    rows = ServingLayer(spark, CLICKSTREAM, workdir).answer(sql).frame.collect()
    assert rows, sql


@pytest.mark.integration
def test_show_and_describe_answer_from_the_registered_names(spark, workdir) -> None:
    serving = ServingLayer(spark, CLICKSTREAM, workdir)
    tables = {(r.namespace, r.tableName) for r in serving.query("SHOW TABLES").collect()}
    assert tables == set(serving.names) and ("master", "master_events") in tables
    assert [r.tableName for r in serving.query("SHOW TABLES IN speed").collect()] == ["page_activity"]
    described = {r.col_name: r.data_type for r in serving.query("DESCRIBE serving.page_activity").collect()}
    assert described["events"] == "bigint" and described["window_start"] == "timestamp"
    plan = serving.query("EXPLAIN SELECT count(*) FROM serving.page_activity").first().plan
    assert "Physical Plan" in plan


# ---- variations: hypothesis -------------------------------------------------------------------

_REFUSED_CORES = [
    "SELECT reflect('java.lang.System', 'getProperty', 'user.home') AS v",
    "SELECT * FROM text.`/etc/passwd`",
    "SELECT java_method('java.lang.System', 'getenv', 'HOME') AS v",
    "SELECT * FROM default.secret_table",
    "SELECT input_file_name() AS v FROM serving.page_activity",
    "SELECT * FROM read_files('/etc')",
]
_ALLOWED_CORE = "SELECT sum(events) AS n FROM serving.page_activity"


def _case(draw, text: str) -> str:
    """Random upper/lower case for the keywords (names of functions and relations are case-insensitive)."""
    words = []
    for word in text.split(" "):
        if "`" in word or "'" in word:
            words.append(word)
        else:
            words.append(draw(st.sampled_from([word, word.upper(), word.lower(), word.capitalize()])))
    return " ".join(words)


def _space(draw) -> str:
    return draw(st.sampled_from([" ", "  ", "\n", "\t", " /* c */ ", " -- note\n", "\n  "]))


@st.composite
def _wrapped(draw, core: str) -> str:
    """``core`` nested in CTEs, subqueries and aliases, with comments and white space."""
    sql = _case(draw, core)
    for _ in range(draw(st.integers(0, 3))):
        form = draw(st.sampled_from(["cte", "subquery", "scalar", "exists", "union_self"]))
        alias = draw(st.sampled_from(["t", "x1", "`q`", "Alias"]))
        s = _space(draw)
        if form == "cte":
            sql = f"WITH {alias} AS ({sql}){s}SELECT * FROM {alias}"
        elif form == "subquery":
            sql = f"SELECT *{s}FROM ({sql}) AS {alias}"
        elif form == "scalar":
            sql = f"SELECT ({sql}{s}LIMIT 1) AS {alias}"
        elif form == "exists":
            sql = f"SELECT 1 AS one WHERE EXISTS ({sql})"
        else:
            sql = f"{sql}{s}UNION ALL{s}{sql}"
    return _space(draw).lstrip(" ") + sql + draw(st.sampled_from(["", ";", " ;", "\n"]))


@hyp_settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_variations_of_refused_statements_are_refused(spark, data) -> None:
    core = data.draw(st.sampled_from(_REFUSED_CORES))
    sql = data.draw(_wrapped(core))
    with pytest.raises(ReadOnlyViolation):
        check_read_only(spark, sql)


@pytest.mark.integration
@hyp_settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_variations_of_allowed_statements_are_allowed_and_exact(spark, workdir, data) -> None:
    serving = ServingLayer(spark, CLICKSTREAM, workdir)
    expected = serving.query(_ALLOWED_CORE).first().n
    qualified = data.draw(
        st.sampled_from(["serving.page_activity", "`serving`.`page_activity`", "SERVING.Page_Activity"])
    )
    core = _ALLOWED_CORE.replace("serving.page_activity", qualified)
    form = data.draw(st.sampled_from(["plain", "cte", "subquery", "alias", "nested_cte"]))
    s = data.draw(st.sampled_from([" ", "\n", " /* c */ ", " -- c\n"]))
    if form == "cte":
        sql = f"WITH a AS ({core}){s}SELECT n FROM a"
    elif form == "subquery":
        sql = f"SELECT n FROM ({core}){s}AS t"
    elif form == "alias":
        sql = f"SELECT sum(p.events) AS n FROM {qualified} AS p"
    elif form == "nested_cte":
        sql = f"WITH a AS (WITH b AS (SELECT events FROM {qualified}) SELECT sum(events) AS n FROM b) SELECT * FROM a"
    else:
        sql = core
    sql = _case(data.draw, sql) if "`" not in sql else sql
    got = serving.query(sql).collect()
    assert [r[0] for r in got] == [expected], sql


def test_guard_messages_are_one_clear_line(spark) -> None:
    with pytest.raises(ReadOnlyViolation) as refused:
        check_read_only(spark, "DROP TABLE master.master_events")
    message = str(refused.value)
    assert "\n" not in message and message.startswith("refused: 'DROP TABLE master.master_events'")
    assert json.dumps(message)  # printable as it is


def test_resolved_check_refuses_a_relation_that_is_not_pinned(spark, workdir) -> None:
    from lambda_pipeline.serving_layer.binding import check_resolved

    serving = ServingLayer(spark, CLICKSTREAM, workdir)
    pinned = serving.relation("batch", "page_activity")._jdf.queryExecution().analyzed()
    master = serving.relation("master", "master_events")._jdf.queryExecution().analyzed()
    check_resolved("SELECT * FROM master.master_events", master, [master])
    with pytest.raises(ReadOnlyViolation, match="not a registered relation"):
        check_resolved("SELECT * FROM master.master_events", master, [pinned])
