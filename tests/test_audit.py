"""``audit``: a repeat beyond the dedup horizon is counted by the speed layer, and the audit says by how much."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lambda_pipeline.batch_layer.job import run_batch
from lambda_pipeline.cli.main import main
from lambda_pipeline.core.config_loader import load_settings
from lambda_pipeline.core.locations import Locations
from lambda_pipeline.maintenance.audit import audit
from lambda_pipeline.pipelines.clickstream import CLICKSTREAM
from lambda_pipeline.pipelines.generator import ClickstreamGenerator
from tests.helpers import ingest_once

pytestmark = pytest.mark.integration


def test_a_repeat_beyond_the_dedup_horizon_appears_in_the_audit_with_its_count(spark, tmp_path, capsys) -> None:
    # A one-second horizon: ingest runs a few seconds apart forget an event id after two more runs.
    settings = load_settings(None, ["ingest.trigger=200 milliseconds", "ingest.dedup_horizon=1 second"])
    locations = Locations.create(settings, tmp_path / "work")
    locations.ensure_local_dirs()
    generator = ClickstreamGenerator(17, malformed_fraction=0.0, duplicate_fraction=0.0, late_fraction=0.0)
    (first,) = generator.write(locations.landing, 40, files=1)
    repeated = Path(first.path).read_text().splitlines()[:3]  # before ingest archives the file
    ingest_once(spark, settings, locations)
    run_batch(spark, CLICKSTREAM, locations)  # the first publication: nothing to compare yet

    for _ in range(3):  # each run moves the watermark past the one before: the three ids leave the state
        generator.write(locations.landing, 10, files=1)
        ingest_once(spark, settings, locations)
    (Path(locations.landing) / "repeats.jsonl").write_text("\n".join(repeated) + "\n")
    ingest_once(spark, settings, locations)
    quarantined = spark.read.format("delta").load(locations.quarantine).filter("reason LIKE 'duplicate:%'").count()
    run_batch(spark, CLICKSTREAM, locations)

    (result,) = audit(spark, CLICKSTREAM, locations)
    assert result.view == "page_activity" and not result.note
    assert result.events == 30  # the three filler runs; the repeats are not new events
    assert result.differing == 3 - quarantined == 3, "the speed layer counted each repeat once more"
    assert sum(r.difference for r in result.rows if r.measure == "events") == 3

    assert main(["audit", "--workdir", locations.workdir, "--fail-above", "0.5"]) == 0
    assert "3 of 30 events differ" in capsys.readouterr().out
    assert main(["audit", "--workdir", locations.workdir, "--fail-above", "0.05", "--format", "json"]) == 3
    out = capsys.readouterr()
    assert json.loads(out.out.splitlines()[0])["differing"] == 3 and "above --fail-above" in out.err
