"""A pipeline: one event source and the views declared over it."""

from __future__ import annotations

from dataclasses import dataclass

from lambda_pipeline.core.errors import ViewDefinitionError
from lambda_pipeline.core.views import EventSource, View

__all__ = ["Pipeline"]


@dataclass(frozen=True)
class Pipeline:
    """What the layers compute: every layer takes the same object, so they cannot drift."""

    name: str
    source: EventSource
    views: tuple[View, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "views", tuple(self.views))
        names = [v.name for v in self.views]
        if len(set(names)) != len(names):
            raise ViewDefinitionError(f"pipeline '{self.name}': view names repeat: {names}")
        for view in self.views:
            if view.source != self.source:
                raise ViewDefinitionError(
                    f"pipeline '{self.name}': view '{view.name}' reads source '{view.source.name}', "
                    f"not the pipeline's source '{self.source.name}'"
                )

    def view(self, name: str) -> View:
        for view in self.views:
            if view.name == name:
                return view
        raise ViewDefinitionError(f"pipeline '{self.name}' has no view '{name}'; it has {[v.name for v in self.views]}")
