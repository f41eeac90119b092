"""The live dashboard of the query server: any view of the pipeline moving, and where the batch layer ends.

What a newcomer should see is the one thing that sets this product apart: every row of the served view is
the batch layer's share plus the speed layer's share, and the boundary between them moves each time a batch
is published. The page (``/dashboard``) lists every view of the pipeline with its description, polls
``/dashboard/data?view=NAME`` and draws Vega-Lite charts built with altair on the server. What it draws
follows the view's declaration alone (:mod:`.dashboard_charts`): its keys, its window if any, its measures.
The Vega libraries come from ``vl-convert-python``'s bundle, served by the same server, so the page needs no
network beyond it.

Everything is read at one pin per update of the data, through :class:`ServingLayer` (the same relations the
guard binds a query to), plus the Delta logs of master and quarantine for the ingest rate (commit files, no
Spark job).
"""

from __future__ import annotations

import functools
import itertools
import math
from collections import OrderedDict
from datetime import date, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from pyspark.sql import functions as F
from pyspark.sql import types as T

from lambda_pipeline.core.clock import iso_utc, session_time, utc_now
from lambda_pipeline.core.deltalog import commit
from lambda_pipeline.core.views import WINDOW_START, View
from lambda_pipeline.serving_layer.catalog import ServingLayer
from lambda_pipeline.serving_layer.dashboard_charts import OTHER, TOP_KEYS, drawing, shape_of
from lambda_pipeline.serving_layer.pin import Pin

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession

__all__ = ["PAGE", "dashboard_data", "drawing", "vega_bundle"]

RATE_COMMITS = 60
"""Ingest commits the rate chart shows (the newest ones)."""
WINDOWS_SHOWN = 30
"""Event-time windows the charts show (the newest ones)."""
LAYER = "_dashboard_layer"
KEY = "_dashboard_key"
"""Columns the dashboard adds to a view's states: which layer a state comes from, and its key's label."""


_RATE_POINTS: OrderedDict[tuple[str, int], dict[str, Any] | None] = OrderedDict()
"""Each master commit's rate-chart point (None: it added no rows), read once: a commit file never changes, and
on S3 each read is a HEAD and a GET. Bounded to a few charts' worth."""


def _rate_point(spark: SparkSession, path: str, version: int) -> tuple[bool, dict[str, Any] | None]:
    """(found, point) of one master commit: not found once log retention removed it."""
    key = (path, version)
    if key in _RATE_POINTS:
        _RATE_POINTS.move_to_end(key)
        return True, _RATE_POINTS[key]
    actions = commit(spark, path, version)
    if actions is None:
        return False, None
    point = None
    for action in actions:
        info = action.get("commitInfo")
        rows = int(((info or {}).get("operationMetrics") or {}).get("numOutputRows", 0) or 0)
        if info and rows:
            point = {"version": version, "at_ms": int(info["timestamp"]), "rows": rows}
    _RATE_POINTS[key] = point
    while len(_RATE_POINTS) > 8 * RATE_COMMITS:
        _RATE_POINTS.popitem(last=False)
    return True, point


def _ingest_commits(spark: SparkSession, path: str, newest: int) -> list[dict[str, Any]]:
    """(time, rows) of the newest master commits that added rows, read from the commit files (each once)."""
    found: list[dict[str, Any]] = []
    for version in range(newest, max(-1, newest - RATE_COMMITS), -1):
        there, point = _rate_point(spark, path, version)
        if not there:
            break
        if point is not None:
            found.append(dict(point))
    found.reverse()
    for earlier, later in itertools.pairwise(found):
        later["events_per_second"] = round(later["rows"] * 1000 / max(1, later["at_ms"] - earlier["at_ms"]), 1)
    return found[1:]


def _plain(value: Any) -> Any:
    """A value of a view's row as JSON: numbers, ISO times and text (None for NaN and infinities)."""
    if isinstance(value, datetime):
        return session_time(value).isoformat()  # what 'query' prints, whatever this machine's zone
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Decimal):
        value = float(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, int | float | str):
        return value
    return str(value)


