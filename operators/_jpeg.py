"""The JPEG kernel both decode back ends share: libjpeg-turbo through simplejpeg, strict about damage.

libjpeg recovers from a damaged scan with a warning and hands back an image whose damaged blocks are grey or
garbage. Pillow hides those warnings (and refuses some of the same files), OpenCV prints them on stderr and
scores the image, so the two back ends used to disagree. simplejpeg's strict mode turns each warning into an
exception carrying libjpeg's message, which becomes the row's reason; the same code runs for both back ends.

One warning is common on sound files: a few stray bytes before the end marker (some cameras and encoders
write them; ImageNet has such files). Up to ``STRAY_BYTES_TOLERATED`` of them are accepted. Files that libjpeg
itself handles but TurboJPEG's header reader does not (unusual chroma subsampling) go to Pillow.
"""

from __future__ import annotations

import re

import numpy as np
import simplejpeg
from PIL import Image

from operators.base import RowError
from operators.reasons import Reason

STRAY_BYTES_TOLERATED = 16
_STRAY = re.compile(r"Corrupt JPEG data: (\d+) extraneous bytes before marker 0xd9")
_DAMAGE = ("Corrupt JPEG data", "Premature end", "Bogus", "Invalid JPEG", "Unsupported marker", "Huffman")

# EXIF orientation -> the Pillow transpose that shows the image upright (as ImageOps.exif_transpose does).
_UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


class NotForTurboJpeg(Exception):
    """The file is not damaged, but TurboJPEG cannot read it: the caller decodes it with Pillow."""


def decode_jpeg(data: bytes, mode: str, color: str, draft: tuple[int, int] | None, orientation: int) -> np.ndarray:
    """HWC uint8 ``color`` pixels of a JPEG in Pillow ``mode`` "RGB" or "L", DCT-downscaled to no less than
    ``draft`` (width, height), turned upright by the EXIF ``orientation``."""
    colorspace = "GRAY" if mode == "L" else "RGB"
    min_width, min_height = draft or (0, 0)
    try:
        pixels = _decode(data, colorspace, min_width, min_height, strict=True)
    except ValueError as exc:
        message = str(exc)
        stray = _STRAY.search(message)
        if stray and int(stray.group(1)) <= STRAY_BYTES_TOLERATED:
            pixels = _decode(data, colorspace, min_width, min_height, strict=False)
        elif message.startswith("Premature end of JPEG file"):
            raise RowError(Reason.TRUNCATED, f"JPEG data ends early: {message}") from None
        elif any(sign in message for sign in _DAMAGE):
            raise RowError(Reason.DECODE_FAILED, f"damaged JPEG: {message}") from None
        else:
            raise NotForTurboJpeg(message) from None
    if orientation in _UPRIGHT or (color == "L") != (colorspace == "GRAY"):
        image = Image.fromarray(pixels[:, :, 0] if colorspace == "GRAY" else pixels)
        if orientation in _UPRIGHT:
            image = image.transpose(_UPRIGHT[orientation])
        if image.mode != color:
            image = image.convert(color)  # Pillow's own RGB <-> L, as the Pillow path always did
        pixels = np.asarray(image)
    return pixels[:, :, None] if pixels.ndim == 2 else pixels


def _decode(data: bytes, colorspace: str, min_width: int, min_height: int, *, strict: bool) -> np.ndarray:
    return simplejpeg.decode_jpeg(
        data, colorspace=colorspace, min_width=min_width, min_height=min_height, strict=strict
    )
