"""The ``lambda-pipeline`` command line: one verb per module, the parser and dispatch in ``main``."""
