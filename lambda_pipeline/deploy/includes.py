"""The user's own modules in the artifact: the module a pipeline reference names, and what ``--include`` adds.

spark-submit imports the project from the zip on ``--py-files``; the user's modules travel in the same zip, at
its top level, where the pipeline loader (``pipelines/registry.py``) finds them on a cluster node:

- a file reference ``path/to/pipeline.py:PIPELINE`` finds no file there, so the module ``pipeline`` is imported:
  the file travels as ``pipeline.py``;
- an import reference ``package.module:PIPELINE`` imports ``package``: its folder travels as ``package/``;
- ``package --include PATH`` adds a helper module (``helpers.py``) or a package folder the pipeline imports.

A name may be carried once: not ``lambda_pipeline``, not a module of Python's standard library or of the
project's dependencies (on the cluster one copy would hide the other), not two different files of one name.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lambda_pipeline.core.errors import ConfigError
from lambda_pipeline.core.reproducible import sha256
from lambda_pipeline.deploy.packed_env import requirement_name

__all__ = ["Include", "carried_module", "find_includes", "local_include"]

_COMPILED = tuple(importlib.machinery.EXTENSION_SUFFIXES)


@dataclass(frozen=True)
class Include:
    """A top-level module (``name.py``) or package folder (``name/``) carried in the artifact's zip."""

    name: str
    source: Path  # the file or folder on disk, resolved
    references: tuple[str, ...] = ()  # the pipeline references that brought it in

    @property
    def kind(self) -> str:
        return "package" if self.source.is_dir() else "module"

    def entries(self) -> list[tuple[str, Path]]:
        """(name in the zip, file): the module, or every file of the package but caches and hidden files."""
        if self.source.is_file():
            return [(f"{self.name}.py", self.source)]
        found = []
        for folder, dirs, files in os.walk(self.source):
            dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d != "__pycache__")
            for name in sorted(files):
                if name.startswith(".") or name.endswith((".pyc", ".pyo")):
                    continue
                file = Path(folder) / name
                if name.endswith(_COMPILED):
                    raise ConfigError(
                        "--include",
                        None,
                        f"{file} is a compiled extension module: Python cannot import one from the artifact's zip; "
                        "ship it in the packed environment instead",
                    )
                found.append((f"{self.name}/{file.relative_to(self.source).as_posix()}", file))
        return found

    def digest(self) -> str:
        """SHA-256 over the zip names and contents: what the manifest records, what emr-steps compares."""
        total = hashlib.sha256()
        for name, file in sorted(self.entries()):
            total.update(f"{name}\0{sha256(file)}\n".encode())
        return total.hexdigest()

    def manifest_entry(self) -> dict[str, Any]:
        entries = sorted(name for name, _ in self.entries())
        return {
            "name": self.name,
            "kind": self.kind,
            "files": entries,
            "sha256": self.digest(),
            "references": sorted(self.references),
        }


def carried_module(ref: str) -> str | None:
    """The top-level module a reference is imported by inside the artifact; None when the project carries it
    (a shipped name, or a module of lambda_pipeline)."""
    from lambda_pipeline.pipelines.registry import SHIPPED

    if ref in SHIPPED:
        return None
    target = ref.strip().rpartition(":")[0]
    if target.endswith(".py"):
        return Path(target).stem
    top = target.split(".")[0]
    return None if top == "lambda_pipeline" else top


def _include_of_path(path: Path, origin: str) -> Include:
    """An ``--include PATH``: a ``.py`` file or a package folder, named as Python would import it."""
    if not path.exists():
        raise ConfigError(origin, None, f"{path}: no such file or folder")
    path = path.resolve()
    name = path.stem if path.is_file() else path.name
    if path.is_file() and path.suffix != ".py":
        raise ConfigError(origin, None, f"{path}: expected a Python module (.py) or a package folder")
    if path.is_dir() and not (path / "__init__.py").is_file():
        raise ConfigError(
            origin, None, f"{path}: not a package (no __init__.py): add one, or include its modules one by one"
        )
    if not name.isidentifier():
        raise ConfigError(origin, None, f"{path}: '{name}' cannot be imported as a module name; rename it")
    return Include(name, path)


def _source_of(module: Any) -> Path | None:
    """The file or package folder a loaded top-level module comes from, or None for one without source."""
    file = getattr(module, "__file__", None)
    if not file:
        return None
    path = Path(file).resolve()
    return path.parent if path.name == "__init__.py" else path if path.suffix == ".py" else None


