"""One Spark session for the whole run, from the project's own session factory."""

from __future__ import annotations

from pathlib import Path

import pytest

from lambda_pipeline.core.config import Settings, SparkSettings
from lambda_pipeline.core.config_loader import load_settings
from lambda_pipeline.core.locations import Locations

pytest_plugins = [
    "tests.kafka_support",  # kafka_broker (real broker on loopback) and kafka_topic
    "tests.s3_support",  # s3_server (moto's S3 server on loopback) and s3_bucket
    "tests.cluster_support",  # spark_cluster: a Spark standalone master and worker on loopback
    "tests.submit_support",  # isolated_python: spark-submit's driver imports the project from the artifact only
]


@pytest.fixture(scope="session")
def spark(tmp_path_factory: pytest.TempPathFactory):
    from lambda_pipeline.core.jvm_packages import KAFKA_COORDINATE, hadoop_aws_coordinate
    from lambda_pipeline.core.session import get_spark

    warehouse = tmp_path_factory.mktemp("spark-warehouse")
    session = get_spark(
        SparkSettings(
            master="local[2]",
            app_name="lambda-pipeline-tests",
            shuffle_partitions=2,
            log_level="ERROR",
            conf={"spark.ui.enabled": "false", "spark.sql.warehouse.dir": str(warehouse)},
        ),
        # The Kafka tests read topics and the S3 tests write s3a:// paths in this same session.
        packages=(KAFKA_COORDINATE, hadoop_aws_coordinate()),
    )
    yield session
    session.stop()


@pytest.fixture()
def settings() -> Settings:
    """The shipped default config, with fast triggers for tests."""
    return load_settings(None, ["ingest.trigger=200 milliseconds", "speed.compact_every=5"])


@pytest.fixture()
def locations(settings: Settings, tmp_path: Path) -> Locations:
    """Each test gets its own work directory, so its own tables and checkpoints."""
    loc = Locations.create(settings, tmp_path / "work")
    loc.ensure_local_dirs()
    return loc
