"""The user's own pipeline in the artifact: ``package --pipeline REF`` / ``--include PATH``, and spark-submit of
the artifact, in a folder outside the checkout, running a pipeline the project has never seen.

The user's project lives in a temporary folder; nothing of it is importable from the test process's path.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from lambda_pipeline.core.errors import ConfigError
from lambda_pipeline.deploy.artifact import MANIFEST, build_artifact
from tests.submit_support import probe_line, spark_submit
from tests.user_pipeline import KEYS, MODULE, QUERIES, assert_view_equals, expected_views, payment_lines, write_lines

ROOT = Path(__file__).resolve().parents[1]
REF = "pipeline.py:PIPELINE"


def _package(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``lambda-pipeline package`` run as a user runs it, from their project folder."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    command = [sys.executable, "-m", "lambda_pipeline.cli", "package", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=cwd, env=env)


def _project(folder: Path) -> Path:
    """A user's project: the pipeline, a helper module it imports, a package folder with a data file."""
    folder.mkdir(parents=True)
    (folder / "pipeline.py").write_text(
        MODULE.replace("import lambda_pipeline as lp", "import payment_rules\nimport lambda_pipeline as lp")
    )
    (folder / "payment_rules.py").write_text("FAILED = 'failed'\n")
    (folder / "lookups").mkdir()
    (folder / "lookups" / "__init__.py").write_text("")
    (folder / "lookups" / "countries.json").write_text('{"fr": "France"}\n')
    (folder / "lookups" / "__pycache__").mkdir()
    (folder / "lookups" / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"\0")
    return folder


def _zip_names(dist: Path, manifest: dict) -> set[str]:
    with zipfile.ZipFile(dist / manifest["zip"]) as archive:
        return set(archive.namelist())


def test_package_carries_the_referenced_file_and_the_includes_reproducibly(tmp_path: Path) -> None:
    project = _project(tmp_path / "project")
    result = _package(project, "--pipeline", REF, "--include", "payment_rules.py", "--include", "lookups")
    assert result.returncode == 0, result.stderr
    assert "carries pipeline.py in lambda_pipeline-0.1.0.zip for pipeline.py:PIPELINE" in result.stdout
    dist = project / "dist"
    manifest = json.loads((dist / MANIFEST).read_text())
    names = _zip_names(dist, manifest)
    assert {"pipeline.py", "payment_rules.py", "lookups/__init__.py", "lookups/countries.json"} <= names
    assert {n.split("/")[0] for n in names} == {"lambda_pipeline", "pipeline.py", "payment_rules.py", "lookups"}
    assert not any("__pycache__" in n for n in names)
    by_name = {entry["name"]: entry for entry in manifest["includes"]}
    assert sorted(by_name) == ["lookups", "payment_rules", "pipeline"]
    assert by_name["pipeline"]["references"] == [REF] and by_name["pipeline"]["kind"] == "module"
    assert by_name["lookups"]["files"] == ["lookups/__init__.py", "lookups/countries.json"]
    with zipfile.ZipFile(dist / manifest["zip"]) as archive:
        for entry in by_name.values():  # the digest covers the names and contents the zip holds
            digest = hashlib.sha256()
            for name in entry["files"]:
                digest.update(f"{name}\0{hashlib.sha256(archive.read(name)).hexdigest()}\n".encode())
            assert digest.hexdigest() == entry["sha256"], entry["name"]

    again = _package(project, "--pipeline", REF, "--include", "payment_rules.py", "--include", "lookups", "--out", "d2")
    assert again.returncode == 0, again.stderr
    assert (project / "d2" / manifest["zip"]).read_bytes() == (dist / manifest["zip"]).read_bytes()
    assert (project / "d2" / MANIFEST).read_text() == (dist / MANIFEST).read_text()
    (project / "payment_rules.py").write_text("FAILED = 'declined'\n")  # the module changes, its digest with it
    changed = _package(project, "--pipeline", REF, "--include", "payment_rules.py", "--include", "lookups")
    assert changed.returncode == 0, changed.stderr
    digests = {e["name"]: e["sha256"] for e in json.loads((dist / MANIFEST).read_text())["includes"]}
    assert {name for name in digests if digests[name] != by_name[name]["sha256"]} == {"payment_rules"}


def test_a_pipeline_that_imports_a_neighbour_left_behind_is_refused(tmp_path: Path) -> None:
    project = _project(tmp_path / "project")
    result = _package(project, "--pipeline", REF)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip() == (
        f"error: --pipeline: key 'pipeline': 'pipeline.py:PIPELINE': pipeline.py imports payment_rules from its "
        f"folder, which the artifact would not carry: add --include {project / 'payment_rules.py'}"
    )
    assert not (project / "dist").exists()  # nothing written


def test_the_config_added_to_the_artifact_brings_its_pipeline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (project / "pipeline.py").write_text(MODULE)
    config = project / "payments.yaml"
    config.write_text((ROOT / "conf" / "local.yaml").read_text().replace("pipeline: clickstream", f"pipeline: {REF}"))
    monkeypatch.chdir(tmp_path)  # the reference is found beside the config, as the verbs find it
    manifest = build_artifact(tmp_path / "dist", extra_configs=[config])
    assert [(e["name"], e["references"]) for e in manifest["includes"]] == [("pipeline", [REF])]
    assert "pipeline.py" in _zip_names(tmp_path / "dist", manifest)
    assert "conf/payments.yaml" in {e["path"] for e in manifest["files"]}


