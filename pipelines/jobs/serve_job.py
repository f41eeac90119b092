"""spark-submit entry: `spark-submit --packages <delta> pipelines/jobs/serve_job.py [options]`."""

import sys

from lambda_pipeline.cli.main import main

if __name__ == "__main__":
    sys.exit(main(["serve", *sys.argv[1:]]))