def local_include(ref: str, config_path: Path | None, origin: str, covered: Iterable[Path] = ()) -> Include | None:
    """The module a reference names, loaded here as any verb loads it, as the artifact would carry it.

    None for a reference the project carries itself. The reference is loaded (a wrong one is refused as by
    every verb); a file reference's module must not import neighbours of its own folder that stay behind
    (those ``covered`` by an ``--include`` travel too).
    """
    from lambda_pipeline.pipelines.registry import load_pipeline, reference_file

    name = carried_module(ref)
    if name is None:
        load_pipeline(ref, config_path=config_path, origin=origin)
        return None
    before = set(sys.modules)
    load_pipeline(ref, config_path=config_path, origin=origin)
    file = reference_file(ref, config_path, origin)
    source = file if file is not None else _source_of(sys.modules.get(name))
    if source is None:
        raise ConfigError(
            origin, "pipeline", f"{ref!r}: module '{name}' has no Python source to carry; add its folder with --include"
        )
    if file is not None:
        _refuse_left_behind(ref, file, set(sys.modules) - before, set(covered), origin)
    return Include(name, source, (ref,))


def _refuse_left_behind(ref: str, file: Path, loaded: set[str], covered: set[Path], origin: str) -> None:
    """A pipeline file that imports a module beside it: on the cluster that module is missing."""
    folder = file.parent
    behind = set()
    for module_name in loaded:
        top = module_name.split(".")[0]
        path = _source_of(sys.modules.get(module_name))
        if top == "lambda_pipeline" or path is None or path == file or not path.is_relative_to(folder):
            continue
        first = path.relative_to(folder).parts[0]
        if first.removesuffix(".py") == top:  # found through the folder on the path (not a venv inside it)
            behind.add(folder / first)
    behind -= covered
    if behind:
        paths = " ".join(f"--include {p}" for p in sorted(behind))
        raise ConfigError(
            origin,
            "pipeline",
            f"{ref!r}: {file.name} imports {', '.join(p.stem for p in sorted(behind))} from its folder, which the "
            f"artifact would not carry: add {paths}",
        )


def _dependency_modules(requirements: Iterable[str]) -> dict[str, str]:
    """Top-level module -> distribution, for the project's dependencies and theirs (installed here)."""
    from importlib import metadata

    by_dist: dict[str, set[str]] = {}
    for module, dists in metadata.packages_distributions().items():
        for dist in dists:
            by_dist.setdefault(requirement_name(dist), set()).add(module)
    seen: set[str] = set()
    todo = [requirement_name(r) for r in requirements]
    while todo:
        dist = todo.pop()
        if dist in seen:
            continue
        seen.add(dist)
        try:
            requires = metadata.requires(dist) or []
        except metadata.PackageNotFoundError:
            continue
        todo += [requirement_name(r) for r in requires if "extra ==" not in r]
    return {module: dist for dist in seen for module in by_dist.get(dist, ())}


def find_includes(
    paths: Iterable[Path],
    references: Iterable[tuple[str, Path | None, str]],
    *,
    carried: Iterable[str],
    requirements: Iterable[str],
) -> list[Include]:
    """What the artifact carries besides the project: ``--include`` paths, then the module of each reference
    ``(ref, config file or None, origin)``; refused with one line if a name clashes or cannot be carried.

    The included folders go on the Python path first, as they are on the cluster, so an import reference
    may name a package given with ``--include``.
    """
    found: dict[str, Include] = {}
    origins: dict[str, str] = {}

    def add(include: Include, origin: str) -> None:
        taken = found.get(include.name)
        if taken is not None and taken.source != include.source:
            raise ConfigError(
                origin,
                None,
                f"two modules named '{include.name}' for the artifact: {taken.source} and {include.source}; rename one",
            )
        references = (taken.references if taken else ()) + include.references
        found[include.name] = Include(include.name, include.source, tuple(dict.fromkeys(references)))
        origins.setdefault(include.name, origin)

    path_before = list(sys.path)
    try:
        for path in paths:
            include = _include_of_path(Path(path).expanduser(), "--include")
            add(include, "--include")
            folder = str(include.source.parent)
            if folder not in sys.path:
                sys.path.insert(0, folder)
        for ref, config_path, origin in references:
            carried_here = local_include(ref, config_path, origin, [i.source for i in found.values()])
            if carried_here is not None:
                add(carried_here, origin)
    finally:
        sys.path[:] = path_before
    owners = {name: "the project itself" for name in carried}
    owners |= {name: f"the dependency {dist}" for name, dist in _dependency_modules(requirements).items()}
    owners |= {name: "Python's standard library" for name in sys.stdlib_module_names}
    for name, include in found.items():
        if name in owners:
            raise ConfigError(
                origins[name],
                None,
                f"{include.source}: a module '{name}' is already on the cluster's path ({owners[name]}); "
                "one would hide the other: rename yours",
            )
        include.entries()  # a compiled extension is refused now, not when the zip is written
    return [found[name] for name in sorted(found)]