def _write(folder: Path, name: str, text: str = "X = 1\n") -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("pipelines", "includes", "message"),
    [
        ([], ["missing.py"], r"^--include: missing\.py: no such file or folder$"),
        (["nothere.py:PIPELINE"], [], r"'nothere\.py:PIPELINE': no file nothere\.py in the current directory"),
        (["pipeline.py:PIPELNE"], [], r"pipeline has no attribute 'PIPELNE'; it defines PIPELINE"),
        (["no_such_package.views:PIPELINE"], [], r"no module 'no_such_package\.views' on the Python path"),
        ([], ["notes.txt"], r"notes\.txt: expected a Python module \(\.py\) or a package folder"),
        ([], ["plain"], r"plain: not a package \(no __init__\.py\)"),
        ([], ["my-helpers.py"], r"'my-helpers' cannot be imported as a module name"),
        ([], ["lambda_pipeline"], r"module 'lambda_pipeline' is already on the cluster's path \(the project itself\)"),
        ([], ["json.py"], r"a module 'json' is already on the cluster's path \(Python's standard library\)"),
        ([], ["yaml.py"], r"a module 'yaml' is already on the cluster's path \(the dependency pyyaml\)"),
        ([], ["a/util.py", "b/util.py"], r"two modules named 'util' for the artifact: .*/a/util\.py and .*/b/util\.py"),
        ([REF], ["other/pipeline.py"], r"two modules named 'pipeline' for the artifact"),
    ],
)
def test_what_cannot_travel_is_refused_in_one_line(
    pipelines: list[str], includes: list[str], message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = tmp_path / "project"
    _write(project, "pipeline.py", MODULE)
    for name in ("notes.txt", "my-helpers.py", "json.py", "yaml.py", "a/util.py", "b/util.py", "other/pipeline.py"):
        _write(project, name)
    _write(project, "lambda_pipeline/__init__.py")
    (project / "plain").mkdir()
    monkeypatch.chdir(project)
    with pytest.raises(ConfigError, match=message):
        build_artifact(tmp_path / "dist", pipelines=pipelines, includes=[Path(p) for p in includes])
    assert not (tmp_path / "dist").exists()


# ---- spark-submit, outside the checkout ----------------------------------------------------------------


def _one_query() -> str:
    """Every view's query of tests/user_pipeline.py in one statement (one spark-submit): a row per view row,
    its columns as JSON."""
    parts = [
        f"SELECT '{view}' AS view, to_json(struct(*)) AS row FROM ({sql.format(layer='serving')})"
        for view, sql in QUERIES.items()
    ]
    return " UNION ALL ".join(parts)


@pytest.mark.integration
def test_spark_submit_runs_the_user_pipeline_from_the_artifact_outside_the_checkout(
    isolated_python: Path, tmp_path: Path
) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (project / "pipeline.py").write_text(MODULE)
    built = _package(project, "--pipeline", REF, "--out", "dist")
    assert built.returncode == 0, built.stderr

    run = tmp_path / "run"  # only the artifact travels: the project folder is gone
    shutil.copytree(project / "dist", run / "dist")
    shutil.rmtree(project)
    assert ROOT not in run.parents and not list(run.rglob("pipeline.py"))
    dist = run / "dist"
    zipped = dist / json.loads((dist / MANIFEST).read_text())["zip"]
    work = run / "work"
    payments = payment_lines(120, seed=3, now_ms=int(time.time() * 1000))
    write_lines(work / "landing", payments.lines, "payments.jsonl")

    def submit(job: str, *args: str) -> str:
        started = time.perf_counter()
        common = ("--workdir", str(work), "--pipeline", REF)
        result = spark_submit(dist, isolated_python, job, *args, *common, cwd=run, probe=("pipeline",))
        assert result.returncode == 0, f"{job}: {result.stderr[-3000:]}"
        # Both the project and the user's module came from the zip on --py-files, nothing else.
        assert probe_line("lambda_pipeline", zipped / "lambda_pipeline" / "__init__.py") in result.stdout
        assert probe_line("pipeline", zipped / "pipeline.py") in result.stdout
        print(f"{job} {' '.join(args[:1])[:40]}: {time.perf_counter() - started:.1f}s")
        return result.stdout

    submit("ingest", "--once")
    assert "batch: published run" in submit("batch")
    output = submit("query", _one_query(), "--format", "json", "--limit", "100000")
    got: dict[str, dict[tuple, dict]] = {view: {} for view in QUERIES}
    for line in output.splitlines():
        if line.startswith("{"):
            answer = json.loads(line)
            row = json.loads(answer["row"])
            got[answer["view"]][tuple(row.pop(k, None) for k in KEYS[answer["view"]])] = row
    want = expected_views(payments.events)
    for view in QUERIES:
        assert_view_equals(f"serving.{view}", got[view], want[view])
