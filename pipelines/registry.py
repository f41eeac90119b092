"""Which pipeline a job runs: a shipped one by name, or the user's own by reference.

The config's ``pipeline`` key (or ``--pipeline``) takes:

- a shipped name: ``clickstream`` (the demo) or ``iot`` (sensor monitoring);
- an import reference, ``package.module:ATTRIBUTE``, for a module on the Python path;
- a file reference, ``path/to/file.py:ATTRIBUTE``. A relative path is looked up in the current directory, then
  beside the config file; where neither holds it (inside the spark-submit artifact, which carries the file as
  a top-level module), the module of the file's name is imported.

A reference that cannot be loaded gets one line naming it and what was found instead.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from lambda_pipeline.core.errors import ConfigError
from lambda_pipeline.core.pipeline import Pipeline

__all__ = ["SHIPPED", "load_pipeline", "reference_file"]

SHIPPED: dict[str, str] = {
    "clickstream": "lambda_pipeline.pipelines.clickstream:CLICKSTREAM",
    "iot": "lambda_pipeline.pipelines.iot:IOT",
}
_FORMS = "a shipped pipeline ({}), 'package.module:ATTRIBUTE' or 'path/to/file.py:ATTRIBUTE'"


def _split(ref: str, origin: str) -> tuple[str, str]:
    target, sep, attribute = ref.strip().rpartition(":")
    if not sep or not target or not attribute.isidentifier():
        raise ConfigError(
            origin, "pipeline", f"{ref!r} is not {_FORMS.format(', '.join(SHIPPED))}; e.g. 'pipeline.py:PIPELINE'"
        )
    return target, attribute


def reference_file(ref: str, config_path: str | Path | None = None, origin: str = "config") -> Path | None:
    """The file a file reference names, found as the loader finds it (current directory, then beside the
    config file), or None for a shipped name or an import reference, or a file found nowhere."""
    if ref in SHIPPED:
        return None
    target, _ = _split(ref, origin)
    if not target.endswith(".py"):
        return None
    path = Path(target).expanduser()
    candidates = [path] if path.is_absolute() else [Path.cwd() / path]
    if not path.is_absolute() and config_path is not None:
        candidates.append(Path(config_path).expanduser().resolve().parent / path)
    return next((c.resolve() for c in candidates if c.is_file()), None)


def _import(module: str, ref: str, origin: str, missing: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name and module.startswith(exc.name):
            raise ConfigError(origin, "pipeline", f"{ref!r}: {missing}") from None
        raise ConfigError(origin, "pipeline", f"{ref!r}: importing '{module}' failed: {exc}") from None


def _load_file(path: Path, ref: str, origin: str) -> ModuleType:
    """Import a file as a module named after it; its folder goes on the path, so it may import its neighbours."""
    name = path.stem
    folder = str(path.parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    loaded = sys.modules.get(name)
    if loaded is not None and Path(getattr(loaded, "__file__", "") or "").resolve() == path:
        return loaded
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ConfigError(origin, "pipeline", f"{ref!r}: {path} cannot be imported as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(name, None)
        raise ConfigError(origin, "pipeline", f"{ref!r}: running {path} failed: {type(exc).__name__}: {exc}") from None
    return module


def load_pipeline(ref: str, *, config_path: str | Path | None = None, origin: str = "config") -> Pipeline:
    """The :class:`Pipeline` a reference names; a :class:`ConfigError` naming the reference otherwise."""
    target, attribute = _split(SHIPPED.get(ref, ref), origin)
    if target.endswith(".py"):
        path = reference_file(ref, config_path, origin)
        if path is not None:
            module = _load_file(path, ref, origin)
        else:
            where = "the current directory" + (f" or beside the config file {config_path}" if config_path else "")
            missing = f"no file {target} in {where}, nor a module '{Path(target).stem}' on the Python path"
            module = _import(Path(target).stem, ref, origin, missing)
    else:
        missing = (
            f"no module '{target}' on the Python path; is its folder on PYTHONPATH? Or name a file: 'file.py:ATTR'"
        )
        module = _import(target, ref, origin, missing)
    found = getattr(module, attribute, None)
    if isinstance(found, Pipeline):
        return found
    pipelines = sorted(name for name, value in vars(module).items() if isinstance(value, Pipeline))
    offer = f"; it defines {', '.join(pipelines)}" if pipelines else "; it defines no lp.Pipeline"
    if found is None and not hasattr(module, attribute):
        raise ConfigError(origin, "pipeline", f"{ref!r}: {module.__name__} has no attribute '{attribute}'{offer}")
    raise ConfigError(
        origin, "pipeline", f"{ref!r}: '{attribute}' is a {type(found).__name__}, not an lp.Pipeline{offer}"
    )
