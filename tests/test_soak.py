"""The soak benchmark, short: every job in its own process for a few minutes, maintenance on a tight interval.

Asserts what must hold however long the pipeline runs: no job stops, maintenance keeps the live files of
the append-only tables bounded, and the merged query keeps answering. The hour-long run is
``bench/soak.py --minutes 60 --rate 5000`` (docs/benchmarks.md).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]


def test_a_short_soak_keeps_files_bounded_and_every_job_alive(tmp_path: Path) -> None:
    output, plot = tmp_path / "soak.json", tmp_path / "soak.png"
    command = [
        sys.executable,
        str(ROOT / "bench" / "soak.py"),
        "--minutes", "2.5",
        "--rate", "300",
        "--sample", "20",
        "--settle", "1",
        "--batch-every", "1 minute",
        "--maintain-every", "1 minute",
        "--compact-min-files", "4",
        "--queries", "2",
        "--output", str(output),
        "--plot", str(plot),
        "--workdir", str(tmp_path / "work"),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=1200, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(output.read_text())
    assert result["stopped"] == {}, result["stopped"]
    samples = result["samples"]
    assert len(samples) >= 5 and plot.stat().st_size > 0
    assert all(s["query_p50_ms"] is not None for s in samples), "the merged query stopped answering"
    master = [s["tables"]["master/master_events"] for s in samples]
    commits = master[-1]["log_files"]
    # Compaction: master holds far fewer live files than the micro-batches that wrote it, and never piles up.
    assert master[-1]["live_files"] < commits / 2, master[-1]
    assert max(m["live_files"] for m in master[len(master) // 2 :]) <= 120, [m["live_files"] for m in master]
    # The merged count only grows (each answer is exact at its pin, and master only gains events), and it
    # moves while the soak runs. The first samples may precede ingest's first commit on a slow machine.
    counts = [s["events"] for s in samples if s.get("events") is not None]
    assert counts == sorted(counts), counts
    positive = [n for n in counts if n > 0]
    assert len(positive) >= 2 and positive[-1] > positive[0], counts
