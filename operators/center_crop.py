"""center_crop: cut the central HxW window of each image and stack the batch into one fixed-shape array.

This is where ragged images become a dense ``(N, H, W, C)`` uint8 block, which Ray Data stores as an
Arrow fixed-shape tensor column: pixels cross the object store as uint8 (4x smaller than float32) with no
per-row Python objects. Rows that already failed get zeros (their ``error`` says why).
"""

from __future__ import annotations

import numpy as np
from pydantic import Field

from operators._registry import register
from operators._rows import errors_of, map_rows, with_errors
from operators.base import ERROR_COLUMN, Batch, Column, Operator, Params, RowError
from operators.reasons import Reason


class CenterCropParams(Params):
    height: int = Field(gt=0)
    width: int = Field(gt=0)
    channels: int = Field(default=3, ge=1, le=4)


@register("center_crop")
class CenterCrop(Operator):
    Params = CenterCropParams
    reads = (Column("image", "uint8", ("N", "H", "W", "C"), ragged=True),)
    writes = (Column("pixels", "uint8", ("N", "H", "W", "C")), ERROR_COLUMN)
    drops = ("image",)
    params: CenterCropParams

    def __call__(self, batch: Batch) -> Batch:
        p = self.params
        crops, errors = map_rows(batch["image"], errors_of(batch), self._crop, Reason.CROP_FAILED)
        pixels = np.zeros((len(crops), p.height, p.width, p.channels), dtype=np.uint8)
        for i, crop in enumerate(crops):
            if crop is not None:
                pixels[i] = crop
        return with_errors(batch, errors, self.drops, pixels=pixels)

    def _crop(self, image: np.ndarray) -> np.ndarray:
        p = self.params
        height, width = image.shape[:2]
        if height < p.height or width < p.width or image.shape[2] != p.channels:
            raise RowError(
                Reason.CROP_FAILED, f"image {image.shape} cannot give a {p.height}x{p.width}x{p.channels} crop"
            )
        top, left = (height - p.height) // 2, (width - p.width) // 2
        return image[top : top + p.height, left : left + p.width]
