"""``lambda-pipeline new DIR``: a project of the user's own, ready to run.

It writes ``pipeline.py`` (a source and two views, declared with ``import lambda_pipeline as lp``),
``config.yaml`` (``pipeline: pipeline.py:PIPELINE``, the work directory in the project), sample input lines
(one of them malformed, to show the quarantine) and a README whose first shell block runs it all. The files
ship inside the package (``lambda_pipeline/project-template``). ``--configs`` adds editable copies of the
shipped configs for docker compose, S3 and EMR (``config.emr.yaml``, ...), pointed at the project's pipeline.
"""

from __future__ import annotations

import argparse
import re
import shlex
import sys
from importlib import resources
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from lambda_pipeline.core.config_loader import DEFAULT_CONFIG, shipped_configs
from lambda_pipeline.core.errors import LambdaError

if TYPE_CHECKING:
    if sys.version_info >= (3, 11):
        from importlib.resources.abc import Traversable
    else:
        from importlib.abc import Traversable

__all__ = [
    "PROJECT_PIPELINE",
    "add_new_parser",
    "project_config_name",
    "project_files",
    "run_commands",
    "run_new",
    "write_project",
]

PROJECT_PIPELINE = "pipeline.py:PIPELINE"
"""The reference every config of a new project holds: resolved in the current folder, else beside the config."""

_SKIPPED = ("__pycache__", ".pyc")
_PIPELINE_LINE = re.compile(r"^pipeline:.*$", re.MULTILINE)
_SHELL_BLOCK = re.compile(r"^```(?:bash|sh|shell)\n(.*?)^```", re.MULTILINE | re.DOTALL)


def _template() -> Traversable:
    return resources.files("lambda_pipeline").joinpath("project-template")


def _walk(folder: Traversable, prefix: PurePosixPath) -> list[tuple[PurePosixPath, str]]:
    files = []
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(_SKIPPED):
            continue
        if entry.is_dir():
            files += _walk(entry, prefix / entry.name)
        else:
            files.append((prefix / entry.name, entry.read_text(encoding="utf-8")))
    return files


def project_config_name(shipped: str) -> str:
    """What a shipped config is called in a project: ``config.emr.yaml`` for ``emr.yaml``. Not the shipped
    name, which ``package --add-config`` would refuse as a clash with the artifact's own ``conf/emr.yaml``."""
    return f"config.{shipped}"


def _shipped_configs() -> list[tuple[PurePosixPath, str]]:
    """The shipped configs but the local default (the project's config.yaml takes its place), renamed
    (:func:`project_config_name`), their ``pipeline`` line pointed at the project's pipeline."""
    line = f"pipeline: {PROJECT_PIPELINE}   # this project's pipeline, beside this file"
    out = []
    for config in sorted(shipped_configs().iterdir(), key=lambda f: f.name):
        if not config.name.endswith(".yaml") or config.name == DEFAULT_CONFIG.name:
            continue
        name = project_config_name(config.name)
        text = re.sub(rf"(?<=\s)conf/{re.escape(config.name)}", name, config.read_text(encoding="utf-8"))
        text, found = _PIPELINE_LINE.subn(line, text, count=1)
        out.append((PurePosixPath(name), text if found else f"{line}\n{text}"))
    return out


def project_files(*, configs: bool = False) -> list[tuple[PurePosixPath, str]]:
    """What ``new`` writes: ``(relative path, text)``, the template's files, then the configs if asked."""
    files = _walk(_template(), PurePosixPath())
    if not any(path.name == "pipeline.py" for path, _ in files):
        raise LambdaError("the installed package carries no project template (lambda_pipeline/templates); reinstall it")
    return files + (_shipped_configs() if configs else [])


def run_commands(readme: str) -> list[str]:
    """The commands of the README's first shell block (the ones that run the project), comments left out."""
    block = _SHELL_BLOCK.search(readme)
    if block is None:
        return []
    return [line for line in block.group(1).splitlines() if line.strip() and not line.lstrip().startswith("#")]


def write_project(target: Path, *, force: bool = False, configs: bool = False) -> list[Path]:
    """Write a new project into ``target`` (created if needed); a folder that holds anything needs ``force``,
    and then only files of the same names are replaced."""
    if target.exists() and not target.is_dir():
        raise LambdaError(f"{target} is a file; name a new folder for the project")
    present = sorted(entry.name for entry in target.iterdir()) if target.is_dir() else []
    if present and not force:
        shown = ", ".join(present[:5]) + (f" and {len(present) - 5} more" if len(present) > 5 else "")
        raise LambdaError(
            f"{target} is not empty ({shown}); name a new folder, or pass --force to write the project into it "
            "(files of the same names are replaced, others are left alone)"
        )
    written = []
    for relative, text in project_files(configs=configs):
        path = target.joinpath(*relative.parts)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


def add_new_parser(verbs: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    parser = verbs.add_parser(
        "new",
        help="write a new project: your own pipeline.py, a config, sample input and a README to run them",
        description="Writes DIR/pipeline.py (a source and two views: 'import lambda_pipeline as lp'), "
        f"DIR/config.yaml ('pipeline: {PROJECT_PIPELINE}', the work directory under the folder the verbs run "
        "from), sample JSON lines in DIR/samples/ and DIR/README.md with the commands that run them. "
        "The project runs as it is; change it from there (docs/your-own-pipeline.md).",
    )
    parser.add_argument("dir", type=Path, help="folder of the new project (created; must be empty unless --force)")
    parser.add_argument(
        "--force", action="store_true", help="write into a folder that holds files (same names are replaced)"
    )
    parser.add_argument(
        "--configs",
        action="store_true",
        help="also write editable copies of the shipped configs for docker compose, S3 and EMR "
        f"(config.docker.yaml, config.s3-local.yaml, config.emr.yaml), with 'pipeline: {PROJECT_PIPELINE}'",
    )
    return parser


def run_new(args: argparse.Namespace) -> int:
    target: Path = args.dir
    written = write_project(target, force=args.force, configs=args.configs)
    for path in written:
        print(f"new: wrote {path}")
    print(f"new: next, the sample lines through both layers ({target / 'README.md'} says what each step does):")
    print(f"  cd {shlex.quote(str(target))}")
    for command in run_commands((target / "README.md").read_text(encoding="utf-8")):
        print(f"  {command}")
    print("new: or the whole pipeline on generated events: lambda-pipeline demo --config config.yaml")
    return 0
