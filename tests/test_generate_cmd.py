"""``lambda-pipeline generate``: the rate it promises, and what it says it sent is what arrived."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lambda_pipeline.cli.main import main
from lambda_pipeline.local_services.kafka_broker import KafkaBroker


def test_generate_to_files_writes_the_rate_it_was_given(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["generate", "--to", "files", "--rate", "40", "--seconds", "2", "--seed", "3", "--workdir", str(tmp_path)]
    assert main([*args, "--report-every", "1"]) == 0
    files = sorted((tmp_path / "landing").glob("*.jsonl"))
    assert len(files) == 2  # one whole file a second, none left under a hidden name
    assert not list((tmp_path / "landing").glob(".*"))
    events = set()
    for file in files:
        for line in file.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and isinstance(record.get("event_id"), str):
                events.add(record["event_id"])
    assert 80 <= len(events) <= 82  # 40/s for 2 s; a malformed line may still carry an id
    out = capsys.readouterr().out
    assert out.count("events in 1.0s") == 2
    assert "stopped after 80 events" in out


def _event_ids(lines: list[str]) -> set[str]:
    events = set()
    for line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and isinstance(record.get("event_id"), str):
            events.add(record["event_id"])
    return events


@pytest.mark.integration
def test_generate_writes_whole_files_into_a_landing_folder_on_s3(
    spark, s3_bucket: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A landing folder on s3a:// is written through Spark's Hadoop file system: the command starts (here: reuses)
    the session for it, and each object appears whole, under its final name."""
    from lambda_pipeline.core.jvm import HadoopPath

    workdir = f"s3a://{s3_bucket}/work"
    args = ["generate", "--to", "files", "--rate", "20", "--seconds", "2", "--seed", "5", "--workdir", workdir]
    assert main(args) == 0
    assert f"-> landing folder {workdir}/landing" in capsys.readouterr().out
    names = HadoopPath(spark, f"{workdir}/landing").names()
    assert names is not None and len(names) == 2 and all(n.endswith(".jsonl") for n in names), names
    lines = [row.value for row in spark.read.text(f"{workdir}/landing").collect()]
    assert 40 <= len(_event_ids(lines)) <= 42  # 20/s for 2 s, read back through S3


def test_a_landing_file_on_a_hadoop_file_system_is_renamed_into_place_from_a_hidden_name(
    spark, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """HDFS (there is none in CI; Hadoop's local file system takes the same path): written under a hidden name
    in the same folder, which Spark's file source skips, then renamed, which HDFS does atomically."""
    from lambda_pipeline.core.jvm import HadoopPath
    from lambda_pipeline.pipelines import generator as generator_module

    renames: list[tuple[str, str]] = []
    rename = HadoopPath.rename

    def recorded(self: HadoopPath, target: HadoopPath) -> None:
        renames.append((self.uri, target.uri))
        assert target.uri.rsplit("/", 1)[-1] not in (HadoopPath(spark, landing).names() or [])  # not yet visible
        rename(self, target)

    monkeypatch.setattr(HadoopPath, "rename", recorded)
    landing = f"file://{tmp_path}/landing"
    generator_module._write_through_hadoop(spark, landing, "clicks-1.jsonl", b'{"a":1}\n')
    ((hidden, final),) = renames
    folder = f"file:{tmp_path}/landing"  # as Hadoop prints a local path
    assert final == f"{folder}/clicks-1.jsonl" and hidden == f"{folder}/.clicks-1.jsonl.tmp"
    assert (tmp_path / "landing" / "clicks-1.jsonl").read_text() == '{"a":1}\n'
    assert not [p.name for p in (tmp_path / "landing").iterdir() if "tmp" in p.name]


def test_hostile_messages_need_a_broker(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["generate", "--to", "files", "--hostile-fraction", "0.1", "--workdir", str(tmp_path)])
    assert code == 2
    assert "--hostile-fraction: needs --to kafka" in capsys.readouterr().err
    assert not (tmp_path / "landing").exists() or not list((tmp_path / "landing").iterdir())


@pytest.mark.integration
def test_generate_to_kafka_sends_what_it_reports(
    kafka_broker: KafkaBroker, kafka_topic: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sets = [f"ingest.kafka.bootstrap_servers={kafka_broker.bootstrap_servers}", f"ingest.kafka.topic={kafka_topic}"]
    args = ["generate", "--to", "kafka", "--rate", "120", "--seconds", "1", "--hostile-fraction", "0.1"]
    assert main([*args, "--workdir", str(tmp_path), *(f"--set={s}" for s in sets)]) == 0
    out = capsys.readouterr().out
    stopped = next(line for line in out.splitlines() if line.startswith("generate: stopped after"))
    messages = int(stopped.split("(")[1].split(" messages")[0])
    on_topic = sum(high - low for low, high in kafka_broker.offsets(kafka_topic).values())
    assert on_topic == messages > 120
    assert "12 hostile" in stopped  # 0.1 per valid event, each kind in turn
