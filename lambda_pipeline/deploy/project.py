"""What pyproject.toml says about the project: its name, version, packages, their folders and dependencies.

One reader, so that the artifact, the strict type check and the layout test all see the same list of
packages as setuptools does, folders mapped by ``package-dir`` included.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path

from lambda_pipeline.core.errors import EnvironmentProblem

__all__ = ["ROOT", "ProjectInfo", "read_project"]

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class ProjectInfo:
    """What pyproject.toml says about the project: the one list of packages and dependencies."""

    name: str
    version: str
    packages: tuple[str, ...]
    dependencies: tuple[str, ...]
    # [tool.setuptools.package-dir]: the packages whose folder is not their dotted name (pipelines/ and the
    # layers' folders at the top of the repository, installed under lambda_pipeline).
    package_dir: tuple[tuple[str, str], ...] = ()
    # [tool.setuptools.package-data]: files besides modules that a package ships (py.typed, conf/*.yaml).
    package_data: tuple[tuple[str, tuple[str, ...]], ...] = ()

    def folder(self, root: Path, package: str) -> Path:
        """Where a package's files are in the checkout, following package-dir like setuptools does."""
        best = max(
            (name for name, _ in self.package_dir if package == name or package.startswith(name + ".")),
            key=len,
            default=None,
        )
        if best is None:
            return root / package.replace(".", "/")
        rest = package[len(best) + 1 :].replace(".", "/") if package != best else ""
        return root / dict(self.package_dir)[best] / rest

    @property
    def dist_name(self) -> str:
        return re.sub(r"[^A-Za-z0-9]+", "_", self.name).lower()

    @property
    def zip_name(self) -> str:
        return f"{self.dist_name}-{self.version}.zip"

    @property
    def env_name(self) -> str:
        return f"{self.dist_name}-{self.version}-env.tar.gz"


def read_project(root: Path = ROOT) -> ProjectInfo:
    """Read pyproject.toml; the artifact is built from a source checkout, never from an installed copy."""
    pyproject = root / "pyproject.toml"
    if not pyproject.is_file():
        raise EnvironmentProblem(f"{pyproject} not found: 'package' runs from a source checkout of the project")
    if sys.version_info >= (3, 11):
        import tomllib
    else:
        try:
            import tomli as tomllib
        except ModuleNotFoundError:
            raise EnvironmentProblem("'package' reads pyproject.toml: use Python 3.11+, or pip install tomli") from None
    data = tomllib.loads(pyproject.read_text(encoding="utf-8"))
    project = data["project"]
    packages = data.get("tool", {}).get("setuptools", {}).get("packages")
    if not packages:
        raise EnvironmentProblem(f"{pyproject}: [tool.setuptools] packages is empty; list the project's packages there")
    setuptools = data["tool"]["setuptools"]
    return ProjectInfo(
        project["name"],
        project["version"],
        tuple(packages),
        tuple(project.get("dependencies", ())),
        tuple(sorted(setuptools.get("package-dir", {}).items())),
        tuple(sorted((name, tuple(globs)) for name, globs in setuptools.get("package-data", {}).items())),
    )
