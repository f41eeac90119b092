"""A pipeline: one event source and the views declared over it.

>>> import lambda_pipeline as lp
>>> PIPELINE = lp.Pipeline("iot", source=readings, views=[site_temperature, device_totals])  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from lambda_pipeline.core.errors import ViewDefinitionError
from lambda_pipeline.core.events import IDENTIFIER, EventSource
from lambda_pipeline.core.views import View

__all__ = ["Pipeline"]


@dataclass(frozen=True)
class Pipeline:
    """What the layers compute: every layer takes the same object, so they cannot drift."""

    name: str
    source: EventSource
    views: Sequence[View]

    def __post_init__(self) -> None:
        where = f"pipeline '{self.name}'"
        if not IDENTIFIER.match(str(self.name)):
            raise ViewDefinitionError(f"{where}: the name must be an identifier (letters, digits, '_')")
        if not isinstance(self.source, EventSource):
            raise ViewDefinitionError(f"{where}: source must be an lp.EventSource, got {type(self.source).__name__}")
        if isinstance(self.views, View) or not isinstance(self.views, (list, tuple)):
            raise ViewDefinitionError(f"{where}: views must be a list of lp.View, got {type(self.views).__name__}")
        object.__setattr__(self, "views", tuple(self.views))
        if not self.views:
            raise ViewDefinitionError(f"{where}: declare at least one view")
        for view in self.views:
            if not isinstance(view, View):
                raise ViewDefinitionError(f"{where}: {view!r} in views is not an lp.View")
        names = [v.name for v in self.views]
        if len(set(names)) != len(names):
            raise ViewDefinitionError(f"{where}: view names repeat: {names}")
        for view in self.views:
            if view.source != self.source:
                raise ViewDefinitionError(
                    f"{where}: view '{view.name}' reads source '{view.source.name}', "
                    f"not the pipeline's source '{self.source.name}'"
                )

    def check(self, spark: object | None = None) -> Pipeline:
        """Check every view's expressions with Spark and learn their types: every job does this first."""
        for view in self.views:
            view.resolve(spark)
        return self

    def view(self, name: str) -> View:
        for view in self.views:
            if view.name == name:
                return view
        raise ViewDefinitionError(f"pipeline '{self.name}' has no view '{name}'; it has {[v.name for v in self.views]}")
