"""The dashboard's charts, drawn from a view's declaration alone: no column of any pipeline is assumed.

A view's shape decides what is drawn (:class:`ViewShape`, taken from the declaration by :func:`shape_of`):

- windowed, with keys: each measure over the windows, one series per key (the top keys by the first
  measure, the rest merged into ``other``);
- windowed, without keys: each measure over the windows, one series;
- without a window, with keys: per measure, a bar of its top keys;
- without a window or keys: the view's one row, as figures.

Hopping windows are windows like any other (each event counts in ``overlap`` of them). Every view also gets
the batch and speed shares of its first additive measure (a count or a sum: the one whose shares add up), the
ingest rate and the quarantine reasons.

:func:`drawing` is a pure function of the rows the dashboard collected (:mod:`.dashboard`) and the shape:
Vega-Lite specifications built with altair, data inlined.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lambda_pipeline.core.aggregates import Aggregate
    from lambda_pipeline.core.views import View

__all__ = ["OTHER", "TOP_KEYS", "MeasureShape", "ViewShape", "drawing", "shape_of"]

TOP_KEYS = 8
"""Keys a chart draws one by one; the others are merged into one series, ``other``."""
OTHER = "other"
ADDITIVE = frozenset({"count", "sum"})
"""Aggregate kinds whose batch and speed shares add up to the served value."""
SIZE = {"width": "container", "height": 220}
LAYERS, LAYER_COLORS = ["batch", "speed"], ["#4c78a8", "#f58518"]


@dataclass(frozen=True)
class MeasureShape:
    """One measure as the dashboard draws it: its name, what it computes, and whether layers add up."""

    name: str
    label: str
    """What it computes, as declared: ``count()``, ``max(duration_ms)``, ``approx_quantile(temp, 0.95)``."""
    additive: bool


@dataclass(frozen=True)
class ViewShape:
    """What the dashboard needs of a view's declaration (and sends to the page as JSON)."""

    name: str
    description: str
    keys: tuple[str, ...]
    window: str | None
    """How the view is windowed, in words (``5 minutes tumbling over ts``); None for all-time totals."""
    measures: tuple[MeasureShape, ...]
    overlap: int = 1
    """The windows each event counts in: size / slide for a hopping window, else 1."""

    @property
    def additive(self) -> MeasureShape | None:
        """The first measure whose batch and speed shares add up (a count or a sum), if any."""
        return next((m for m in self.measures if m.additive), None)

    @property
    def key_label(self) -> str:
        return " / ".join(self.keys) if self.keys else "all"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ViewShape:
        measures = tuple(MeasureShape(**m) for m in data["measures"])
        return cls(**{**data, "keys": tuple(data["keys"]), "measures": measures})


def _measure_label(aggregate: Aggregate) -> str:
    arguments = [aggregate.column] if aggregate.column is not None else []
    arguments += [str(value) for name, value in aggregate.params if name != "k"]
    return f"{aggregate.kind}({', '.join(arguments)})"


def shape_of(view: View) -> ViewShape:
    """The shape of ``view``'s declaration: its keys, its window (if any) and its measures."""
    from lambda_pipeline.core.windows import HoppingWindow

    window, described = view.window, None
    if isinstance(window, HoppingWindow):
        described = f"{window.size} hopping every {window.slide} over {window.column}"
    elif window is not None:
        described = f"{window.size} tumbling over {window.column}"
    measures = tuple(
        MeasureShape(name, _measure_label(aggregate), aggregate.kind in ADDITIVE)
        for name, aggregate in view.measures.items()
    )
    overlap = window.per_event if window is not None else 1
    return ViewShape(view.name, view.description, tuple(view.keys), described, measures, overlap)


# ---- the charts ---------------------------------------------------------------------------------------------


def _values(data: dict[str, Any], measure: str) -> list[dict[str, Any]]:
    """One measure's points: ``{"key", "window_start", "value"}`` per collected row."""
    return [
        {"key": row.get("key"), "window_start": row.get("window_start"), "value": row["values"].get(measure)}
        for row in data["rows"]
    ]


