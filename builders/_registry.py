"""The one registry of model builders: name -> ``build(repository, version) -> folder``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from common.errors import ConfigError

Builder = Callable[[Path, str], Path]
BuilderT = TypeVar("BuilderT", bound=Builder)
_BUILDERS: dict[str, Builder] = {}


def register_builder(name: str) -> Callable[[BuilderT], BuilderT]:
    """Function decorator: ``name`` is built by this function; a second function for one name is refused."""

    def decorate(function: BuilderT) -> BuilderT:
        existing = _BUILDERS.get(name)
        if existing is not None and existing is not function:
            raise ConfigError(f"builder name {name!r} is taken by {existing.__module__}.{existing.__qualname__}")
        _BUILDERS[name] = function
        return function

    return decorate


def builder(name: str) -> Builder:
    """The build function for ``name``; unknown names list the known ones."""
    try:
        return _BUILDERS[name]
    except KeyError:
        raise ConfigError(f"no builder for model {name!r}; known: {', '.join(builder_names())}") from None


def builder_names() -> list[str]:
    return sorted(_BUILDERS)
