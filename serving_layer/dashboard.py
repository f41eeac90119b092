"""The live dashboard of the query server: the merged view moving, and where the batch layer ends.

What a newcomer should see is the one thing that sets this product apart: every window of the served view
is the batch layer's share plus the speed layer's share, and the boundary between them moves each time a
batch is published. The page (``/dashboard``) polls ``/dashboard/data`` and draws Vega-Lite charts built
with altair on the server; the Vega libraries come from ``vl-convert-python``'s bundle, served by the same
server, so the page needs no network beyond it.

Everything is read at one pin per update of the data, through :class:`ServingLayer` (the same relations the
guard binds a query to), plus the Delta logs of master and quarantine for the ingest rate (commit files, no
Spark job).
"""

from __future__ import annotations

import functools
import itertools
from datetime import datetime
from typing import TYPE_CHECKING, Any

from pyspark.sql import functions as F

from lambda_pipeline.core.deltalog import commits
from lambda_pipeline.core.tables import table_version
from lambda_pipeline.core.views import WINDOW_START, View
from lambda_pipeline.serving_layer.catalog import ServingLayer
from lambda_pipeline.serving_layer.pin import Pin

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

__all__ = ["PAGE", "additive_measure", "charts", "dashboard_data", "vega_bundle"]

RATE_COMMITS = 60
"""Ingest commits the rate chart shows (the newest ones)."""
WINDOWS_SHOWN = 30
"""Event-time windows the charts show (the newest ones)."""


def additive_measure(view: View) -> str:
    """The measure whose batch and speed shares add up (a count, else a sum): the one the charts split."""
    for name, aggregate in view.measures.items():
        if aggregate.kind in {"count", "sum"}:
            return name
    raise ValueError(f"view '{view.name}' has no count or sum measure to draw")


def _ingest_commits(spark: SparkSession, path: str, newest: int) -> list[dict[str, Any]]:
    """(time, rows) of the newest master commits that added rows, read from the commit files."""
    found: list[dict[str, Any]] = []
    for version, actions in commits(spark, path, newest, RATE_COMMITS):
        for action in actions:
            info = action.get("commitInfo")
            rows = int(((info or {}).get("operationMetrics") or {}).get("numOutputRows", 0) or 0)
            if info and rows:
                found.append({"version": version, "at_ms": int(info["timestamp"]), "rows": rows})
    found.reverse()
    for earlier, later in itertools.pairwise(found):
        later["events_per_second"] = round(later["rows"] * 1000 / max(1, later["at_ms"] - earlier["at_ms"]), 1)
    return found[1:]


def dashboard_data(serving: ServingLayer, view_name: str | None = None) -> dict[str, Any]:
    """What the page draws, at one fresh pin: per window and key the batch and speed shares, the boundary,
    the freshness lag, the ingest rate and the quarantine reasons."""
    view = serving.pipeline.view(view_name) if view_name else serving.pipeline.views[0]
    measure = additive_measure(view)
    pin: Pin = serving.take_pin()
    key = view.keys[0] if view.keys else None
    group = [WINDOW_START, *([key] if key else [])]

    def shares(layer: str) -> list[dict[str, Any]]:
        frame = serving.relation(layer, view.name, pin).groupBy(*group).agg(F.sum(measure).alias("value"))
        newest = frame.select(WINDOW_START).distinct().orderBy(F.col(WINDOW_START).desc()).limit(WINDOWS_SHOWN)
        rows = frame.join(newest, WINDOW_START).collect()
        return [
            {
                "window_start": row[WINDOW_START].isoformat(),
                "key": None if key is None else str(row[key]),
                "layer": layer,
                "value": float(row["value"] or 0),
            }
            for row in rows
        ]

    def total(layer: str) -> float:
        row = serving.relation(layer, view.name, pin).agg(F.sum(measure)).first()
        return float(row[0] or 0) if row is not None else 0.0

    windows = shares("batch") + shares("speed")
    starts = sorted({w["window_start"] for w in windows})[-WINDOWS_SHOWN:]
    windows = [w for w in windows if w["window_start"] in starts]
    batch_starts = [w["window_start"] for w in windows if w["layer"] == "batch"]
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
        "measure": measure,
        "key": key,
        "windows": windows,
        "batch_boundary": max(batch_starts) if batch_starts else None,
        "totals": {layer: total(layer) for layer in ("batch", "speed")},
        "freshness_lag_seconds": provenance.freshness_lag_seconds,
        "provenance": provenance.as_dict(),
        "pin": pin.as_dict(),
        "ingest": _ingest_commits(spark, serving.locations.master, table_version(spark, serving.locations.master) or 0),
        "quarantine_reasons": sorted(({"reason": r["reason"], "count": int(r["count"])} for r in reasons), key=str),
        "generated_at": datetime.now().isoformat(timespec="seconds"),
    }


