"""Development and test services the project starts itself, bound to loopback only.

Today: a single-node Kafka broker (KRaft) whose jars come from Maven Central, and moto's S3 server;
both run as background processes managed by ``lambda_pipeline.local_services.process``.
Imports flow one way: ``lambda_pipeline.core`` -> ``local_services`` -> the CLI and the tests;
nothing here imports a pipeline or a layer.
"""
