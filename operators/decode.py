"""decode: encoded image bytes -> HWC uint8 arrays (ragged), RGB or L, with every hazard turned into a row error.

Two back ends behind one interface. ``pillow`` handles everything on the allow-list. ``opencv`` is a fast
path for plain 8-bit RGB/L WebP and BMP; any other image (alpha, palette, CMYK, 16-bit, animation, TIFF, an
EXIF orientation) goes through the Pillow kernel, so both back ends mean the same thing. Plain JPEGs and PNGs,
the bulk of real data, go through kernels shared by both: JPEGs through ``operators/_jpeg.py`` (libjpeg-turbo,
strict about damaged scans), PNGs through libpng (OpenCV): 15 % faster than Pillow and without Pillow's own
4-byte-per-pixel image beside the array (a 49 MP PNG peaked at 687 MB through Pillow, 297 MB through libpng:
the array and the one copy OpenCV's Python binding makes of it). Lossless: the pixels are Pillow's (tested).
Both read the header with Pillow first: format allow-list and pixel limit are checked before decoding.
"""

from __future__ import annotations

import io
from typing import Literal

import cv2
import numpy as np
from PIL import Image
from pydantic import Field

from operators import _imaging
from operators._jpeg import NotForTurboJpeg, decode_jpeg
from operators._registry import register
from operators._rows import errors_of, map_rows, with_errors
from operators.base import ERROR_COLUMN, Backend, Batch, Column, Operator, Params, RowError
from operators.reasons import Reason

DEFAULT_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
_OPENCV_FORMATS = {"JPEG", "PNG", "WEBP", "BMP"}
# A damaged file is a row error with a reason; OpenCV's own "[ERROR] imdecode_ ..." lines on the console would
# only repeat it, once per file.
cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
_JPEG_SOS, _JPEG_EOI = b"\xff\xda", b"\xff\xd9"


class DecodeParams(Params):
    backend: Backend = "pillow"
    color: Literal["RGB", "L"] = "RGB"
    formats: tuple[str, ...] = DEFAULT_FORMATS
    # 50 MP covers 8K frames; a decompression bomb (tiny file, huge canvas) is refused before decoding.
    max_pixels: int = Field(default=50_000_000, gt=0)
    # The shorter side the next resize will produce; enables JPEG DCT-domain downscaling when far smaller.
    target_shorter: int | None = Field(default=None, gt=0)
    background: tuple[int, int, int] = (255, 255, 255)
    # Encoded images over this many bytes are refused (file_too_large), whatever brought them: a file, a
    # Parquet cell or an HTTP body. None: no limit here (read_bytes already bounds what it reads).
    max_bytes: int | None = Field(default=None, gt=0)


@register("decode")
class Decode(Operator):
    """Decode the ``bytes`` column into the ragged ``image`` column."""

    Params = DecodeParams
    reads = (Column("bytes", "bytes"),)
    writes = (Column("image", "uint8", ("N", "H", "W", "C"), ragged=True), ERROR_COLUMN)
    drops = ("bytes",)
    params: DecodeParams

    def __call__(self, batch: Batch) -> Batch:
        images, errors = map_rows(batch["bytes"], errors_of(batch), self._decode, Reason.DECODE_FAILED)
        return with_errors(batch, errors, self.drops, image=images)

    def _open(self, data: bytes | None):  # type: ignore[no-untyped-def]
        if data is None:
            raise RowError(Reason.EMPTY, "no image bytes (null)")
        if self.params.max_bytes is not None and len(data) > self.params.max_bytes:
            raise RowError(Reason.FILE_TOO_LARGE, f"{len(data)} bytes, over the {self.params.max_bytes}-byte limit")
        return _imaging.open_image(bytes(data), self.params.formats, self.params.max_pixels)

    def _decode(self, data: bytes | None) -> np.ndarray:
        image = self._open(data)
        raw = bytes(data)  # type: ignore[arg-type]  # _open refused None
        if image.format == "JPEG" and image.mode in ("RGB", "L"):
            return self._decode_jpeg(raw, image)  # both back ends: the shared strict kernel
        if image.format == "PNG" or (self.params.backend == "opencv" and image.format in _OPENCV_FORMATS):
            return self._decode_opencv(raw, image)
        return _imaging.to_array(image, self.params.color, self.params.background)

    def _decode_opencv(self, raw: bytes, image: Image.Image) -> np.ndarray:
        head = _imaging.header(image)
        # Colour to grey goes to Pillow too: OpenCV's weights round differently from Pillow's convert("L").
        plain = head.mode == self.params.color and head.frames == 1 and not head.has_transparency
        # Pillow reads a PNG's EXIF by decoding the whole image (the chunk may follow the pixels), so a PNG
        # that has one at all goes to Pillow, which turns it upright.
        oriented = b"eXIf" in raw if head.format == "PNG" else _imaging.orientation(image) != 1
        if not plain or oriented:
            return _imaging.to_array(image, self.params.color, self.params.background)
        flags = cv2.IMREAD_COLOR_RGB if self.params.color == "RGB" else cv2.IMREAD_GRAYSCALE
        decoded = cv2.imdecode(np.frombuffer(raw, dtype=np.uint8), flags | cv2.IMREAD_IGNORE_ORIENTATION)
        if decoded is None:
            # Pillow gives the verdict (and its reason) for what OpenCV refuses, so the back ends agree.
            return _imaging.to_array(image, self.params.color, self.params.background)
        return decoded[:, :, None] if decoded.ndim == 2 else decoded

    def _decode_jpeg(self, raw: bytes, image: Image.Image) -> np.ndarray:
        """Plain RGB/L JPEGs, for both back ends: the shared strict kernel (``operators/_jpeg.py``)."""
        last_scan = raw.rfind(_JPEG_SOS)
        # libjpeg fills a truncated scan with grey and only warns; a complete JPEG ends its last scan with EOI
        # (0xFFD9 cannot occur inside entropy-coded data, where 0xFF is byte-stuffed).
        if last_scan < 0 or raw.find(_JPEG_EOI, last_scan) < 0:
            raise RowError(Reason.TRUNCATED, "JPEG data ends before its end-of-image marker")
        draft = _imaging.dct_draft_size(image.width, image.height, self.params.target_shorter)
        try:
            return decode_jpeg(raw, image.mode, self.params.color, draft, _imaging.orientation(image))
        except NotForTurboJpeg:
            if draft is not None:
                image.draft(image.mode, draft)
            return _imaging.to_array(image, self.params.color, self.params.background)


def declared_pixels(data: bytes) -> int:
    """Width x height as the image's header declares it (no pixels decoded); 0 when it is not an image, or one
    Pillow will not even open (a decompression bomb, which decode refuses per image)."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            return int(image.size[0]) * int(image.size[1])
    except Exception:  # noqa: BLE001 - not an image: decode gives its reason later
        return 0
