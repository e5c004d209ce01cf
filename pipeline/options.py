"""Scoring options: what a user may choose on top of a model version's manifest, in one object.

``streamscore score``, ``jobs/batch_score.py``, the Serve app (``ServeConfig.options``) and anything else that
builds a graph carry the same ``ScoringOptions``, so an image scored online gets the answer its batch row
got. The defaults are the operators' own (read from their parameter models), so they live in one place;
command-line flags default to "not given" and only what the user set is passed on.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from operators.base import Backend, Params
from operators.decode import DecodeParams
from operators.postprocess import PostprocessParams
from operators.read_bytes import ReadBytesParams
from operators.resize import ResizeParams


def _default(params: type[Params], field: str) -> Any:
    return params.model_fields[field].default


class ScoringOptions(BaseModel):
    """Decode, resize and output choices; the manifest supplies size, colour, interpolation, mean and std."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    decode_backend: Backend = Field(
        default=_default(DecodeParams, "backend"), description="decoder: pillow (every format) or opencv (faster)"
    )
    formats: tuple[str, ...] = Field(
        default=_default(DecodeParams, "formats"), description="image formats accepted; others are not_an_image"
    )
    max_pixels: int = Field(
        default=_default(DecodeParams, "max_pixels"), gt=0, description="refuse images with more pixels"
    )
    background: tuple[int, int, int] = Field(
        default=_default(DecodeParams, "background"), description="RGB that transparent pixels are composited on"
    )
    dct_downscale: bool = Field(default=True, description="let JPEG decoders downscale in the DCT domain")
    resize_backend: Backend = Field(
        default=_default(ResizeParams, "backend"), description="resizer: pillow (antialiased) or opencv (faster)"
    )
    top_k: int = Field(default=_default(PostprocessParams, "top_k"), ge=1, description="labels kept per image")
    raw_outputs: bool = Field(
        default=_default(PostprocessParams, "keep_output"), description="also keep the model's raw output vector"
    )
    max_file_bytes: int = Field(
        default=_default(ReadBytesParams, "max_file_bytes"), gt=0, description="refuse image files over this size"
    )

    @field_validator("formats")
    @classmethod
    def _known_formats(cls, formats: tuple[str, ...]) -> tuple[str, ...]:
        """Pillow's format names, upper case; a name Pillow does not know would fail every image."""
        from PIL import Image

        Image.init()
        wanted = tuple(f.strip().upper() for f in formats if f.strip())
        if not wanted:
            raise ValueError("give at least one image format")
        if unknown := [f for f in wanted if f not in Image.OPEN]:
            raise ValueError(f"unknown image formats {unknown}; Pillow knows {', '.join(sorted(Image.OPEN))}")
        return wanted

    @field_validator("background")
    @classmethod
    def _rgb(cls, background: tuple[int, int, int]) -> tuple[int, int, int]:
        if not all(0 <= v <= 255 for v in background):
            raise ValueError(f"background must be three values from 0 to 255, got {background}")
        return background
