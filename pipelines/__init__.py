"""Pipeline definitions (sources, views, their generators) and the thin ``spark-submit`` entry files in ``jobs/``."""
