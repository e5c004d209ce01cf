"""Command-line flags for ``ScoringOptions``, shared by ``streamscore score`` and ``streamscore serve``.

Flags default to "not given" (None): only what the user typed is passed to the pydantic model, whose defaults
are the only ones. The help text shows those defaults, read from the model.
"""

from __future__ import annotations

import argparse
from typing import Any, get_args

from pydantic import BaseModel, ValidationError

from common.errors import ConfigError
from operators.base import Backend
from pipeline.options import ScoringOptions


def default_of(model: type[BaseModel], field: str) -> Any:
    value = model.model_fields[field].default
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    return value


def described(model: type[BaseModel], field: str, text: str | None = None) -> str:
    """Help for a flag that sets ``model.field``: its description and the model's default."""
    return f"{text or model.model_fields[field].description} (default: {default_of(model, field)})"


def _csv(kind: type) -> Any:
    def parse(text: str) -> tuple[Any, ...]:
        return tuple(kind(part.strip()) for part in text.split(",") if part.strip())

    return parse


def add_scoring_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("scoring options (the same for batch and online scoring)")
    o = ScoringOptions

    backends = get_args(Backend)
    group.add_argument("--decode-backend", choices=backends, help=described(o, "decode_backend"))
    group.add_argument("--resize-backend", choices=backends, help=described(o, "resize_backend"))
    group.add_argument("--max-pixels", type=int, help=described(o, "max_pixels"))
    group.add_argument("--max-file-bytes", type=int, help=described(o, "max_file_bytes"))
    group.add_argument("--formats", type=_csv(str), metavar="A,B", help=described(o, "formats"))
    group.add_argument("--background", type=_csv(int), metavar="R,G,B", help=described(o, "background"))
    group.add_argument(
        "--no-dct-downscale", dest="dct_downscale", action="store_const", const=False, help="decode JPEGs at full size"
    )
    group.add_argument("--top-k", type=int, help=described(o, "top_k"))
    group.add_argument(
        "--raw-outputs",
        action="store_const",
        const=True,
        help=described(o, "raw_outputs", "also write the model's raw output vector"),
    )


def given_options(args: argparse.Namespace) -> dict[str, Any]:
    """The scoring options the user set on the command line (nothing else)."""
    values = {name: getattr(args, name, None) for name in ScoringOptions.model_fields}
    return {name: value for name, value in values.items() if value is not None}


def scoring_options(args: argparse.Namespace, base: dict[str, Any] | None = None) -> ScoringOptions:
    """``base`` (e.g. from a config file) with the flags the user gave on top."""
    try:
        return ScoringOptions.model_validate({**(base or {}), **given_options(args)})
    except ValidationError as exc:
        raise ConfigError(f"bad scoring options: {exc}") from None