def charts(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Vega-Lite specifications (altair) of the page's charts, data inlined."""
    import altair as alt

    measure, key = data["measure"], data["key"] or "all"
    windows = alt.Data(values=data["windows"])
    layer_colors = alt.Scale(domain=["batch", "speed"], range=["#4c78a8", "#f58518"])
    split = (
        alt.Chart(windows)
        .mark_bar()
        .encode(
            x=alt.X("window_start:T", title="event-time window"),
            y=alt.Y("sum(value):Q", title=measure),
            color=alt.Color("layer:N", scale=layer_colors, title="layer"),
            tooltip=["window_start:T", "layer:N", alt.Tooltip("sum(value):Q", title=measure)],
        )
    )
    boundary = data["batch_boundary"]
    if boundary is not None:
        rule = (
            alt.Chart(alt.Data(values=[{"at": boundary}]))
            .mark_rule(color="black", strokeDash=[4, 3])
            .encode(x="at:T", tooltip=[alt.Tooltip("at:T", title="newest window the batch layer holds")])
        )
        split = split + rule
    per_key = (
        alt.Chart(windows)
        .mark_line(point=True)
        .encode(
            x=alt.X("window_start:T", title="event-time window"),
            y=alt.Y("sum(value):Q", title=f"{measure} (batch + speed)"),
            color=alt.Color("key:N", title=key),
            tooltip=["window_start:T", "key:N", alt.Tooltip("sum(value):Q", title=measure)],
        )
    )
    rate = (
        alt.Chart(alt.Data(values=data["ingest"]))
        .mark_line(point=True)
        .encode(
            x=alt.X("at_ms:T", title="master commit"),
            y=alt.Y("events_per_second:Q", title="events/s ingested"),
            tooltip=["version:Q", "rows:Q", "events_per_second:Q"],
        )
    )
    reasons = (
        alt.Chart(alt.Data(values=data["quarantine_reasons"]))
        .mark_bar()
        .encode(
            x=alt.X("count:Q", title="lines"),
            y=alt.Y("reason:N", title=None, sort="-x"),
            tooltip=["reason:N", "count:Q"],
        )
    )
    size = {"width": "container", "height": 220}
    return {
        "split": split.properties(**size, title="Batch and speed share of each window").to_dict(),
        "per_key": per_key.properties(**size, title=f"{measure} per {key}").to_dict(),
        "rate": rate.properties(**size, title="Ingest rate").to_dict(),
        "reasons": reasons.properties(**size, title="Quarantine by reason").to_dict(),
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
  header { display: flex; gap: 2rem; align-items: baseline; flex-wrap: wrap; }
  .figure { font-size: 1.6rem; font-weight: 600; }
  .label { color: #666; font-size: 0.85rem; }
  .grid { display: grid; grid-template-columns: repeat(auto-fit, minmax(420px, 1fr)); gap: 1.5rem; margin-top: 1rem; }
  .chart { width: 100%; }
  #status { color: #a00; }
</style>
<script src="dashboard/vega.js__QUERY__"></script>
</head>
<body>
<header>
  <h1>serving.<span id="view">…</span></h1>
  <div><div class="figure" id="total">…</div><div class="label">served in all (batch + speed)</div></div>
  <div><div class="figure" id="speed-share">…</div><div class="label">of them from the speed layer</div></div>
  <div><div class="figure" id="lag">…</div><div class="label">freshness lag</div></div>
  <div><div class="figure" id="pin">…</div><div class="label">master version (batch covers up to)</div></div>
  <div id="status"></div>
</header>
<div class="grid">
  <div class="chart" id="split"></div>
  <div class="chart" id="per_key"></div>
  <div class="chart" id="rate"></div>
  <div class="chart" id="reasons"></div>
</div>
<script>
const every = __REFRESH_MS__;
async function refresh() {
  try {
    const response = await fetch("dashboard/data" + location.search, {cache: "no-store"});
    const body = await response.json();
    if (!response.ok) { throw new Error(body.error || response.statusText); }
    const d = body.data, total = d.totals.batch + d.totals.speed;
    document.getElementById("view").textContent = d.view;
    document.getElementById("total").textContent = total.toLocaleString("en");
    document.getElementById("total").dataset.value = String(total);
    const share = total ? (100 * d.totals.speed / total).toFixed(1) + " %" : "–";
    document.getElementById("speed-share").textContent = share;
    const lag = d.freshness_lag_seconds;
    document.getElementById("lag").textContent = lag == null ? "–" : lag.toFixed(1) + " s";
    document.getElementById("pin").textContent = d.pin.master_table_version + " (" + d.pin.covered_master_version + ")";
    document.body.dataset.masterVersion = String(d.pin.master_table_version);
    for (const [name, spec] of Object.entries(body.charts)) {
      await vegaEmbed("#" + name, spec, {actions: false, renderer: "svg"});
    }
    document.getElementById("status").textContent = "";
    document.body.dataset.ready = "true";
  } catch (error) {
    document.getElementById("status").textContent = "refresh failed: " + error.message;
  }
  setTimeout(refresh, every);
}
refresh();
</script>
</body>
</html>
"""
