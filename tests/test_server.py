"""The warm query server: answers at one pin over HTTP, the guard on that path, its bounds, tokens, the client."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from email.message import Message

import pytest

from lambda_pipeline.batch_layer.job import run_batch
from lambda_pipeline.cli.main import main
from lambda_pipeline.core.config import ServeSettings
from lambda_pipeline.core.errors import LambdaError
from lambda_pipeline.pipelines.clickstream import CLICKSTREAM
from lambda_pipeline.pipelines.generator import ClickstreamGenerator
from lambda_pipeline.serving_layer.catalog import ServingLayer
from lambda_pipeline.serving_layer.client import Client, ServerError
from lambda_pipeline.serving_layer.server import QueryServer, check_bind, server_file
from tests.helpers import LayersAtWork, batch_then_speed, events_at, ingest_once

MERGED_SUM = "SELECT sum(events) AS n FROM serving.page_activity"


def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, Message, bytes]:
    """Status, headers (names case-insensitive) and body of a GET, errors included."""
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read()


def test_a_bind_beyond_loopback_needs_a_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LAMBDA_PIPELINE_SERVE_TOKEN", raising=False)
    assert check_bind(ServeSettings(host="127.0.0.1")) is None
    with pytest.raises(LambdaError, match="export LAMBDA_PIPELINE_SERVE_TOKEN"):
        check_bind(ServeSettings(host="0.0.0.0"))
    monkeypatch.setenv("LAMBDA_PIPELINE_SERVE_TOKEN", "s3cret-value")
    assert check_bind(ServeSettings(host="0.0.0.0")) == "s3cret-value"


@pytest.fixture()
def served(spark, settings, locations):
    """A pipeline with a published batch (300 events) and 120 speed-only events, and a server over it."""
    generator = ClickstreamGenerator(5, malformed_fraction=0.0, duplicate_fraction=0.0)
    batch_then_speed(spark, settings, locations, generator, batch=(300, 1), speed=(120, 1))
    server = QueryServer(spark, CLICKSTREAM, locations, ServeSettings(port=0, max_rows=50, max_concurrent=4)).start()
    yield server
    server.stop()


@pytest.mark.integration
def test_the_server_answers_at_one_pin_and_keeps_its_bounds(spark, settings, locations, served, capsys) -> None:
    expected = ServingLayer(spark, CLICKSTREAM, locations).query(MERGED_SUM).first()
    assert expected is not None and expected.n == 420

    # JSON, with the pin and the provenance of the view it read.
    status, _, body = _get(f"{served.url}/query?" + urllib.parse.urlencode({"sql": MERGED_SUM}))
    answer = json.loads(body)
    assert status == 200 and answer["rows"] == [[420]] and answer["columns"] == ["n"]
    assert answer["pin"]["covered_master_version"] == 1 and answer["pin"]["master_table_version"] == 2
    assert [p["view"] for p in answer["provenance"]] == ["page_activity"]
    assert answer["provenance"][0]["uncovered_tags"] == [2, 2]

    # CSV, its answer's metadata in a header.
    by_page = "SELECT page, sum(events) AS n FROM speed.page_activity GROUP BY page ORDER BY page"
    status, headers, body = _get(f"{served.url}/query?" + urllib.parse.urlencode({"sql": by_page, "format": "csv"}))
    lines = body.decode().splitlines()
    assert status == 200 and lines[0] == "page,n" and sum(int(line.split(",")[1]) for line in lines[1:]) == 120
    assert json.loads(headers["X-Lambda-Pipeline-Answer"])["pin"]["covered_master_version"] == 1

    # Arrow through the client, equal to a recompute in this process.
    client = Client(served.url)
    arrow = client.query(by_page)
    direct = ServingLayer(spark, CLICKSTREAM, locations).query(by_page).toPandas()
    assert arrow.to_pandas().to_dict("records") == direct.to_dict("records")

    # Cut at the row limit, and saying so.
    cut = client.query("SELECT * FROM master.master_events")
    assert cut.table.num_rows == 50 and cut.truncated
    assert client.query("SELECT * FROM master.master_events", max_rows=7).table.num_rows == 7
    status, _, body = _get(f"{served.url}/query?" + urllib.parse.urlencode({"sql": MERGED_SUM, "max_rows": "-3"}))
    assert status == 400 and "max_rows" in json.loads(body)["error"]

    # The guard holds on this path: 400 with its message.
    with pytest.raises(ServerError, match="read-only") as refused:
        client.query("DROP TABLE master.master_events")
    assert refused.value.status == 400
    with pytest.raises(ServerError, match="Spark refused the statement") as wrong:
        client.query("SELECT no_such_column FROM serving.page_activity")
    assert wrong.value.status == 400

    # An over-long query (420^4 rows) is cancelled at its limit, and that server goes on.
    slow = (
        "SELECT count(*) AS n FROM master.master_events a, master.master_events b, "
        "master.master_events c, master.master_events d"
    )
    impatient = QueryServer(spark, CLICKSTREAM, locations, ServeSettings(port=0, query_timeout="2 seconds")).start()
    try:
        with pytest.raises(ServerError, match="query_timeout") as timed_out:
            Client(impatient.url).query(slow)
        assert timed_out.value.status == 504
    finally:
        impatient.stop()
    assert client.query(MERGED_SUM).table.to_pylist() == [{"n": 420}]  # the cancelled jobs left the session usable

    # Eight clients at once: every answer is the recompute's.
    with ThreadPoolExecutor(max_workers=8) as pool:
        totals = list(pool.map(lambda _: Client(served.url).query(MERGED_SUM).table.column("n")[0].as_py(), range(8)))
    assert totals == [420] * 8

    # The layers the server keeps in memory are those of the newest pin: a new ingest commit shows at once.
    ClickstreamGenerator(6, malformed_fraction=0.0, duplicate_fraction=0.0).write(locations.landing, 30, files=1)
    ingest_once(spark, settings, locations)
    assert client.query(MERGED_SUM).table.to_pylist() == [{"n": 450}]
    run_batch(spark, CLICKSTREAM, locations)
    assert client.query(MERGED_SUM).table.to_pylist() == [{"n": 450}]  # and so does a new publication

    # The CLI's query uses the running server of its work directory (and says so), unless --local.
    record = server_file(locations)
    assert record is not None and json.loads(record.read_text())["url"] == served.url
    assert main(["query", MERGED_SUM, "--format", "json", "--workdir", locations.workdir]) == 0
    out = capsys.readouterr()
    assert json.loads(out.out.strip()) == {"n": 450} and "answered by the query server" in out.err
    assert main(["query", "DROP TABLE master.master_events", "--workdir", locations.workdir]) == 2  # as locally
    assert "read-only" in capsys.readouterr().err


@pytest.mark.integration
def test_a_token_is_required_once_set(spark, locations, served, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LAMBDA_PIPELINE_SERVE_TOKEN", "a-long-random-token")
    guarded = QueryServer(spark, CLICKSTREAM, locations, ServeSettings(port=0)).start()
    try:
        status, _, body = _get(f"{guarded.url}/query?" + urllib.parse.urlencode({"sql": MERGED_SUM}))
        assert status == 401 and "token" in json.loads(body)["error"]
        wrong = {"Authorization": "Bearer not-it"}
        assert _get(f"{guarded.url}/health", wrong)[0] == 401
        answer = Client(guarded.url).query(MERGED_SUM)  # the client reads the same variable
        assert answer.table.to_pylist() == [{"n": 420}]
    finally:
        guarded.stop()


@pytest.mark.integration
def test_eight_clients_while_ingest_and_batch_run_each_get_the_answer_of_their_pin(spark, settings, locations) -> None:
    generator = ClickstreamGenerator(9, malformed_fraction=0.0, duplicate_fraction=0.0)
    batch_then_speed(spark, settings, locations, generator, batch=(200, 1), speed=(80, 1))
    server = QueryServer(spark, CLICKSTREAM, locations, ServeSettings(port=0, queue_wait="300 seconds")).start()

    def client(_: int) -> list[tuple[dict, int]]:
        answers: list[tuple[dict, int]] = []
        deadline = time.monotonic() + 600
        connection = Client(server.url)
        while time.monotonic() < deadline and len(answers) < 25:
            answer = connection.query(MERGED_SUM)
            answers.append((answer.pin, answer.table.column("n")[0].as_py()))
            if layers.done.is_set() and len(answers) >= 2:
                break
        return answers

    layers = LayersAtWork(spark, settings, locations, generator)
    try:
        with ThreadPoolExecutor(max_workers=8) as pool:
            answered = [a for answers in pool.map(client, range(8)) for a in answers]
        layers.join(timeout=600)
    finally:
        server.stop()
    by_pin = {json.dumps(pin, sort_keys=True): pin for pin, _ in answered}
    assert len(by_pin) >= 2, "the clients never saw the layers move"
    expected = {key: events_at(spark, locations, "page_activity", pin) for key, pin in by_pin.items()}
    for pin, n in answered:
        assert n == expected[json.dumps(pin, sort_keys=True)], pin
    assert max(expected.values()) <= 480