def _kind(dtype: T.DataType) -> str:
    """How Vega-Lite draws a measure of ``dtype``."""
    if isinstance(dtype, T.NumericType):
        return "quantitative"
    return "temporal" if isinstance(dtype, T.TimestampType | T.TimestampNTZType | T.DateType) else "nominal"


def _label(keys: tuple[str, ...]) -> Column:
    """A key's label: its values joined by `` / ``."""
    return F.concat_ws(" / ", *[F.coalesce(F.col(k).cast("string"), F.lit("null")) for k in keys])


def _folded(keys: tuple[str, ...], shown: list[str]) -> Column:
    """The key's label when it is one of ``shown``, else ``other``; null for a view without keys."""
    if not keys:
        return F.lit(None).cast("string")
    return F.when(_label(keys).isin(shown), _label(keys)).otherwise(F.lit(OTHER))


def _merged(view: View, measures: list[str] | None = None) -> list[Column]:
    """The view's merge of states into its measures (of ``measures`` only, if given)."""
    items = dict(zip(view.measures, view.merge_sql(), strict=True))
    return [F.expr(items[m]) for m in measures or list(items)]


def _row(row: Any, view: View, windowed: bool) -> dict[str, Any]:
    return {
        "key": row[KEY],
        "window_start": _plain(row[WINDOW_START]) if windowed else None,
        "values": {m: _plain(row[m]) for m in view.measures},
    }


def _shares(states: DataFrame, at: Column, measure: str, view: View, overlap: int = 1) -> list[dict[str, Any]]:
    """Per layer and ``at`` (a window, a key, or all), the layer's share of ``measure``."""
    rows = states.groupBy(LAYER, at.alias("at")).agg(*_merged(view, [measure])).collect()
    return [
        {
            "at": _plain(r["at"]) if r["at"] is not None else "all",
            "layer": r[LAYER],
            "value": float(r[measure] or 0) / overlap,
        }
        for r in rows
    ]


def view_rows(serving: ServingLayer, view: View, pin: Pin) -> dict[str, Any]:
    """What the charts of ``view`` need at ``pin``: its rows (merged from both layers), the layers' shares of
    its first additive measure, the batch boundary and the totals. Every aggregate is merged from the view's
    states, so ``other`` (the keys past the top ones) is exact for every measure."""
    served = serving.relation("serving", view.name, pin)  # refuses states of another definition
    shape = shape_of(view)
    windowed = WINDOW_START in view.group_columns
    batch = serving.relations.batch_states(view, pin).withColumn(LAYER, F.lit("batch"))
    every = batch.unionByName(serving.relations.speed_states(view, pin).withColumn(LAYER, F.lit("speed")))
    states = every
    additive = shape.additive.name if shape.additive is not None else None
    first = next(iter(view.measures))
    keys: tuple[str, ...] = tuple(view.keys)
    if windowed:
        newest = states.select(WINDOW_START).distinct().orderBy(F.col(WINDOW_START).desc()).limit(WINDOWS_SHOWN)
        states = states.join(F.broadcast(newest), WINDOW_START)
        ranked = (
            states.groupBy(_label(keys).alias(KEY))
            .agg(*_merged(view, [first]))
            .orderBy(F.col(first).desc_nulls_last(), KEY)
            .limit(TOP_KEYS)
            .collect()
            if keys
            else []
        )
        order = [r[KEY] for r in ranked]
        rows = states.groupBy(_folded(keys, order).alias(KEY), WINDOW_START).agg(*_merged(view)).collect()
        collected = [_row(r, view, windowed) for r in rows]
        split = [] if additive is None else _shares(states, F.col(WINDOW_START), additive, view)
        batch_starts = [s["at"] for s in split if s["layer"] == "batch"]
        boundary = max(batch_starts) if batch_starts else None
    else:
        labelled = served.withColumn(KEY, _label(keys) if keys else F.lit(None).cast("string"))
        if keys:  # the top keys of each measure, for its own chart
            tops = [labelled.orderBy(F.col(m).desc_nulls_last(), KEY).limit(TOP_KEYS) for m in view.measures]
            labelled = functools.reduce(lambda a, b: a.unionByName(b), tops)
        collected = list({r["key"]: r for r in (_row(row, view, windowed) for row in labelled.collect())}.values())
        if additive is not None and keys:
            ranked_rows = sorted(collected, key=lambda r: -float(r["values"][additive] or 0))[:TOP_KEYS]
            order = [r["key"] for r in ranked_rows]
        else:
            order = []
        split = [] if additive is None else _shares(states, _folded(keys, order), additive, view)
        boundary = None
    totals = None
    if additive is not None:  # over every window; a hopping window counts each event in `overlap` windows
        totals = {"batch": 0.0, "speed": 0.0}
        for share in _shares(every, F.lit(None), additive, view, shape.overlap):
            totals[share["layer"]] += share["value"]
    return {
        "shape": shape.as_dict(),
        "types": {m: _kind(served.schema[m].dataType) for m in view.measures},
        "rows": collected,
        "key_order": order + ([OTHER] if any(r["key"] == OTHER for r in collected) else []),
        "split": split,
        "batch_boundary": boundary,
        "totals": totals,
    }


