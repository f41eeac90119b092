"""Maintenance of a deployment's tables for runs of weeks (``lambda-pipeline maintain``)."""
