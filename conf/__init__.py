"""The shipped configurations (``*.yaml``), read with ``importlib.resources``.

``lambda-pipeline new DIR --configs`` writes editable copies of them into a new project.
"""
