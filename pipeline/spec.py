"""Typed specs for a scoring graph: what the user chooses on top of the model version's manifest."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from operators.decode import DEFAULT_FORMATS


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DecodeOptions(_Frozen):
    backend: Literal["pillow", "opencv"] = "pillow"
    formats: tuple[str, ...] = DEFAULT_FORMATS
    max_pixels: int = Field(default=50_000_000, gt=0)
    background: tuple[int, int, int] = (255, 255, 255)
    dct_downscale: bool = True


class GraphSpec(_Frozen):
    """A model reference (``name`` or ``name:version``) plus options; the manifest supplies the rest."""

    model: str
    decode: DecodeOptions = DecodeOptions()
    resize_backend: Literal["pillow", "opencv"] = "pillow"
    top_k: int = Field(default=5, ge=1)
    keep_raw_output: bool = False
