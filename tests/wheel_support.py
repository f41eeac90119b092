"""The project as a user installs it: a wheel built from this checkout's committed files, in a fresh venv.

``tests/test_wheel.py`` installs it with its declared dependencies (what ``pip install`` does); tests that only
need the installed command line (``tests/test_new.py``) install the wheel alone, and reach the third-party
packages of the test venv through a ``.pth`` file, as ``tests/test_artifact.py`` does.
"""

from __future__ import annotations

import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SITE_PACKAGES = next(Path(p) for p in sys.path if p.endswith("site-packages") and Path(p).is_dir())

__all__ = ["ROOT", "SITE_PACKAGES", "build_wheel", "outside_env", "run_outside", "venv_with_wheel"]


def outside_env(bin_dir: Path | None = None) -> dict[str, str]:
    """This process's environment without what would lead a command back to the checkout or its config; with
    ``bin_dir`` first on PATH, as an activated venv has it."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "LAMBDA_PIPELINE_CONFIG")}
    if bin_dir is not None:
        env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
        env["VIRTUAL_ENV"] = str(bin_dir.parent)
    return env


def run_outside(
    command: list[str], cwd: Path, timeout: int, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``command`` in ``cwd`` with :func:`outside_env` (or ``env``); it must succeed."""
    result = subprocess.run(command, cwd=cwd, env=env or outside_env(), capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(command[:4])}: {result.stderr[-3000:]}"
    return result


def build_wheel(base: Path) -> Path:
    """The wheel of this checkout's committed files (a file deleted in the work tree but not yet in the index
    is skipped), built in ``base``."""
    source = base / "source"
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    for name in filter(None, files.decode().split("\0")):
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            (source / name).write_bytes((ROOT / name).read_bytes())
    dist = base / "dist"
    run_outside([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(dist), str(source)], base, 600)
    (wheel,) = dist.glob("lambda_pipeline-*.whl")
    return wheel


def venv_with_wheel(wheel: Path, folder: Path, *, with_dependencies: bool) -> Path:
    """A fresh venv in ``folder`` holding ``wheel``; its bin/ folder. With its declared dependencies
    installed by pip, or (``with_dependencies=False``) the test venv's third-party packages on its path,
    though not the editable install of this checkout (a path in a ``.pth`` file is added as it is: the
    ``.pth`` files in it, the editable install's finder among them, are not run)."""
    venv.create(folder, with_pip=True)
    python = str(folder / "bin" / "python")
    if with_dependencies:
        run_outside([python, "-m", "pip", "install", "-q", str(wheel)], folder, 1200)
    else:
        site = next((folder / "lib").glob("python3*/site-packages"))
        (site / "test-venv-deps.pth").write_text(f"{SITE_PACKAGES}\n")
        run_outside([python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], folder, 300)
    return folder / "bin"
