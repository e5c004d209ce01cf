"""resize: scale each image so its shorter side has a given length, keeping the aspect ratio.

(Ray's ``read_images(size=...)`` squashes the aspect ratio, which changes what a classifier sees.) The Pillow
back end antialiases like the PIL-based transforms most models were trained with; the OpenCV back end is
faster and, when shrinking by more than 2x, first reduces with area averaging so it does not alias.
"""

from __future__ import annotations

import math
from typing import Literal

import cv2
import numpy as np
from PIL import Image
from pydantic import Field

from operators._registry import register
from operators._rows import errors_of, map_rows, with_errors
from operators.base import ERROR_COLUMN, Backend, Batch, Column, Operator, Params
from operators.reasons import Reason

Box = tuple[float, float, float, float]  # (left, top, right, bottom) in source pixels, as Pillow takes it
Interpolation = Literal["nearest", "bilinear", "bicubic", "area", "lanczos"]

_PIL_FILTERS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "area": Image.Resampling.BOX,
    "lanczos": Image.Resampling.LANCZOS,
}
_CV_FILTERS = {
    "nearest": cv2.INTER_NEAREST,
    "bilinear": cv2.INTER_LINEAR,
    "bicubic": cv2.INTER_CUBIC,
    "area": cv2.INTER_AREA,
    "lanczos": cv2.INTER_LANCZOS4,
}


class ResizeParams(Params):
    shorter: int = Field(gt=0)
    interpolation: Interpolation = "bilinear"
    backend: Backend = "pillow"
    # (height, width) of the centre crop that follows. Given, only the source region the crop keeps is resized,
    # so the output, and the work, are bounded by the model's input whatever the aspect ratio: an 85-byte
    # 4000x1 PNG resized whole to a shorter side of 256 is a 1,024,000 x 256 image (2.5 GB measured, as a float
    # copy downstream), of which the crop keeps 224 x 224.
    crop: tuple[int, int] | None = None


# Pillow copies its input into an image of its own (4 bytes per pixel for RGB). Past this many source pixels the
# resize runs in bands of output rows, each copying in only the source rows it reads, so a 49 MP image costs a
# band (about 12 MB) beside the decoded array rather than a 196 MB second copy of it.
_PILLOW_BAND_PIXELS = 4_000_000
# How far each filter reads either side of a sample, in source pixels at scale 1 (Pillow's own supports).
_PIL_SUPPORT = {"nearest": 0.5, "bilinear": 1.0, "bicubic": 2.0, "area": 0.5, "lanczos": 3.0}

# The OpenCV back end resizes whole images (its filters align pixel centres on the whole image) while the
# result is at most this many times the crop; past that it resizes only the crop region, as Pillow does.
_OPENCV_WHOLE_IMAGE_LIMIT = 4


def shorter_side_size(height: int, width: int, shorter: int) -> tuple[int, int]:
    """(height, width) with the shorter side equal to ``shorter`` and the aspect ratio kept."""
    if height <= width:
        return shorter, max(shorter, round(width * shorter / height))
    return max(shorter, round(height * shorter / width)), shorter


