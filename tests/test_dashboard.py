"""The live dashboard in a real headless browser (Debian's Chromium, driven through chromedriver)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from lambda_pipeline.batch_layer.job import run_batch
from lambda_pipeline.core.aggregates import approx_quantile, count, max_of
from lambda_pipeline.core.config import ServeSettings
from lambda_pipeline.core.pipeline import Pipeline
from lambda_pipeline.core.views import View
from lambda_pipeline.core.windows import HoppingWindow, TumblingWindow
from lambda_pipeline.pipelines.clickstream import CLICKS, PAGE_ACTIVITY
from lambda_pipeline.pipelines.generator import ClickstreamGenerator
from lambda_pipeline.pipelines.ingest import start_ingest
from lambda_pipeline.pipelines.iot import DEVICE_TOTALS
from lambda_pipeline.serving_layer.client import Client
from lambda_pipeline.serving_layer.dashboard_charts import OTHER, TOP_KEYS, MeasureShape, ViewShape, drawing, shape_of
from lambda_pipeline.serving_layer.server import QueryServer

ARTIFACTS = Path(
    os.environ.get("LAMBDA_PIPELINE_TEST_ARTIFACTS", Path(__file__).resolve().parents[1] / "test-artifacts")
)
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
TOTAL = "SELECT sum(events) AS n FROM serving.page_activity"


@pytest.fixture()
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1400,1000",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


SHOWN = """
const body = document.body;
if (body.dataset.ready !== "true") { return null; }
const text = id => document.getElementById(id).textContent;
return {
  view: body.dataset.view,
  total: document.getElementById("total").dataset.value,
  master: body.dataset.masterVersion,
  charts: [...document.querySelectorAll(".chart")].filter(c => c.querySelector("svg")).map(c => c.id),
  views: [...document.querySelectorAll("#view option")].map(o => o.value),
  description: text("description"),
  figures: [...document.querySelectorAll("#figures > div")].map(f => [...f.children].map(c => c.textContent)),
};
"""
"""What the page shows, read in one script (so, between two of the page's own tasks): null while it draws."""


def _shown(browser, until_total: int | None = None, view: str | None = None, timeout: float = 90.0) -> dict:
    """Wait (bounded) until the page has drawn its charts (of ``view``, showing ``until_total``); what it shows."""
    from selenium.webdriver.support.ui import WebDriverWait

    def drawn(driver) -> dict | None:
        shown = driver.execute_script(SHOWN)
        if shown is None or view not in {None, shown["view"]}:
            return None
        shown["total"], shown["master"] = round(float(shown["total"])), int(shown["master"])
        return shown if until_total is None or shown["total"] == until_total else None

    return WebDriverWait(browser, timeout, poll_frequency=0.25).until(drawn)


# Views of every other shape than page_activity's (keys, tumbling window), over the same events: no keys and
# a hopping window (each event counts in two windows) with a measure whose layers do not add up; no window
# (all-time totals per page); neither keys nor window (one row).
MINUTES = View(
    "minutes",
    CLICKS,
    window=HoppingWindow("event_time", "10 minutes", "5 minutes"),
    measures={"events": count(), "median_ms": approx_quantile("duration_ms", 0.5)},
    description="All pages, 10-minute windows every 5 minutes: events and the median visit.",
)
PAGE_TOTALS = View(
    "page_totals",
    CLICKS,
    keys=("page",),
    measures={"events": count(), "last_visit": max_of("event_time")},
    description="Per page, all time: events and the last visit.",
)
EVERYTHING = View("everything", CLICKS, measures={"events": count(), "longest_ms": max_of("duration_ms")})
DASHED = Pipeline("dashed", CLICKS, (PAGE_ACTIVITY, MINUTES, PAGE_TOTALS, EVERYTHING))


def _ingest(spark, settings, locations) -> None:
    start_ingest(spark, DASHED, settings, locations, once=True).awaitTermination()


def _choose(browser, view: str) -> dict:
    """Pick ``view`` in the page's selector; what the page shows once it has drawn it."""
    from selenium.webdriver.support.ui import Select

    Select(browser.find_element("id", "view")).select_by_value(view)
    shown = _shown(browser, view=view)
    assert f"view={view}" in browser.current_url  # a reload stays on the view chosen
    browser.save_screenshot(str(ARTIFACTS / f"dashboard-{view}.png"))
    return shown


@pytest.mark.integration
def test_the_dashboard_shows_every_view_and_moves(spark, settings, locations, browser) -> None:
    generator = ClickstreamGenerator(9, malformed_fraction=0.05, duplicate_fraction=0.05)
    generator.write(locations.landing, 400, files=2)
    _ingest(spark, settings, locations)
    run_batch(spark, DASHED, locations)
    generator.write(locations.landing, 150, files=1)
    _ingest(spark, settings, locations)

    server = QueryServer(spark, DASHED, locations, ServeSettings(port=0)).start()
    try:
        browser.get(f"{server.url}/dashboard")
        shown = _shown(browser)
        answer = Client(server.url).query(TOTAL)
        assert answer.pin["master_table_version"] == shown["master"]  # the same pin: nothing was ingested since
        assert shown["total"] == answer.table.column("n")[0].as_py() == 550
        assert shown["view"] == "page_activity" and shown["views"] == [v.name for v in DASHED.views]
        measures = [f"chart-measure-{m}" for m in PAGE_ACTIVITY.measures]
        assert shown["charts"] == ["chart-split", *measures, "chart-rate", "chart-reasons"]
        assert PAGE_ACTIVITY.description in shown["description"] and "keys: page" in shown["description"]
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        browser.save_screenshot(str(ARTIFACTS / "dashboard.png"))

        # Every view shows the same 550 events: a hopping window's count is not doubled in the total.
        minutes = _choose(browser, "minutes")
        assert minutes["total"] == 550 and "no keys" in minutes["description"] and "hopping" in minutes["description"]
        assert minutes["charts"] == [
            "chart-split",
            "chart-measure-events",
            "chart-measure-median_ms",
            "chart-rate",
            "chart-reasons",
        ]
        totals = _choose(browser, "page_totals")
        assert totals["total"] == 550 and "all-time totals" in totals["description"]
        assert totals["charts"] == [
            "chart-split",
            "chart-measure-events",
            "chart-measure-last_visit",
            "chart-rate",
            "chart-reasons",
        ]
        everything = _choose(browser, "everything")
        assert everything["total"] == 550 and everything["charts"] == ["chart-split", "chart-rate", "chart-reasons"]
        assert everything["figures"][0] == ["550", "events = count()"]

        response = requests_get(f"{server.url}/dashboard/data?view=nope")
        assert response[0] == 400 and "has no view 'nope'" in response[1]

        generator.write(locations.landing, 80, files=1)
        _ingest(spark, settings, locations)
        moved = _shown(browser, until_total=630, view="everything")
        assert moved["master"] > everything["master"]
        assert moved["figures"][0][0] == "630"
        browser.save_screenshot(str(ARTIFACTS / "dashboard-after-new-events.png"))
    finally:
        server.stop()


def requests_get(url: str) -> tuple[int, str]:
    """(status, body) of a GET, errors included."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


# ---- the drawing of any view, from its declaration (a pure function: no Spark, no browser) ------------------


def _compiles(spec: dict) -> None:
    """The spec is valid Vega-Lite: altair validated it; vl-convert compiles it to Vega."""
    import vl_convert

    vl_convert.vegalite_to_vega(spec)


def _data(shape: ViewShape, rows: list[dict], **more) -> dict:
    types = {m.name: "quantitative" for m in shape.measures}
    return {
        "shape": shape.as_dict(),
        "types": {**types, **more.pop("types", {})},
        "rows": rows,
        "key_order": more.pop("key_order", []),
        "split": more.pop("split", []),
        "batch_boundary": more.pop("batch_boundary", None),
        "ingest": [],
        "quarantine_reasons": [],
    }


def _inline(spec: dict) -> list[dict]:
    return spec["data"]["values"]


def test_the_shape_of_a_declaration() -> None:
    shape = shape_of(PAGE_ACTIVITY)
    assert shape.keys == ("page",) and shape.window == "1 minute tumbling over event_time"
    assert [(m.name, m.label, m.additive) for m in shape.measures] == [
        ("events", "count()", True),
        ("total_duration_ms", "sum(duration_ms)", True),
        ("max_duration_ms", "max(duration_ms)", False),
        ("unique_users", "approx_distinct(user_id, 12)", False),
    ]
    assert shape.additive is not None and shape.additive.name == "events" and shape.overlap == 1
    assert ViewShape.from_dict(shape.as_dict()) == shape
    keyless = View(
        "minutes", CLICKS, (), TumblingWindow("event_time", "5 minutes"), {"p95": approx_quantile("duration_ms", 0.95)}
    )
    assert shape_of(keyless).keys == () and shape_of(keyless).measures[0].label == "approx_quantile(duration_ms, 0.95)"
    assert shape_of(keyless).additive is None


def test_a_windowed_view_with_keys_draws_each_measure_per_key_over_windows() -> None:
    shape = shape_of(PAGE_ACTIVITY)
    rows = [
        {
            "key": key,
            "window_start": f"2026-01-01T00:0{w}:00",
            "values": {m.name: w + i for i, m in enumerate(shape.measures)},
        }
        for key in ("/home", "/cart", OTHER)
        for w in range(3)
    ]
    split = [
        {"at": "2026-01-01T00:00:00", "layer": "batch", "value": 3.0},
        {"at": "2026-01-01T00:01:00", "layer": "speed", "value": 2.0},
    ]
    drawn = drawing(
        _data(shape, rows, key_order=["/home", "/cart", OTHER], split=split, batch_boundary="2026-01-01T00:00:00")
    )
    names = [f"measure-{m.name}" for m in shape.measures]
    assert list(drawn["charts"]) == ["split", *names, "rate", "reasons"] and drawn["figures"] == []
    chart = drawn["charts"]["measure-max_duration_ms"]
    assert chart["mark"]["type"] == "line"
    assert chart["encoding"]["x"]["field"] == "window_start" and chart["encoding"]["x"]["type"] == "temporal"
    assert chart["encoding"]["color"]["scale"]["domain"] == ["/home", "/cart", OTHER]
    assert {(p["key"], p["value"]) for p in _inline(chart)} >= {("/cart", 2 + 2), (OTHER, 0 + 2)}
    assert "per page" in chart["title"]
    split_spec = drawn["charts"]["split"]
    assert [layer["mark"]["type"] for layer in split_spec["layer"]] == ["bar", "rule"]  # the batch boundary
    for spec in drawn["charts"].values():
        _compiles(spec)


def test_a_windowed_view_without_keys_draws_one_series() -> None:
    view = View(
        "minutes",
        CLICKS,
        (),
        TumblingWindow("event_time", "5 minutes"),
        {"events": count(), "longest": max_of("duration_ms")},
    )
    shape = shape_of(view)
    rows = [
        {"key": None, "window_start": f"2026-01-01T00:{5 * w:02d}:00", "values": {"events": 10 * w, "longest": w}}
        for w in range(4)
    ]
    drawn = drawing(_data(shape, rows))
    chart = drawn["charts"]["measure-events"]
    assert "color" not in chart["encoding"] and [p["value"] for p in _inline(chart)] == [0, 10, 20, 30]
    assert "tumbling" in chart["encoding"]["x"]["title"]
    for spec in drawn["charts"].values():
        _compiles(spec)


def test_a_hopping_window_is_a_window_like_any_other() -> None:
    view = View(
        "sliding",
        CLICKS,
        ("page",),
        HoppingWindow("event_time", "10 minutes", "5 minutes"),
        {"n": count()},
    )
    shape = shape_of(view)
    assert shape.window == "10 minutes hopping every 5 minutes over event_time" and shape.overlap == 2
    rows = [{"key": "a", "window_start": "2026-01-01T00:00:00", "values": {"n": 4}}]
    drawn = drawing(_data(shape, rows, key_order=["a"]))
    assert drawn["charts"]["measure-n"]["mark"]["type"] == "line"
    assert "hopping" in drawn["charts"]["measure-n"]["encoding"]["x"]["title"]


def test_the_shape_of_views_without_a_window() -> None:
    shape = shape_of(DEVICE_TOTALS)  # the IoT example's all-time view
    assert shape.window is None and shape.keys == ("device_id",) and shape.overlap == 1
    assert [m.label for m in shape.measures] == ["count()", "min(ts)", "max(ts)"]
    one_row = View("everything", CLICKS, measures={"events": count(), "longest": max_of("duration_ms")})
    assert shape_of(one_row).keys == () and shape_of(one_row).window is None


def test_a_view_without_a_window_draws_the_top_keys_of_each_measure() -> None:
    # As lambda_pipeline/pipelines/iot.py's device_totals: per device, all time (no window_start column at all).
    shape = ViewShape(
        "device_totals",
        "all-time readings per device",
        ("device_id",),
        None,
        (MeasureShape("readings", "count()", True), MeasureShape("last_seen", "max(ts)", False)),
    )
    rows = [
        {
            "key": f"dev-{i:02d}",
            "window_start": None,
            "values": {"readings": i, "last_seen": f"2026-01-{28 - i:02d}T00:00:00"},
        }
        for i in range(12)
    ]
    rows.append({"key": "dev-null", "window_start": None, "values": {"readings": None, "last_seen": None}})
    split = [{"at": "dev-11", "layer": "batch", "value": 9.0}, {"at": "dev-11", "layer": "speed", "value": 2.0}]
    drawn = drawing(_data(shape, rows, types={"last_seen": "temporal"}, split=split))
    assert list(drawn["charts"]) == ["split", "measure-readings", "measure-last_seen", "rate", "reasons"]
    readings = drawn["charts"]["measure-readings"]
    assert readings["mark"]["type"] == "bar" and readings["encoding"]["y"]["field"] == "key"
    assert [p["key"] for p in _inline(readings)] == [f"dev-{i:02d}" for i in range(11, 11 - TOP_KEYS, -1)]
    assert readings["encoding"]["y"]["sort"] == [p["key"] for p in _inline(readings)]
    last_seen = drawn["charts"]["measure-last_seen"]  # times are drawn as points on a time axis, not bars from 1970
    assert last_seen["mark"]["type"] == "point" and last_seen["encoding"]["x"]["type"] == "temporal"
    assert [p["key"] for p in _inline(last_seen)][:2] == ["dev-00", "dev-01"]  # the newest first
    assert drawn["charts"]["split"]["encoding"]["y"]["field"] == "at"  # shares per key, not per window
    assert drawn["figures"] == []
    for spec in drawn["charts"].values():
        _compiles(spec)


def test_a_view_without_keys_or_window_shows_its_one_row_as_figures() -> None:
    shape = ViewShape(
        "totals",
        "",
        (),
        None,
        (MeasureShape("events", "count()", True), MeasureShape("p50", "approx_quantile(ms, 0.5)", False)),
    )
    drawn = drawing(_data(shape, [{"key": None, "window_start": None, "values": {"events": 550, "p50": 1234.5}}]))
    assert list(drawn["charts"]) == ["split", "rate", "reasons"]  # no chart of one value
    assert drawn["figures"] == [
        {"name": "events", "label": "count()", "value": 550, "type": "quantitative"},
        {"name": "p50", "label": "approx_quantile(ms, 0.5)", "value": 1234.5, "type": "quantitative"},
    ]
    assert drawing(_data(shape, []))["figures"][0]["value"] is None  # nothing ingested yet
    for spec in drawn["charts"].values():
        _compiles(spec)


def test_a_view_without_a_count_or_sum_has_no_split() -> None:
    shape = ViewShape(
        "extremes", "", ("page",), "1 minute tumbling over event_time", (MeasureShape("longest", "max(ms)", False),)
    )
    drawn = drawing(_data(shape, []))
    assert list(drawn["charts"]) == ["measure-longest", "rate", "reasons"]
