"""The layout's rules, checked on the code itself: imports flow one way, and nothing imports back."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from lambda_pipeline.deploy.project import read_project

ROOT = Path(__file__).resolve().parents[1]

# Rank of each part of the package: a module may import its own part, or parts of a lower rank. The
# layers share rank 1 but never import each other: they meet in core.
RANKS = {
    "core": 0,
    "conf": 0,
    "ingestion": 1,  # the master dataset's layer: it feeds the others through core/tag_writers.py
    "batch_layer": 1,
    "speed_layer": 1,
    "serving_layer": 1,
    "pipelines": 2,  # composes the layers (pipelines/ingest.py: ingestion with the speed layer's writer)
    "local_services": 2,
    "maintenance": 2,  # operates on every layer's tables, through core's locations
    "deploy": 3,
    "cli": 4,  # composes everything: layers, pipelines, local services, deployment
    "pipelines.jobs": 5,  # the spark-submit entry files call the CLI
}


def _part(module: str) -> str:
    rest = module.removeprefix("lambda_pipeline.")
    return "pipelines.jobs" if rest.startswith("pipelines.jobs") else rest.split(".")[0]


def _imports(path: Path) -> set[str]:
    """Every lambda_pipeline module imported anywhere in the file, type-checking imports included."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {m for m in found if m.startswith("lambda_pipeline.")}


def test_imports_flow_one_way() -> None:
    info = read_project(ROOT)
    wrong = []
    for package in info.packages:
        if package == "lambda_pipeline":
            continue
        part = _part(package)
        for path in sorted(info.folder(ROOT, package).glob("*.py")):
            for imported in _imports(path):
                other = _part(imported)
                if other != part and (RANKS[other] >= RANKS[part]):
                    wrong.append(f"{path.relative_to(ROOT)} ({part}) imports {imported} ({other})")
    assert wrong == []


def test_every_part_has_a_rank() -> None:
    parts = {_part(p) for p in read_project(ROOT).packages if p != "lambda_pipeline"}
    assert parts == set(RANKS)


def test_no_shipped_module_starts_the_cli_by_name() -> None:
    """A module name in a string is an arrow the imports do not show."""
    info = read_project(ROOT)
    for package in info.packages:
        for path in info.folder(ROOT, package).glob("*.py"):
            assert '"-m", "lambda_pipeline.cli' not in path.read_text(encoding="utf-8"), path


PY4J = re.compile(r"\._(jvm|jdf|jsparkSession|jsc|gateway|jconf)\b|SparkContext\._")
JVM_DOOR = ROOT / "lambda_pipeline" / "core" / "jvm.py"


def _shipped_modules() -> list[Path]:
    info = read_project(ROOT)
    return sorted(path for package in info.packages for path in info.folder(ROOT, package).glob("*.py"))


def test_py4j_is_reached_only_through_the_jvm_door() -> None:
    reach_ins = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path in _shipped_modules()
        if path != JVM_DOOR
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if PY4J.search(line)
    ]
    assert reach_ins == [], "py4j reached outside lambda_pipeline/core/jvm.py"


MAX_LINES = 450
CLI_MAIN_MAX_LINES = 220


def test_no_shipped_module_is_over_450_lines() -> None:
    long = {
        str(path.relative_to(ROOT)): n
        for path in _shipped_modules()
        if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert long == {}, f"split these by concept (at most {MAX_LINES} lines each)"


def test_the_cli_entry_point_stays_thin() -> None:
    main = ROOT / "lambda_pipeline" / "cli" / "main.py"
    assert len(main.read_text(encoding="utf-8").splitlines()) <= CLI_MAIN_MAX_LINES


def test_no_layer_imports_another_layer() -> None:
    """Spelled out, although the ranks imply it: the layers meet in core and are composed in pipelines/."""
    layers = {"batch_layer", "speed_layer", "serving_layer", "ingestion"}
    info = read_project(ROOT)
    crossings = [
        f"{path.relative_to(ROOT)} imports {imported}"
        for package in info.packages
        if _part(package) in layers
        for path in info.folder(ROOT, package).glob("*.py")
        for imported in _imports(path)
        if _part(imported) in layers and _part(imported) != _part(package)
    ]
    assert crossings == []
