"""Deployment: the spark-submit artifact (``artifact``) and the EMR steps that run it (``emr_steps``)."""
