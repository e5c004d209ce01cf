"""normalize: ``(x - mean) / std`` per channel, uint8 HWC -> float32 in the model's layout, in one pass.

Runs next to inference so that only uint8 pixels travel between processes. A single numpy pass per channel
measured 0.13 ms/img against 0.65 ms for doing the same inside the ONNX graph.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import model_validator

from common.errors import ContractError
from operators._registry import register
from operators._rows import with_columns
from operators.base import Batch, Column, Operator, Params


class NormalizeParams(Params):
    mean: tuple[float, ...]
    std: tuple[float, ...]
    layout: Literal["NCHW", "NHWC"] = "NCHW"

    @model_validator(mode="after")
    def _check(self) -> NormalizeParams:
        if len(self.mean) != len(self.std) or any(s <= 0 for s in self.std):
            raise ValueError(f"need one positive std per mean, got mean={self.mean} std={self.std}")
        return self


@register("normalize")
class Normalize(Operator):
    Params = NormalizeParams
    reads = (Column("pixels", "uint8", ("N", "H", "W", "C")),)
    writes = (Column("input", "float32", ("N", "C", "H", "W")),)
    drops = ("pixels",)
    params: NormalizeParams

    def outputs(self) -> tuple[Column, ...]:
        axes = ("N", "C", "H", "W") if self.params.layout == "NCHW" else ("N", "H", "W", "C")
        return (Column("input", "float32", axes),)

    def __call__(self, batch: Batch) -> Batch:
        pixels = batch["pixels"]
        n, height, width, channels = pixels.shape
        p = self.params
        if channels != len(p.mean):
            raise ContractError(f"pixels have {channels} channels but normalize has {len(p.mean)} means")
        if p.layout == "NCHW":
            out = np.empty((n, channels, height, width), dtype=np.float32)
            planes = [out[:, c] for c in range(channels)]
        else:
            out = np.empty((n, height, width, channels), dtype=np.float32)
            planes = [out[..., c] for c in range(channels)]
        for c, plane in enumerate(planes):
            np.subtract(pixels[..., c], np.float32(p.mean[c]), out=plane, dtype=np.float32)
            plane *= np.float32(1.0 / p.std[c])
        return with_columns(batch, self.drops, input=out)
