"""The Kafka benchmark's tables on stdout: one rate side by side (noop vs pipeline), and the rates compared."""

from __future__ import annotations

import math
from typing import Any

from _observer import fmt, print_breakdown, print_latencies

# (label, ratio key, path in a phase's result, digits); "batch" is the noop stream, or the pipeline's ingest stream.
RATE_ROWS: tuple[tuple[str, str, tuple[str, ...], int], ...] = (
    *(
        (f"freshness {q}, s (produce -> visible)", f"visible_{q}", ("freshness_seconds", "visible", q), 2)
        for q in ("p50", "p95", "p99", "max")
    ),
    ("input, msgs/s", "input", ("throughput", "input_msgs_per_s"), 0),
    ("processed (committed), msgs/s", "processed", ("throughput", "processed_msgs_per_s"), 0),
    ("lag mid / end (peak), msgs", "lag_mid", ("throughput", "lag_mid_msgs"), 0),
    ("", "lag_end", ("throughput", "lag_end_msgs"), 0),
    ("lag when the producer ended (topic)", "lag_end_topic", ("throughput", "lag_at_end_topic_msgs"), 0),
    ("drain after last burst, s", "drain", ("throughput", "drain_seconds"), 2),
    *(
        (f"micro-batch {q}, ms (noop vs ingest)", f"batch_ms_{q}", ("batch", "trigger_ms", q), 0)
        for q in ("p50", "p95", "max")
    ),
    ("rows per micro-batch, median", "rows_per_batch", ("batch", "input_rows_median"), 0),
    ("producer CPU, share of one core", "producer_cpu", ("producer", "cpu_share_of_one_core"), 2),
)


def _get(node: Any, path: tuple[str, ...]) -> Any:
    for p in path:
        node = node.get(p) if isinstance(node, dict) else None
    return node


def _stream_line(name: str, st: dict[str, Any]) -> str:
    phases = ", ".join(
        f"{k} {v:.0f}" for k, v in st["duration_ms_p50_by_phase"].items() if k != "triggerExecution" and v >= 1
    )
    line = (
        f"  {name:<18} {st['batches_with_data']:4d} batches, trigger p50 {st['trigger_ms']['p50']:.0f} ms, "
        f"p95 {st['trigger_ms']['p95']:.0f} ms; p50 by phase (ms): {phases}"
    )
    state, last = st.get("state_p50") or {}, st.get("state_last") or {}
    if state:
        line += (
            f"\n  {'':<18} dedup state p50: updates {state.get('allUpdatesTimeMs', 0):,.0f} ms, evictions "
            f"{state.get('allRemovalsTimeMs', 0):,.0f} ms, commit {state.get('commitTimeMs', 0):,.0f} ms (task time); "
            f"rows held p50 {state.get('numRowsTotal', 0):,.0f}, at the end {last.get('numRowsTotal', 0):,.0f}"
        )
    return line