def dashboard_data(serving: ServingLayer, view_name: str | None = None) -> dict[str, Any]:
    """What the page draws, at one fresh pin: the view's rows and the layers' shares (:func:`view_rows`),
    the freshness lag, the ingest rate, the quarantine reasons, and every view of the pipeline to choose from."""
    view = serving.pipeline.view(view_name) if view_name else serving.pipeline.views[0]
    pin: Pin = serving.take_pin()
    drawn = view_rows(serving, view, pin)
    provenance = serving.provenance(view.name, pin)
    quarantine = serving.relation("master", serving.locations.settings.tables.quarantine, pin)
    reasons = (
        quarantine.groupBy(F.substring_index(F.col("reason"), ":", 1).alias("reason")).count().collect()
        if pin.quarantine_version is not None
        else []
    )
    spark = serving.session
    return {
        "view": view.name,
        "views": [{"name": v.name, "description": v.description} for v in serving.pipeline.views],
        **drawn,
        "freshness_lag_seconds": provenance.freshness_lag_seconds,
        "provenance": provenance.as_dict(),
        "pin": pin.as_dict(),
        "ingest": _ingest_commits(spark, serving.locations.master, pin.master_version),  # no listing of its own
        "quarantine_reasons": sorted(({"reason": r["reason"], "count": int(r["count"])} for r in reasons), key=str),
        "generated_at": iso_utc(utc_now()),
    }


@functools.cache
def vega_bundle() -> str:
    """Vega, Vega-Lite and vega-embed as one script (from vl-convert-python), built once per process."""
    import vl_convert

    return vl_convert.javascript_bundle("window.vegaEmbed = vegaEmbed; window.vega = vega; window.vegaLite = vegaLite;")


PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>lambda-pipeline: live</title>
<style>
  body { font-family: system-ui, sans-serif; margin: 1.5rem; color: #222; }
  header, #figures { display: flex; gap: 2rem; align-items: baseline; flex-wrap: wrap; }
  h1 { margin: 0; } select { font-size: 1rem; margin-left: 0.5rem; }
  #description { color: #444; margin: 0.4rem 0 1rem; }
  .figure { font-size: 1.6rem; font-weight: 600; }
  .label { color: #666; font-size: 0.85rem; }
  #figures { margin-top: 1rem; }
  .grid { display: grid; grid-template-columns: repeat(auto-fit, minmax(420px, 1fr)); gap: 1.5rem; margin-top: 1rem; }
  .chart { width: 100%; }
  #status { color: #a00; }
</style>
<script src="dashboard/vega.js__QUERY__"></script>
</head>
<body>
<header>
  <h1>serving.<select id="view" aria-label="view"></select></h1>
  <div><div class="figure" id="total">…</div>
    <div class="label" id="total-label">served in all (batch + speed)</div></div>
  <div><div class="figure" id="speed-share">…</div><div class="label">of them from the speed layer</div></div>
  <div><div class="figure" id="lag">…</div><div class="label">freshness lag</div></div>
  <div><div class="figure" id="pin">…</div><div class="label">master version (batch covers up to)</div></div>
  <div id="status"></div>
</header>
<p id="description"></p>
<div id="figures"></div>
<div class="grid" id="charts"></div>
<script>
const every = __REFRESH_MS__;
let timer = null, running = false, again = false;
function figure(value, label) {
  const box = document.createElement("div");
  const number = Object.assign(document.createElement("div"), {className: "figure", textContent: value});
  box.append(number, Object.assign(document.createElement("div"), {className: "label", textContent: label}));
  return box;
}
function shown(value, type) {
  if (value == null) { return "–"; }
  if (type === "quantitative") { return Number(value).toLocaleString("en", {maximumFractionDigits: 3}); }
  return type === "temporal" ? new Date(value).toLocaleString("en") : String(value);
}
function draw(d) {
  const select = document.getElementById("view");
  if (select.options.length !== d.views.length) {
    select.replaceChildren(...d.views.map(v => new Option(v.name, v.name)));
  }
  select.value = d.view;
  document.title = "lambda-pipeline: serving." + d.view;
  const shape = d.shape, additive = shape.measures.find(m => m.additive);
  document.getElementById("description").textContent = [
    shape.description,
    shape.keys.length ? "keys: " + shape.keys.join(", ") : "no keys",
    shape.window ? "windows: " + shape.window : "all-time totals (no window)",
  ].filter(Boolean).join(" · ");
  const total = d.totals ? d.totals.batch + d.totals.speed : null;
  const totalBox = document.getElementById("total");
  totalBox.textContent = total == null ? "–" : total.toLocaleString("en", {maximumFractionDigits: 3});
  totalBox.dataset.value = total == null ? "" : String(total);
  document.getElementById("total-label").textContent =
    (additive ? additive.name + " " : "") + "served in all (batch + speed)";
  const share = total ? (100 * d.totals.speed / total).toFixed(1) + " %" : "–";
  document.getElementById("speed-share").textContent = share;
  const lag = d.freshness_lag_seconds;
  document.getElementById("lag").textContent = lag == null ? "–" : lag.toFixed(1) + " s";
  document.getElementById("pin").textContent = d.pin.master_table_version + " (" + d.pin.covered_master_version + ")";
  document.body.dataset.masterVersion = String(d.pin.master_table_version);
  document.body.dataset.view = d.view;
}
async function refresh() {
  if (running) { again = true; return; }
  running = true;
  clearTimeout(timer);
  try {
    const response = await fetch("dashboard/data" + location.search, {cache: "no-store"});
    const body = await response.json();
    if (!response.ok) { throw new Error(body.error || response.statusText); }
    document.body.dataset.ready = "drawing";  // "true" again once every chart is drawn
    draw(body.data);
    document.getElementById("figures").replaceChildren(
      ...body.figures.map(f => figure(shown(f.value, f.type), f.name + " = " + f.label)));
    const grid = document.getElementById("charts"), names = Object.keys(body.charts);
    if ([...grid.children].map(c => c.id).join() !== names.map(n => "chart-" + n).join()) {
      const box = n => Object.assign(document.createElement("div"), {id: "chart-" + n, className: "chart"});
      grid.replaceChildren(...names.map(box));
    }
    for (const [name, spec] of Object.entries(body.charts)) {
      await vegaEmbed("#chart-" + name, spec, {actions: false, renderer: "svg"});
    }
    document.getElementById("status").textContent = "";
    document.body.dataset.ready = "true";
  } catch (error) {
    document.getElementById("status").textContent = "refresh failed: " + error.message;
  }
  running = false;
  if (again) { again = false; refresh(); } else { timer = setTimeout(refresh, every); }
}
document.getElementById("view").addEventListener("change", event => {
  const params = new URLSearchParams(location.search);
  params.set("view", event.target.value);
  history.replaceState(null, "", "?" + params.toString());
  document.body.dataset.ready = "false";
  refresh();
});
refresh();
</script>
</body>
</html>
"""
