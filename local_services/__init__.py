"""Development and test services the project starts itself, bound to loopback only.

Today: a single-node Kafka broker (KRaft) whose jars come from Maven Central.
Imports flow one way: ``lambda_core`` -> ``local_services`` -> ``pipelines`` and ``tests``;
nothing here imports a pipeline or a layer.
"""
