"""Strict mypy over the shipped package, each file under the module name it is installed as.

mypy finds modules by directory name, and does not run setuptools' editable-install import hook, so it cannot
see [tool.setuptools.package-dir]: it would check ``batch_layer/job.py`` as ``batch_layer.job`` and fail to
resolve ``lambda_pipeline.batch_layer.job`` where the CLI imports it. This script reads the packages and their
folders from pyproject.toml, hands mypy every module with its real name (``lambda_pipeline.batch_layer.job``),
so that imports across them are checked, and runs mypy with the [tool.mypy] config from pyproject.toml.

Usage: .venv/bin/python .ci/typecheck.py [mypy options]; exits like mypy (0 clean, 1 errors, 2 blocked).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # mypy depends on tomli before 3.11
    import tomli as tomllib

from mypy import util
from mypy.find_sources import InvalidSourceList
from mypy.fscache import FileSystemCache
from mypy.main import process_options, run_build
from mypy.modulefinder import BuildSource

ROOT = Path(__file__).resolve().parent.parent


def package_folder(package: str, package_dir: dict[str, str]) -> Path:
    """The folder setuptools installs ``package`` from: the longest mapped prefix, then the dotted rest."""
    parts = package.split(".")
    for n in range(len(parts), 0, -1):
        prefix = ".".join(parts[:n])
        if prefix in package_dir:
            return ROOT / package_dir[prefix] / Path(*parts[n:])
    return ROOT / package_dir.get("", "") / Path(*parts)


def shipped_sources() -> list[BuildSource]:
    """Every module of every package in [tool.setuptools] packages, under its installed name."""
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]
    package_dir: dict[str, str] = setuptools.get("package-dir", {})
    sources = []
    for package in setuptools["packages"]:
        folder = package_folder(package, package_dir)
        if not (folder / "__init__.py").is_file():
            raise SystemExit(f"typecheck: package {package} has no {folder.relative_to(ROOT)}/__init__.py")
        for path in sorted(folder.glob("*.py")):
            module = package if path.stem == "__init__" else f"{package}.{path.stem}"
            sources.append(BuildSource(str(path.relative_to(ROOT)), module, None))
    return sources


def main(argv: list[str]) -> int:
    started = time.time()
    fscache = FileSystemCache()
    try:
        extra, options = process_options(
            ["--config-file", str(ROOT / "pyproject.toml"), *argv], require_targets=False, fscache=fscache
        )
    except InvalidSourceList as e:
        raise SystemExit(f"typecheck: {e}") from e
    if extra:
        raise SystemExit("typecheck: pass mypy options only; the modules come from pyproject.toml")
    sources = shipped_sources()
    _, messages, blockers = run_build(sources, options, fscache, started, sys.stdout, sys.stderr)
    formatter = util.FancyFormatter(sys.stdout, sys.stderr, options.hide_error_codes)
    n_errors, _, n_files = util.count_stats(messages)
    if n_errors:
        print(formatter.format_error(n_errors, n_files, len(sources), blockers=blockers, use_color=False))
        return 2 if blockers else 1
    print(formatter.format_success(len(sources), use_color=False))
    return 0


if __name__ == "__main__":
    import os

    os.chdir(ROOT)  # mypy's cache and the paths in its messages are relative to the repository
    sys.exit(main(sys.argv[1:]))
