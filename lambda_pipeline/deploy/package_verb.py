"""``lambda-pipeline package``: the verb that builds the artifact, and its options.

It takes none of the common options but --pipeline (--config, --workdir, --set, --verbose): one artifact serves
every config, and the configs to ship besides ``conf/*.yaml`` are named with ``--add-config``. The user's pipeline
travels in the zip: the module of each ``--pipeline`` reference and of each added config's ``pipeline`` key, and
whatever ``--include`` names (deploy/includes.py).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from lambda_pipeline.deploy.artifact import MANIFEST, build_artifact

__all__ = ["add_package_parser", "run_package"]


def add_package_parser(verbs: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    """Register the ``package`` verb (it takes no --config/--workdir: the artifact serves every config)."""
    package = verbs.add_parser(
        "package",
        help="build the deployable artifact for spark-submit (zip, job entry files, conf, manifest)",
        description="Builds in --out: the project's zip for --py-files, the jobs' entry files, conf/*.yaml, "
        "jars/ for --jars (Delta Lake and the Kafka connector with their dependencies, resolved from Maven Central "
        "now, so that the cluster downloads nothing), manifest.json and, with --with-env, a packed virtual "
        "environment for --archives. Your own pipeline travels "
        "in the zip, at its top level: the file a --pipeline reference (or an --add-config config's 'pipeline' key) "
        "names, as the module the jobs import on the cluster, and each --include.",
    )
    package.add_argument("--out", default="dist", help="output folder (default: dist)")
    package.add_argument(
        "--with-env", action="store_true", help="also pack a virtual environment with the dependencies (slow)"
    )
    package.add_argument(
        "--env-python",
        metavar="PATH",
        help="interpreter the packed env runs on the cluster nodes (default: /usr/bin/python3.<this minor>)",
    )
    package.add_argument(
        "--with-msk-iam",
        action="store_true",
        help="also carry the Amazon MSK IAM authentication jars (Kafka options with sasl.mechanism AWS_MSK_IAM)",
    )
    package.add_argument(
        "--with-hadoop-aws",
        action="store_true",
        help="also carry hadoop-aws and the AWS SDK bundle for s3a:// (about 690 MB; EMR's s3:// needs neither)",
    )
    package.add_argument(
        "--add-config",
        action="append",
        default=[],
        metavar="FILE",
        help="ship this config too, as conf/<name> (conf/*.yaml always ship), and the module its 'pipeline' "
        "key names; repeatable",
    )
    package.add_argument(
        "--pipeline",
        action="append",
        default=[],
        metavar="REF",
        help="carry the module this pipeline reference names ('path/to/file.py:ATTR' as <file>.py, "
        "'package.module:ATTR' as package/) at the zip's top level; repeatable",
    )
    package.add_argument(
        "--include",
        action="append",
        default=[],
        metavar="PATH",
        help="also carry this module (.py) or package folder at the zip's top level, e.g. a helper the "
        "pipeline imports; repeatable",
    )
    return package


def run_package(args: argparse.Namespace) -> int:
    out = Path(args.out)
    manifest = build_artifact(
        out,
        with_env=args.with_env,
        env_python=args.env_python,
        extra_configs=[Path(p) for p in args.add_config],
        pipelines=args.pipeline,
        includes=[Path(p) for p in args.include],
        with_msk_iam=args.with_msk_iam,
        with_hadoop_aws=args.with_hadoop_aws,
    )
    for entry in manifest["files"]:
        print(f"{out / entry['path']}  ({entry['bytes']:,} bytes)")
    for include in manifest["includes"]:
        files = include["files"]
        what = files[0] if include["kind"] == "module" else f"{include['name']}/ ({len(files)} files)"
        why = f" for {', '.join(include['references'])}" if include["references"] else ""
        print(f"  carries {what} in {manifest['zip']}{why}")
    print(f"{out / MANIFEST}  (version {manifest['version']})")
    return 0
