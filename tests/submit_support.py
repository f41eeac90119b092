"""Pytest plugin: spark-submit of the built artifact by a Python that can import the project from the zip alone.

Register it once, in ``tests/conftest.py``: ``pytest_plugins = ["tests.submit_support"]``. Then::

    def test_something(isolated_python, tmp_path):
        result = spark_submit(dist, isolated_python, "batch", "--workdir", str(work), cwd=tmp_path)

The project is installed editable in the test venv, so "runs from the artifact" is only shown by a Python
that cannot import the project any other way: a throwaway venv whose ``.pth`` file adds the test venv's
site-packages (third-party packages) but not the editable install's finder. Its ``sitecustomize`` reports,
as the driver exits, where ``lambda_pipeline`` (and each module named in ``PROBE_MODULES``) came from.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lambda_pipeline.deploy.artifact import MANIFEST

__all__ = ["isolated_python", "probe_line", "spark_submit"]

SITE_PACKAGES = next(Path(p) for p in sys.path if p.endswith("site-packages") and Path(p).is_dir())
# Test-only probe in the throwaway venv: the driver reports where the modules came from as it exits.
PROBE = """import atexit, os, sys
def _where():
    for name in ["lambda_pipeline", *os.environ.get("PROBE_MODULES", "").split()]:
        module = sys.modules.get(name)
        if module is not None:
            print(f"PROBE {name} from {module.__file__}", file=sys.stderr, flush=True)
atexit.register(_where)
"""


@pytest.fixture(scope="session")
def isolated_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Python with the third-party packages of the test venv and no way to import the project."""
    folder = tmp_path_factory.mktemp("isolated") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True)
    site = next((folder / "lib").glob("python3*/site-packages"))
    (site / "deps.pth").write_text(f"{SITE_PACKAGES}\n")
    (site / "sitecustomize.py").write_text(PROBE)
    python = folder / "bin" / "python"
    probe = subprocess.run(
        [str(python), "-c", "import pydantic, yaml, pyspark; import lambda_pipeline"],
        capture_output=True,
        text=True,
        cwd=folder,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
    )
    assert "No module named 'lambda_pipeline'" in probe.stderr, probe.stderr  # the deps import, the project does not
    return python


def probe_line(module: str, file: Path) -> str:
    """What the probe prints (spark-submit merges the Python driver's stderr into its stdout)."""
    return f"PROBE {module} from {file}"


def spark_submit(
    dist: Path,
    python: Path,
    job: str,
    *args: str,
    cwd: Path,
    probe: tuple[str, ...] = (),
    groups: tuple[str, ...] = ("delta",),
    conf: dict[str, str] | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """spark-submit of the artifact's ``<job>_job.py`` in local mode, with the zip on --py-files only and the
    artifact's own jars of ``groups`` on --jars (as the EMR steps pass them: nothing resolved);
    ``probe``: more modules whose origin the driver reports besides lambda_pipeline; ``conf``: more --conf;
    ``env``: more environment variables."""
    import pyspark

    manifest = json.loads((dist / MANIFEST).read_text())
    jars = [str(dist / jar) for group in groups for jar in manifest["jars"][group]]
    environ = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYSPARK_SUBMIT_ARGS")}
    environ.update(SPARK_HOME=str(Path(pyspark.__file__).parent), PYSPARK_PYTHON=str(python))
    environ.update(PYSPARK_DRIVER_PYTHON=str(python), SPARK_LOCAL_IP="127.0.0.1", PROBE_MODULES=" ".join(probe))
    environ.update(env or {})
    settings = {"spark.ui.enabled": "false", **(conf or {})}
    command = [
        str(Path(sys.executable).parent / "spark-submit"),
        "--master",
        "local[2]",
        *(item for key, value in settings.items() for item in ("--conf", f"{key}={value}")),
        "--jars",
        ",".join(jars),
        "--py-files",
        str(dist / manifest["zip"]),
        str(dist / f"{job}_job.py"),
        *args,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=cwd, env=environ)
