"""``python -m lambda_pipeline.cli``: the same as the ``lambda-pipeline`` command."""

import sys

from lambda_pipeline.cli.main import main

sys.exit(main())
