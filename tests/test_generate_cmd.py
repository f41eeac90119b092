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
