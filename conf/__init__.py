"""The shipped configurations (``*.yaml``), read with ``importlib.resources``; ``lambda-pipeline init`` copies them."""
