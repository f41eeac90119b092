"""OnceAppender: a replayed micro-batch is skipped, new batches and new writers are written."""

from __future__ import annotations

import json
from pathlib import Path

from chispa import assert_df_equality

from lambda_pipeline.core.streaming import CheckpointAppId, OnceAppender, last_marked_batch


def _checkpoint(tmp_path: Path, query_id: str) -> str:
    folder = tmp_path / f"checkpoint-{query_id}"
    folder.mkdir()
    (folder / "metadata").write_text(json.dumps({"id": query_id}) + "\n")
    return str(folder)


def test_replay_after_restart_is_skipped_and_later_batches_are_written(spark, tmp_path: Path) -> None:
    table = str(tmp_path / "t")
    rows = lambda first: spark.createDataFrame([(first,), (first + 1,)], "n long")  # noqa: E731
    checkpoint = _checkpoint(tmp_path, "q1")

    first_run = OnceAppender(CheckpointAppId("ingest", checkpoint))
    assert first_run.append(spark, rows(0), table, 0)
    assert first_run.append(spark, rows(10), table, 1)
    assert not first_run.append(spark, rows(10), table, 1), "a repeat within one run"

    restarted = OnceAppender(CheckpointAppId("ingest", checkpoint))  # a new process, same checkpoint
    assert last_marked_batch(spark, table, "ingest-q1") == 1
    assert not restarted.append(spark, rows(10), table, 1), "the replayed batch was written again"
    assert restarted.append(spark, rows(20), table, 2)

    other = OnceAppender(CheckpointAppId("ingest", _checkpoint(tmp_path, "q2")))  # a new checkpoint
    assert other.append(spark, rows(30), table, 0)

    expected = spark.createDataFrame([(n,) for n in (0, 1, 10, 11, 20, 21, 30, 31)], "n long")
    assert_df_equality(spark.read.format("delta").load(table), expected, ignore_row_order=True)


def test_non_idempotent_mode_writes_the_replay_twice(spark, tmp_path: Path) -> None:
    table = str(tmp_path / "t")
    checkpoint = _checkpoint(tmp_path, "q3")
    frame = spark.createDataFrame([(1,)], "n long")
    OnceAppender(CheckpointAppId("speed", checkpoint)).append(spark, frame, table, 0)
    assert OnceAppender(CheckpointAppId("speed", checkpoint), idempotent=False).append(spark, frame, table, 0)
    assert spark.read.format("delta").load(table).count() == 2