def _top(points: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    """The ``TOP_KEYS`` points of the largest values (missing values last), largest first."""
    present = [p for p in points if p["value"] is not None]
    if kind == "quantitative":
        present.sort(key=lambda p: (-float(p["value"]), str(p["key"])))
    else:  # ISO times and text order as strings; their largest first
        present.sort(key=lambda p: str(p["key"]))
        present.sort(key=lambda p: str(p["value"]), reverse=True)
    return present[:TOP_KEYS]


def _measure_chart(shape: ViewShape, measure: MeasureShape, data: dict[str, Any]) -> Any:
    """The chart of one measure, by the view's shape (None for a view of one row: those are figures)."""
    import altair as alt

    kind = data["types"].get(measure.name, "quantitative")
    points = _values(data, measure.name)
    title = f"{measure.name} = {measure.label}"
    value_tip = alt.Tooltip(f"value:{kind[0].upper()}", title=measure.name)
    if shape.window is not None:
        encoding: dict[str, Any] = {
            "x": alt.X("window_start:T", title=f"event-time window ({shape.window})"),
            "y": alt.Y(f"value:{kind[0].upper()}", title=measure.name),
            "tooltip": ["window_start:T", *(["key:N"] if shape.keys else []), value_tip],
        }
        if shape.keys:
            order = data.get("key_order") or sorted({str(p["key"]) for p in points})
            encoding["color"] = alt.Color("key:N", title=shape.key_label, scale=alt.Scale(domain=order))
            title += f" per {shape.key_label}"
        chart = alt.Chart(alt.Data(values=points)).mark_line(point=True).encode(**encoding)
        return chart.properties(**SIZE, title=title)
    if not shape.keys:
        return None
    top = _top(points, kind)
    y = alt.Y("key:N", title=shape.key_label, sort=[str(p["key"]) for p in top])
    x = alt.X(f"value:{kind[0].upper()}", title=measure.name)
    mark = alt.Chart(alt.Data(values=top))
    chart = (mark.mark_bar() if kind == "quantitative" else mark.mark_point(filled=True, size=80)).encode(
        x=x, y=y, tooltip=["key:N", value_tip]
    )
    return chart.properties(**SIZE, title=f"{title}: top {len(top)} {shape.key_label}")


def _split_chart(shape: ViewShape, data: dict[str, Any]) -> Any:
    """The batch and speed shares of the first additive measure, per window (or key); the batch boundary."""
    import altair as alt

    measure = shape.additive
    assert measure is not None
    colors = alt.Color("layer:N", scale=alt.Scale(domain=LAYERS, range=LAYER_COLORS), title="layer")
    share = alt.Tooltip("sum(value):Q", title=measure.name)
    chart = alt.Chart(alt.Data(values=data["split"])).mark_bar()
    if shape.window is not None:
        split = chart.encode(
            x=alt.X("at:T", title=f"event-time window ({shape.window})"),
            y=alt.Y("sum(value):Q", title=measure.name),
            color=colors,
            tooltip=[alt.Tooltip("at:T", title="window"), "layer:N", share],
        )
        if data.get("batch_boundary") is not None:
            rule = (
                alt.Chart(alt.Data(values=[{"at": data["batch_boundary"]}]))
                .mark_rule(color="black", strokeDash=[4, 3])
                .encode(x="at:T", tooltip=[alt.Tooltip("at:T", title="newest window the batch layer holds")])
            )
            split = split + rule
        title = f"Batch and speed share of each window ({measure.name})"
    else:
        split = chart.encode(
            x=alt.X("sum(value):Q", title=measure.name),
            y=alt.Y("at:N", title=shape.key_label if shape.keys else None, sort="-x"),
            color=colors,
            tooltip=[alt.Tooltip("at:N", title=shape.key_label), "layer:N", share],
        )
        title = f"Batch and speed share ({measure.name})" + (f" per {shape.key_label}" if shape.keys else "")
    return split.properties(**SIZE, title=title)


def _rate_chart(data: dict[str, Any]) -> Any:
    import altair as alt

    return (
        alt.Chart(alt.Data(values=data["ingest"]))
        .mark_line(point=True)
        .encode(
            x=alt.X("at_ms:T", title="master commit"),
            y=alt.Y("events_per_second:Q", title="events/s ingested"),
            tooltip=["version:Q", "rows:Q", "events_per_second:Q"],
        )
        .properties(**SIZE, title="Ingest rate")
    )


def _reasons_chart(data: dict[str, Any]) -> Any:
    import altair as alt

    return (
        alt.Chart(alt.Data(values=data["quarantine_reasons"]))
        .mark_bar()
        .encode(
            x=alt.X("count:Q", title="lines"),
            y=alt.Y("reason:N", title=None, sort="-x"),
            tooltip=["reason:N", "count:Q"],
        )
        .properties(**SIZE, title="Quarantine by reason")
    )


def drawing(data: dict[str, Any]) -> dict[str, Any]:
    """What the page draws for the view in ``data`` (:func:`.dashboard.dashboard_data`, or the same shape).

    ``{"charts": {id: Vega-Lite spec}, "figures": [{"name", "label", "value", "type"}]}``: the charts in the
    order shown (``split``, then ``measure-<name>`` per measure, ``rate``, ``reasons``); figures only for a
    view without keys or window, from its one row.
    """
    shape = ViewShape.from_dict(data["shape"])
    charts: dict[str, Any] = {}
    if shape.additive is not None:
        charts["split"] = _split_chart(shape, data)
    for measure in shape.measures:
        chart = _measure_chart(shape, measure, data)
        if chart is not None:
            charts[f"measure-{measure.name}"] = chart
    charts["rate"] = _rate_chart(data)
    charts["reasons"] = _reasons_chart(data)
    figures = []
    if shape.window is None and not shape.keys:
        row = data["rows"][0]["values"] if data["rows"] else {}
        figures = [
            {
                "name": m.name,
                "label": m.label,
                "value": row.get(m.name),
                "type": data["types"].get(m.name, "quantitative"),
            }
            for m in shape.measures
        ]
    return {"charts": {name: chart.to_dict() for name, chart in charts.items()}, "figures": figures}
