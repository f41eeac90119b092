"""``lambda-pipeline init DIR``: editable copies of the shipped configs, for users who want to change them.

The configs ship inside the package (``lambda_pipeline.conf``), so every verb works without a file of
the user's; ``init`` writes them out once, and ``--config DIR/local.yaml`` then reads the copy.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from lambda_pipeline.core.config_loader import shipped_configs
from lambda_pipeline.core.errors import LambdaError

__all__ = ["add_init_parser", "run_init", "write_configs"]


def write_configs(target: Path, *, force: bool = False) -> list[Path]:
    """Copy every shipped ``*.yaml`` into ``target``; existing files are kept unless ``force``."""
    sources = sorted((f for f in shipped_configs().iterdir() if f.name.endswith(".yaml")), key=lambda f: f.name)
    if not sources:
        raise LambdaError("the installed package carries no configs (lambda_pipeline.conf is empty); reinstall it")
    existing = [target / f.name for f in sources if (target / f.name).exists()]
    if existing and not force:
        names = ", ".join(str(p) for p in existing)
        raise LambdaError(f"{names} already there; edit them, or pass --force to overwrite them with the defaults")
    target.mkdir(parents=True, exist_ok=True)
    written = []
    for source in sources:
        path = target / source.name
        path.write_text(source.read_text(encoding="utf-8"), encoding="utf-8")
        written.append(path)
    return written


def add_init_parser(verbs: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    parser = verbs.add_parser(
        "init",
        help="write editable copies of the shipped configs into a folder",
        description="Writes local.yaml (the default), docker.yaml, emr.yaml and s3-local.yaml into DIR; "
        "run the verbs with --config DIR/local.yaml (or set LAMBDA_PIPELINE_CONFIG) to use a copy.",
    )
    parser.add_argument("dir", type=Path, help="folder to write the configs into (created if needed)")
    parser.add_argument("--force", action="store_true", help="overwrite configs already in DIR")
    return parser


def run_init(args: argparse.Namespace) -> int:
    written = write_configs(args.dir, force=args.force)
    for path in written:
        print(f"init: wrote {path}")
    print(f"init: use them with --config {written[0].parent / 'local.yaml'} (or LAMBDA_PIPELINE_CONFIG)")
    return 0
