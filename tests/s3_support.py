"""Pytest plugin: a real S3-compatible server (moto's, over HTTP) for the session and a fresh bucket per test.

Register it once, in ``tests/conftest.py``: ``pytest_plugins = ["tests.s3_support"]``. Then::

    def test_something(spark, s3_bucket):
        spark.range(3).write.format("delta").save(f"s3a://{s3_bucket}/t")

The server starts (a few seconds) only when a test asks for it, on a free loopback port, and is
stopped at the end of the session, also when tests fail. The bucket's ``fs.s3a.bucket.<name>.*``
settings point s3a at the server for that bucket only, on the session's Hadoop configuration, and
are removed afterwards: other tests and other buckets are not affected.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from lambda_pipeline.core.config import S3Settings
from lambda_pipeline.local_services.s3_server import S3Server, free_port

__all__ = ["local_s3_settings", "s3_bucket", "s3_server"]

# moto accepts any signature but refuses unsigned reads of objects (403), so s3a signs its requests with
# placeholder keys. They are set on the test session's Hadoop configuration only, for the test bucket only:
# no config file holds them (the config refuses keys), and they open nothing but the local server.
SIMPLE_PROVIDER = "org.apache.hadoop.fs.s3a.SimpleAWSCredentialsProvider"
PLACEHOLDER_KEYS = {"access.key": "local-moto", "secret.key": "local-moto"}


def local_s3_settings(server: S3Server) -> S3Settings:
    """The ``s3:`` section a config would have for this server (keys aside, which come from elsewhere)."""
    return S3Settings(endpoint=server.endpoint, path_style_access=True, credentials_provider=SIMPLE_PROVIDER)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """One server shared by the whole test session; its objects live in its memory, its requests in its log."""
    server = S3Server(tmp_path_factory.mktemp("s3-server"), port=free_port(), request_log=True)
    try:
        server.start(timeout=120)  # generous: the moto import is slow on a CPU shared with JVMs
        yield server
    finally:
        server.stop(timeout=10)


@pytest.fixture()
def s3_bucket(spark, s3_server: S3Server) -> Iterator[str]:
    """A new, empty bucket, reachable as ``s3a://<name>/`` from the session's Spark through the server."""
    name = f"lambda-test-{uuid.uuid4().hex[:12]}"
    s3_server.create_bucket(name)
    hadoop = spark.sparkContext._jsc.hadoopConfiguration()
    conf = local_s3_settings(s3_server).hadoop_conf(bucket=name)
    conf.update({f"fs.s3a.bucket.{name}.{key}": value for key, value in PLACEHOLDER_KEYS.items()})
    for key, value in conf.items():
        hadoop.set(key, value)
    try:
        yield name
    finally:
        for key in conf:
            hadoop.unset(key)
