"""Bytes of the master table with and without the raw text it keeps for backfills.

Ingests ``--events`` generated clickstream events (the demo's generator and mix: late, duplicated and malformed
lines included) with the real ingest job, then writes master's newest version twice more with the same Parquet
settings, once whole and once without the ``raw`` column, each as ``--files`` files so that the file count does
not weigh on the comparison. Reports both sizes and the raw text's share.

    .venv/bin/python bench/master_bytes.py --events 500000
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from _common import add_common_args, work_directory, write_results

from lambda_pipeline.core.config_loader import load_settings
from lambda_pipeline.core.locations import Locations
from lambda_pipeline.core.session import get_spark
from lambda_pipeline.core.views import RAW
from lambda_pipeline.pipelines.clickstream import CLICKSTREAM
from lambda_pipeline.pipelines.generator import ClickstreamGenerator
from lambda_pipeline.pipelines.ingest import start_ingest

NAME = "master_bytes"


def _bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*.parquet"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=500_000, help="events generated (default 500000)")
    parser.add_argument("--files", type=int, default=4, help="Parquet files per copy (default 4)")
    add_common_args(parser, NAME)
    args = parser.parse_args(argv)
    with work_directory(args, "bench-master-bytes-") as workdir:
        settings = load_settings(args.config, args.override)
        locations = Locations.create(settings, workdir)
        locations.ensure_local_dirs()
        spark = get_spark(settings.spark, app_name=f"bench-{NAME}")
        try:
            ClickstreamGenerator(7).write(locations.landing, args.events, files=8)
            start_ingest(spark, CLICKSTREAM, settings, locations, once=True).awaitTermination()
            master = spark.read.format("delta").load(locations.master)
            rows = master.count()
            sizes = {}
            for name, frame in (("with_raw", master), ("without_raw", master.drop(RAW))):
                out = workdir / "copies" / name
                frame.repartition(args.files).write.mode("overwrite").parquet(str(out))
                sizes[name] = _bytes(out)
            share = 1 - sizes["without_raw"] / sizes["with_raw"]
            print(
                f"master: {rows:,} events; {sizes['with_raw'] / 2**20:.1f} MB with the raw text, "
                f"{sizes['without_raw'] / 2**20:.1f} MB without: the raw text is {share:.0%} of master's bytes"
            )
            write_results(
                args.output,
                NAME,
                {"events": rows, "bytes": sizes, "raw_share": round(share, 4), "parameters": vars(args)},
            )
        finally:
            spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
