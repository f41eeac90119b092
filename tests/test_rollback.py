"""``batch --rollback``: the publication before the current one served again, exactly; the next batch moves on."""

from __future__ import annotations

import json

import pytest

from lambda_pipeline.batch_layer.job import run_batch
from lambda_pipeline.cli.main import main
from lambda_pipeline.core.coverage import latest_coverage
from lambda_pipeline.core.errors import LambdaError
from lambda_pipeline.maintenance.rollback import rollback
from lambda_pipeline.pipelines.clickstream import CLICKSTREAM
from lambda_pipeline.pipelines.generator import ClickstreamGenerator
from lambda_pipeline.serving_layer.catalog import ServingLayer
from tests.helpers import events_at, ingest_once

pytestmark = pytest.mark.integration

SUM = "SELECT coalesce(sum(events), 0) AS n FROM serving.page_activity"


def test_rollback_then_a_new_batch_stays_exact(spark, settings, locations, capsys) -> None:
    generator = ClickstreamGenerator(12, duplicate_fraction=0.0)
    published = []
    for events in (100, 50):
        generator.write(locations.landing, events, files=1)
        ingest_once(spark, settings, locations)
        published.append(run_batch(spark, CLICKSTREAM, locations)[0])
    generator.write(locations.landing, 30, files=1)
    ingest_once(spark, settings, locations)
    serving = ServingLayer(spark, CLICKSTREAM, locations)
    assert serving.query(SUM).first().n == 180

    restored = rollback(spark, CLICKSTREAM, locations)
    first, second = published
    assert restored.restores == first.run_id and restored.run_id not in {first.run_id, second.run_id}
    assert (restored.master_version, restored.view_versions) == (first.master_version, first.view_versions)
    assert latest_coverage(spark, locations.coverage) == restored
    answer = serving.answer(SUM)
    assert answer.frame.first().n == 180 == events_at(spark, locations, "page_activity", answer.pin.as_dict())
    (provenance,) = serving.provenances(answer)
    assert provenance.batch_restores == first.run_id and provenance.covered_master_version == first.master_version

    # Nothing before the first publication: a second rollback says so and changes nothing.
    with pytest.raises(LambdaError, match="is the first one"):
        rollback(spark, CLICKSTREAM, locations)
    assert main(["batch", "--rollback", "--workdir", locations.workdir]) == 1
    assert "is the first one" in capsys.readouterr().err

    # The next batch moves forward as usual.
    coverage, staged = run_batch(spark, CLICKSTREAM, locations)
    assert staged is not None and coverage.restores is None and coverage.master_version > second.master_version
    answer = serving.answer(SUM)
    assert answer.frame.first().n == 180 == events_at(spark, locations, "page_activity", answer.pin.as_dict())
    assert main(["query", SUM, "--format", "json", "--workdir", locations.workdir]) == 0
    assert json.loads(capsys.readouterr().out) == {"n": 180}

    # From the command line, a rollback prints what it restored.
    assert main(["batch", "--rollback", "--workdir", locations.workdir]) == 0
    assert f"serves again {second.run_id[:8]}" in capsys.readouterr().out
    assert serving.query(SUM).first().n == 180