@register("resize")
class Resize(Operator):
    """Resize the ragged ``image`` column in place of itself (a new array; the input is untouched)."""

    Params = ResizeParams
    reads = (Column("image", "uint8", ("N", "H", "W", "C"), ragged=True),)
    writes = (Column("image", "uint8", ("N", "H", "W", "C"), ragged=True), ERROR_COLUMN)
    params: ResizeParams

    def __call__(self, batch: Batch) -> Batch:
        kernel = self._resize_opencv if self.params.backend == "opencv" else self._resize_pillow
        images, errors = map_rows(batch["image"], errors_of(batch), kernel, Reason.RESIZE_FAILED)
        return with_errors(batch, errors, image=images)

    def _resize_pillow(self, image: np.ndarray) -> np.ndarray:
        height, width = shorter_side_size(image.shape[0], image.shape[1], self.params.shorter)
        if (height, width) == image.shape[:2]:
            return image
        size = (width, height)
        box = (0.0, 0.0, float(image.shape[1]), float(image.shape[0]))
        if self.params.crop is not None:
            size, box = self._crop_box(image.shape[0], image.shape[1], height, width)
        # Pillow resizes a box of the source with the filter of the whole resize: the pixels of resizing
        # everything and cropping, within 1 in under 5 % of values (fixed-point rounding; tested), without
        # making the rest.
        if (box[2] - box[0]) * (box[3] - box[1]) <= _PILLOW_BAND_PIXELS:
            out = self._pillow_box(image, size, box)
        elif self.params.interpolation == "nearest":
            out = _nearest(image, size, box)
        else:
            out = np.concatenate(list(self._pillow_bands(image, size, box)), axis=0)
        return out[:, :, None] if out.ndim == 2 else out

    def _pillow_box(self, source: np.ndarray, size: tuple[int, int], box: Box) -> np.ndarray:
        pil = Image.fromarray(source[:, :, 0] if source.shape[2] == 1 else source)
        return np.asarray(pil.resize(size, _PIL_FILTERS[self.params.interpolation], box=box))

    def _pillow_bands(self, image: np.ndarray, size: tuple[int, int], box: Box):  # type: ignore[no-untyped-def]
        """The resize of ``box`` to ``size``, band by band of output rows; each band hands Pillow only the
        source rows and columns its filter reads, so the result equals the one-piece resize (within the same
        fixed-point rounding; tested)."""
        (out_w, out_h), (left, top, right, bottom) = size, box
        scale_x, scale_y = (right - left) / out_w, (bottom - top) / out_h
        reach = _PIL_SUPPORT[self.params.interpolation]
        reach_x, reach_y = reach * max(scale_x, 1.0) + 2, reach * max(scale_y, 1.0) + 2
        col0, col1 = max(int(left - reach_x), 0), min(math.ceil(right + reach_x), image.shape[1])
        rows_per_band = max(1, int(_PILLOW_BAND_PIXELS / ((col1 - col0) * max(scale_y, 1.0))))
        for first in range(0, out_h, rows_per_band):
            last = min(first + rows_per_band, out_h)
            y0, y1 = top + first * scale_y, top + last * scale_y
            row0, row1 = max(int(y0 - reach_y), 0), min(math.ceil(y1 + reach_y), image.shape[0])
            piece = image[row0:row1, col0:col1]
            local = (left - col0, y0 - row0, min(right - col0, col1 - col0), min(y1 - row0, row1 - row0))
            yield self._pillow_box(piece, (out_w, last - first), local)

    def _crop_box(
        self, src_height: int, src_width: int, height: int, width: int
    ) -> tuple[tuple[int, int], tuple[float, float, float, float]]:
        """The output size and the source box (left, top, right, bottom) of the centre crop of the resize."""
        assert self.params.crop is not None
        crop_h, crop_w = min(self.params.crop[0], height), min(self.params.crop[1], width)
        top, left = (height - crop_h) // 2, (width - crop_w) // 2
        sy, sx = src_height / height, src_width / width
        return (crop_w, crop_h), (left * sx, top * sy, (left + crop_w) * sx, (top + crop_h) * sy)

    def _resize_opencv(self, image: np.ndarray) -> np.ndarray:
        height, width = shorter_side_size(image.shape[0], image.shape[1], self.params.shorter)
        if (height, width) == image.shape[:2]:
            return image
        crop = self.params.crop
        if crop is not None and height * width > _OPENCV_WHOLE_IMAGE_LIMIT * crop[0] * crop[1]:
            return self._resize_pillow(image)
        src = image
        if src.shape[0] > 2 * height and self.params.interpolation not in ("nearest", "area"):
            src = cv2.resize(src, (2 * width, 2 * height), interpolation=cv2.INTER_AREA)
        out = cv2.resize(src, (width, height), interpolation=_CV_FILTERS[self.params.interpolation])
        return out[:, :, None] if out.ndim == 2 else out


def _nearest(image: np.ndarray, size: tuple[int, int], box: Box) -> np.ndarray:
    """Pillow's nearest-neighbour resize of ``box``, taken by indexing, which copies only the output.

    The sample positions are Pillow's own (``ImagingScaleAffine``): offset + step / 2, then step added once per
    pixel, in doubles, truncated; a product instead of the running sum lands a few rows on the other side."""
    (out_w, out_h), (left, top, right, bottom) = size, box
    cols, rows = _running(left, (right - left) / out_w, out_w), _running(top, (bottom - top) / out_h, out_h)
    out = image[np.ix_(rows.clip(0, image.shape[0] - 1), cols.clip(0, image.shape[1] - 1))]
    return out[:, :, 0] if out.shape[2] == 1 else out


def _running(offset: float, step: float, count: int) -> np.ndarray:
    steps = np.full(count, step)
    steps[0] = offset + step * 0.5
    return np.cumsum(steps).astype(np.int64)  # cumsum adds in order, as the C loop does
