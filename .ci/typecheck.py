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

from mypy import util
from mypy.find_sources import InvalidSourceList
from mypy.fscache import FileSystemCache
from mypy.main import process_options, run_build
from mypy.modulefinder import BuildSource

ROOT = Path(__file__).resolve().parent.parent


def shipped_sources() -> list[BuildSource]:
    """Every module of every package in [tool.setuptools] packages, under its installed name; the folders
    follow package-dir as the artifact builder reads it (``ProjectInfo.folder``)."""
    from lambda_pipeline.deploy.project import read_project

    info = read_project(ROOT)
    sources = []
    for package in info.packages:
        folder = info.folder(ROOT, package)
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
