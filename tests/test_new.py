"""``lambda-pipeline new DIR``: a project of the user's own that runs as it is.

The end-to-end test installs the wheel built from this checkout into a fresh venv, runs ``new`` in a folder
outside the checkout, then runs the commands of the project's README (its first shell block, read from the
README the installed wheel wrote, so that the README and the test cannot drift) and compares the answers of
its queries with a recompute of the sample lines in plain Python.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from collections import defaultdict
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from lambda_pipeline.cli.main import main
from lambda_pipeline.cli.new import PROJECT_PIPELINE, project_config_name, project_files, run_commands
from lambda_pipeline.cli.parser import build_parser
from lambda_pipeline.core.config_loader import load_settings, shipped_configs
from tests.wheel_support import ROOT, build_wheel, outside_env, venv_with_wheel

TEMPLATE = ROOT / "lambda_pipeline" / "project-template"
EPOCH = datetime(1970, 1, 1)


def _readme_commands(readme: str) -> list[str]:
    """Every ``lambda-pipeline`` command line in the README's shell blocks."""
    blocks = re.findall(r"^```bash\n(.*?)^```", readme, re.MULTILINE | re.DOTALL)
    return [line for block in blocks for line in block.splitlines() if line.startswith("lambda-pipeline ")]


def test_new_writes_the_project_and_says_what_to_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    project = tmp_path / "mine"
    assert main(["new", str(project)]) == 0
    written = sorted(p.relative_to(project).as_posix() for p in project.rglob("*") if p.is_file())
    assert written == [
        ".gitignore",
        "README.md",
        "config.yaml",
        "pipeline.py",
        "samples/later-payments.jsonl",
        "samples/payments.jsonl",
    ]
    out = capsys.readouterr().out
    assert all(f"new: wrote {project / name}" in out for name in written)
    commands = run_commands((project / "README.md").read_text())
    assert "".join(f"  {c}\n" for c in [f"cd {project}", *commands]) in out
    assert out.endswith("new: or the whole pipeline on generated events: lambda-pipeline demo --config config.yaml\n")
    assert load_settings(project / "config.yaml").pipeline == PROJECT_PIPELINE


