"""A reference to a model in the repository: a name and, optionally, a version (None: the model's default).

Names and versions become path components, so both are held to a safe alphabet: ``../x`` or ``a/b`` cannot
escape the repository. Code passes ``ModelRef`` values around; ``"name:version"`` text is parsed once, where
it enters (a CLI flag, a URL), and written back only for people (logs, messages).
"""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, field_validator

from common.errors import ConfigError

_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def check_id(kind: str, value: str) -> str:
    """``value`` if it is a safe model name or version, else a ConfigError naming the rule."""
    if not _SAFE_ID.match(value) or ".." in value:
        raise ConfigError(
            f"invalid model {kind} {value!r}: use letters, digits, '.', '_' and '-' (not starting with one of them)"
        )
    return value


class ModelRef(BaseModel):
    """``name`` plus ``version`` (None: the model's default when it is resolved; ``ModelRepository.resolve_version``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    version: str | None = None

    @field_validator("name")
    @classmethod
    def _safe_name(cls, value: str) -> str:
        return check_id("name", value)

    @field_validator("version")
    @classmethod
    def _safe_version(cls, value: str | None) -> str | None:
        return None if value is None else check_id("version", value)

    @classmethod
    def parse(cls, text: str) -> ModelRef:
        """``"name"`` or ``"name:version"``; a ConfigError (not a pydantic error) for unsafe ids."""
        name, _, version = text.partition(":")
        check_id("name", name)
        if version:
            check_id("version", version)
        return cls(name=name, version=version or None)

    def at(self, version: str) -> ModelRef:
        """The same model at ``version``."""
        return ModelRef(name=self.name, version=version)

    def __str__(self) -> str:
        return self.name if self.version is None else f"{self.name}:{self.version}"
