"""The operator registry: the one global of the operator library, filled at import time and read-only after.

Names map to Operator classes. A duplicate name is refused (naming both classes), an unknown name lists the
known ones, and parameters are validated when a graph is built, so mistakes surface before any data is read.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import ValidationError

from common.errors import ConfigError, DuplicateOperatorError, UnknownOperatorError

if TYPE_CHECKING:
    from operators.base import Operator, OperatorSpec

_OPERATORS: dict[str, type[Operator]] = {}
OperatorT = TypeVar("OperatorT", bound="type[Operator]")


def register(name: str) -> Callable[[OperatorT], OperatorT]:
    """Class decorator: make an Operator available to graphs under ``name``."""

    def decorate(cls: OperatorT) -> OperatorT:
        existing = _OPERATORS.get(name)
        if existing is not None and existing is not cls:
            raise DuplicateOperatorError(
                f"operator name {name!r} is taken by {existing.__module__}.{existing.__qualname__}; "
                f"cannot register {cls.__module__}.{cls.__qualname__} under it too"
            )
        cls.name = name
        _OPERATORS[name] = cls
        return cls

    return decorate


def operator_class(name: str) -> type[Operator]:
    """The class registered under ``name``."""
    try:
        return _OPERATORS[name]
    except KeyError:
        known = ", ".join(sorted(_OPERATORS))
        raise UnknownOperatorError(f"unknown operator {name!r}; known operators: {known}") from None


def registered_names() -> list[str]:
    """Every registered operator name, sorted."""
    return sorted(_OPERATORS)


def create(spec: OperatorSpec) -> Operator:
    """Build an operator from its spec, validating the parameters (cheap: heavy set-up is in ``setup``)."""
    if spec.module is not None:
        try:
            importlib.import_module(spec.module)
        except ImportError as exc:
            raise ConfigError(f"operator {spec.name!r}: cannot import its module {spec.module!r}: {exc}") from exc
    cls = operator_class(spec.name)
    try:
        params: Any = cls.Params.model_validate(spec.params)
    except ValidationError as exc:
        raise ConfigError(f"invalid parameters for operator {spec.name!r}: {exc}") from exc
    return cls(params)