def print_rate(rate: float, noop: dict[str, Any] | None, pipe: dict[str, Any] | None) -> dict[str, Any]:
    """The side-by-side table of one rate; returns the ratios."""
    print()
    print(f"=== {rate:,.0f} events/s ===")
    header = f"{'':<40} {'noop':>11} {'pipeline':>11} {'ratio':>8}"
    print(header)
    print("-" * len(header))
    ingest = next((v for k, v in ((pipe or {}).get("streams") or {}).items() if k.startswith("ingest")), None)
    sides = ({**(noop or {}), "batch": _get(noop, ("stream",))}, {**(pipe or {}), "batch": ingest})
    ratios: dict[str, Any] = {}
    for label, key, path, digits in RATE_ROWS:
        a, b = (_get(side, path) for side in sides)
        ratio = b / a if isinstance(a, int | float) and isinstance(b, int | float) and a and not math.isnan(a) else None
        ratios[key] = ratio
        print(f"{label:<40} {fmt(a, 11, digits)} {fmt(b, 11, digits)} {fmt(ratio, 8)}")
    for name, res in (("noop", noop), ("pipeline", pipe)):
        if res is None:
            continue
        flow = res["throughput"]
        verdict = "kept up" if flow["kept_up"] else f"DID NOT keep up ({flow['not_kept_up_because']})"
        print(
            f"{name}: {verdict}; {flow['input_events_per_s']:,.0f} valid events/s sent over "
            f"{flow['window_seconds']:.1f}s" + (", TIMED OUT" if res.get("timed_out") else "")
        )
    if pipe is not None:
        print()
        print(
            f"pipeline freshness over {pipe['events_measured']:,} events ({pipe['events_warmup']:,} warm-up, "
            f"{pipe['events_not_visible']:,} never visible), seconds:"
        )
        print_latencies(pipe["freshness_seconds"], "Kafka timestamp", "timestamp")
        flow = pipe["throughput"]
        print(
            f"master rows committed: {flow['master_rows_per_s']:,.0f}/s; {pipe['ingest_commits']} ingest commits, "
            f"{pipe['speed_versions']} speed versions"
        )
        c = pipe["check"]
        print(
            f"check: topic {c['topic_messages']:,} = master {c['master_rows']:,} + quarantine "
            f"{c['quarantine_rows']:,}: {c['reconciles']}; serving.page_activity events "
            f"{c['serving_page_activity_events']:,} = master rows: {c['serving_equals_master']}"
        )
        for name, st in pipe["streams"].items():
            print(_stream_line(name, st))
        print_breakdown(pipe.get("inside_add_batch_ms") or {})
    if noop is not None:
        print(_stream_line("noop", noop["stream"]))
    for name, res in (("noop", noop), ("pipeline", pipe)):
        jobs = ((res or {}).get("spark_jobs") or {}).get("by_owner_and_name")
        if jobs:
            print(f"Spark jobs during the {name} phase, by total time (owner: the query whose job group it is):")
            for g in jobs[:15]:
                print(
                    f"  {g['owner'][:18]:<18} {g['jobs']:5d} x {g['name'][:60]:<60} total {g['total_s']:7.1f}s, "
                    f"p50 {g['p50_ms']:6.0f} ms"
                )
    return ratios


def print_max_table(runs: list[dict[str, Any]]) -> None:
    print()
    print("Highest sustainable rate (pipeline, then the noop baseline in brackets); lag in messages:")
    header = (
        f"{'target/s':>9} {'input msgs/s':>13} {'processed/s':>12} {'master rows/s':>14} {'lag mid':>9} "
        f"{'lag end':>9} {'lag @end':>9} {'drain s':>8} {'fresh p50':>10} {'fresh p99':>10}  kept up"
    )
    print(header)
    print("-" * len(header))
    for run in runs:
        for label, res in ((f"{run['rate']:,.0f}", run.get("pipeline")), ("[noop]", run.get("noop"))):
            if res is None:
                continue
            f, fresh = res["throughput"], res["freshness_seconds"]["visible"]
            rows = fmt(f.get("master_rows_per_s"), 14, 0) if "master_rows_per_s" in f else f"{'':>14}"
            print(
                f"{label:>9} {f['input_msgs_per_s']:>13,.0f} {f['processed_msgs_per_s']:>12,.0f} {rows} "
                f"{fmt(f['lag_mid_msgs'], 9, 0)} {fmt(f['lag_end_msgs'], 9, 0)} "
                f"{fmt(f['lag_at_end_topic_msgs'], 9, 0)} {fmt(f['drain_seconds'], 8, 1)} "
                f"{fmt(fresh['p50'], 10)} {fmt(fresh['p99'], 10)}  {'yes' if f['kept_up'] else 'NO'}"
            )
    print(
        "lag mid / lag end: peak of (sent - committed) over the middle / last 20 % of the window; lag @end: topic "
        "latest offsets - committed when the producer finished"
    )
