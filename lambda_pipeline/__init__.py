"""lambda-pipeline: a Lambda-architecture pipeline on PySpark and Delta Lake.

Everything installs under this one name. The shared core (``core``), ingestion, local stand-ins for
cloud services, the command line and deployment live here; the design card's folders at the top of the
repository are mapped in as subpackages: ``pipelines``, ``batch_layer``, ``speed_layer``,
``serving_layer`` and ``conf`` (the default configs, as package data). Imports flow one way:
core -> ingestion and layers -> pipelines, CLI and deployment.
"""
