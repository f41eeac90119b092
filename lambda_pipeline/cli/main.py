"""``lambda-pipeline``: one config and one work directory for every verb (``lambda-pipeline --help``).

Thin on purpose: parse the arguments (:mod:`.parser`), load the config, call one function (:mod:`.verbs`,
or the verb's own module). Errors a user can fix print as one line and exit non-zero, without a stack trace.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from lambda_pipeline.cli.cluster import run_cluster
from lambda_pipeline.cli.context import Context
from lambda_pipeline.cli.new import run_new
from lambda_pipeline.cli.parser import build_parser
from lambda_pipeline.cli.verbs import COMMANDS
from lambda_pipeline.core.errors import LambdaError
from lambda_pipeline.deploy.emr_steps import run_emr_steps
from lambda_pipeline.deploy.package_verb import run_package

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "verbose", False):
        from lambda_pipeline.core.verbosity import enable_verbose

        enable_verbose()
    if getattr(args, "source", None):
        args.overrides = [*args.overrides, f"ingest.source={args.source}"]
    try:
        if args.verb == "package":
            return run_package(args)
        if args.verb == "new":
            return run_new(args)
        if args.verb == "emr-steps":
            return run_emr_steps(args)
        if args.verb == "cluster":
            return run_cluster(args)
        ctx = Context.from_args(args)
        try:
            return COMMANDS[args.verb](ctx, args)
        finally:
            ctx.close()
    except LambdaError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        from pyspark.errors import PySparkException

        if isinstance(exc, PySparkException):
            first = str(exc).strip().splitlines()[0]
            print(f"error: Spark refused the request: {first}", file=sys.stderr)
            return 1
        s3_problem = _s3_access_problem(exc)
        if s3_problem:
            print(f"error: {s3_problem}", file=sys.stderr)
            return 1
        raise


def _s3_access_problem(exc: BaseException) -> str | None:
    """One line for S3 refusing the job (no credentials, access denied), instead of a Java stack trace."""
    text = str(exc)
    for marker, advice in (
        ("NoAuthWithAWSException", "export AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or run with an instance role"),
        ("AccessDeniedException", "check the credentials' permissions on the bucket (and s3.endpoint)"),
    ):
        if marker in text:
            detail = next((line.strip() for line in text.splitlines() if marker in line), marker)
            return f"S3 refused the job: {detail[:300]}; {advice} (see docs/s3.md)"
    return None


if __name__ == "__main__":
    sys.exit(main())