def test_new_refuses_a_folder_that_holds_anything_unless_forced(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    project = tmp_path / "mine"
    project.mkdir()
    (project / "notes.txt").write_text("mine")
    assert main(["new", str(project)]) == 1
    err = capsys.readouterr().err
    assert f"error: {project} is not empty (notes.txt); name a new folder, or pass --force" in err
    assert not (project / "pipeline.py").exists()

    (project / "pipeline.py").write_text("# changed\n")
    assert main(["new", str(project), "--force"]) == 0
    assert (project / "notes.txt").read_text() == "mine"  # left alone
    assert (project / "pipeline.py").read_text() == (TEMPLATE / "pipeline.py").read_text()  # replaced

    (tmp_path / "a-file").write_text("")
    assert main(["new", str(tmp_path / "a-file")]) == 1
    assert "a-file is a file; name a new folder" in capsys.readouterr().err


def test_new_with_configs_writes_the_shipped_configs_pointed_at_the_project(tmp_path: Path) -> None:
    assert main(["new", str(tmp_path / "mine"), "--configs"]) == 0
    shipped = sorted(f.name for f in shipped_configs().iterdir() if f.name.endswith(".yaml"))
    written = sorted(p.name for p in (tmp_path / "mine").glob("config.*.yaml"))
    # Not the shipped names: 'package --add-config' refuses a config named like one the artifact ships.
    assert written == sorted(project_config_name(name) for name in shipped if name != "local.yaml")
    for name in written:
        assert load_settings(tmp_path / "mine" / name).pipeline == PROJECT_PIPELINE, name
    assert "--config config.emr.yaml" in (tmp_path / "mine" / "config.emr.yaml").read_text()


def test_the_readme_uses_only_verbs_and_options_that_exist() -> None:
    readme = (TEMPLATE / "README.md").read_text()
    commands = _readme_commands(readme)
    assert len(commands) >= 5
    parser = build_parser()
    for command in commands:
        words = shlex.split(command.split("  #")[0])
        try:
            parser.parse_args(words[1:])
        except SystemExit:
            pytest.fail(f"the project's README runs {command!r}, which the parser refuses")
    assert run_commands(readme)[0].startswith("mkdir -p lambda-work/landing && cp samples/")


def test_the_samples_hold_valid_payments_and_one_malformed_line() -> None:
    lines = [line for path, text in project_files() if path.parent.name == "samples" for line in text.splitlines()]
    parsed = []
    for line in lines:
        try:
            parsed.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    assert len(lines) - len(parsed) == 1
    fields = {"payment_id", "ts", "merchant", "amount_cents", "status", "card"}
    assert all(set(p) == fields and isinstance(p["ts"], int) for p in parsed)
    assert len({p["payment_id"] for p in parsed}) == len(parsed)


def _table(stdout: str) -> list[dict[str, str]]:
    """The rows ``query --format table`` printed, as text."""
    lines = [line for line in stdout.splitlines() if line.strip()]
    header = [cell.strip() for cell in lines[0].split(" | ")]
    assert set(lines[1]) <= {"-", "+"}, stdout
    return [dict(zip(header, (cell.strip() for cell in line.split(" | ")), strict=True)) for line in lines[2:]]


def _time(millis: int) -> datetime:
    return EPOCH + timedelta(milliseconds=millis)


def _recompute(samples: list[Path]) -> dict[str, list[dict[str, str]]]:
    """Both views of the project's pipeline.py, from the sample lines, as ``query`` prints them."""
    payments: dict[str, dict[str, Any]] = {}
    for path in samples:
        for line in path.read_text().splitlines():
            try:
                payment = json.loads(line)
            except json.JSONDecodeError:
                continue  # quarantined
            payments.setdefault(payment["payment_id"], payment)
    failed: dict[tuple[str, str, datetime], list[int]] = defaultdict(list)
    totals: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for p in payments.values():
        totals[p["merchant"]].append(p)
        if p["status"] == "failed":
            hour = _time(p["ts"]).replace(minute=0, second=0, microsecond=0)
            failed[(p["merchant"], p["card"]["country"].lower(), hour)].append(p["amount_cents"])
    return {
        "failed_payments": [
            {
                "merchant": merchant,
                "country": country,
                "window_start": str(hour),
                "window_end": str(hour + timedelta(hours=1)),
                "failures": str(len(amounts)),
                "failed_cents": str(sum(amounts)),
            }
            for (merchant, country, hour), amounts in sorted(failed.items(), key=lambda kv: (kv[0][2], *kv[0][:2]))
        ],
        "merchant_totals": [
            {
                "merchant": merchant,
                "payments": str(len(ps)),
                "total_cents": str(sum(p["amount_cents"] for p in ps)),
                "largest_cents": str(max(p["amount_cents"] for p in ps)),
                "last_payment": str(_time(max(p["ts"] for p in ps))),
            }
            for merchant, ps in sorted(totals.items())
        ],
    }


@pytest.mark.integration
def test_new_then_the_readme_commands_from_the_installed_wheel(tmp_path_factory: pytest.TempPathFactory) -> None:
    base = tmp_path_factory.mktemp("new-wheel")
    bin_dir = venv_with_wheel(build_wheel(base), base / "venv", with_dependencies=False)
    # A folder outside the checkout, on a machine whose clock is not in UTC: the answers print in UTC all the same.
    env = {**outside_env(bin_dir), "TZ": "America/New_York"}
    elsewhere = base / "elsewhere"
    elsewhere.mkdir()

    def run(command: str, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            ["bash", "-c", command], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
        )
        assert result.returncode == 0, f"{command}: exit {result.returncode}\n{result.stderr[-3000:]}"
        return result

    where = run("python -c 'import lambda_pipeline; print(lambda_pipeline.__file__)'", elsewhere)
    assert str(base / "venv") in where.stdout and str(ROOT) not in where.stdout

    new = run("lambda-pipeline new payments", elsewhere, 60)
    project = elsewhere / "payments"
    commands = run_commands((project / "README.md").read_text())
    assert "".join(f"  {c}\n" for c in ["cd payments", *commands]) in new.stdout

    answers: dict[str, list[dict[str, str]]] = {}
    for command in commands:
        result = run(command, project)
        view = re.search(r"FROM serving\.(\w+)", command)
        if command.startswith("lambda-pipeline query") and view:
            answers[view.group(1)] = _table(result.stdout)

    expected = _recompute(sorted((project / "samples").glob("*.jsonl")))
    assert answers == expected
    assert (project / "lambda-work" / "warehouse").is_dir()  # the work directory is the project's own
