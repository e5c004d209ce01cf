"""Pillow kernels shared by the decode back ends: header sniffing, limits and conversion to RGB or L.

Both back ends read the header with Pillow (cheap: no pixels decoded) so that the format allow-list and the
pixel limit are enforced identically before any decoder touches the data.
"""

from __future__ import annotations

import io
import struct
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps

from operators.base import RowError
from operators.reasons import Reason

# Modes that carry alpha (or a palette that may carry it): composited on a fixed background, never dropped,
# so a transparent PNG does not turn black where its alpha was 0.
_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}


@dataclass(frozen=True)
class Header:
    format: str
    width: int
    height: int
    mode: str
    frames: int
    has_transparency: bool


def open_image(data: bytes, formats: tuple[str, ...], max_pixels: int) -> Image.Image:
    """Open (header only) and check emptiness, format allow-list and pixel limit."""
    if not data:
        raise RowError(Reason.EMPTY, "zero bytes")
    try:
        with warnings.catch_warnings():
            # Our own pixel limit below is the check; Pillow's warning would only be noise (or, under
            # warnings-as-errors, a crash).
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=formats)
    except Image.DecompressionBombError as exc:
        raise RowError(Reason.TOO_MANY_PIXELS, str(exc)) from None
    except Image.UnidentifiedImageError:
        raise RowError(
            Reason.NOT_AN_IMAGE, f"not a decodable image in an allowed format ({', '.join(formats)})"
        ) from None
    if image.format == "PNG":
        _verify_png(data)
    width, height = image.size
    if width <= 0 or height <= 0:
        raise RowError(Reason.BAD_DIMENSIONS, f"declared size {width}x{height}")
    if width * height > max_pixels:
        raise RowError(
            Reason.TOO_MANY_PIXELS, f"{width}x{height} = {width * height} pixels is over the limit of {max_pixels}"
        )
    return image


def _verify_png(data: bytes) -> None:
    """Check every chunk's length and checksum (no pixels decoded: about 0.3 ms for a 220 kB file).

    zlib does not see a damaged IDAT checksum, so Pillow would score such a file and libpng (OpenCV) refuse
    it; both back ends refuse it here, before either decodes, with the same reason.
    """
    try:
        Image.open(io.BytesIO(data), formats=("PNG",)).verify()
    except (OSError, SyntaxError, ValueError, struct.error) as exc:
        message = str(exc)
        reason = Reason.TRUNCATED if "runcated" in message else Reason.DECODE_FAILED
        raise RowError(reason, f"damaged PNG: {message}") from None


def header(image: Image.Image) -> Header:
    return Header(
        format=image.format or "",
        width=image.size[0],
        height=image.size[1],
        mode=image.mode,
        frames=getattr(image, "n_frames", 1),
        has_transparency="transparency" in image.info,
    )


def orientation(image: Image.Image) -> int:
    """The EXIF orientation tag (1: as stored); a broken EXIF block leaves the image as stored, as Pillow does."""
    try:
        return int(image.getexif().get(0x0112, 1) or 1)
    except Exception:  # noqa: BLE001 - any damage to the EXIF block
        return 1


def dct_draft_size(width: int, height: int, target_shorter: int | None) -> tuple[int, int] | None:
    """The smallest size a JPEG may be DCT-downscaled to and still resize to ``target_shorter``.

    Only worth it when the image is at least twice the target: libjpeg then decodes at 1/2, 1/4 or 1/8
    scale, which is several times faster than decoding everything and throwing most of it away.
    """
    if target_shorter is None or min(width, height) < 2 * target_shorter:
        return None
    scale = target_shorter / min(width, height)
    return (max(1, int(np.ceil(width * scale))), max(1, int(np.ceil(height * scale))))


def to_array(image: Image.Image, color: str, background: tuple[int, int, int]) -> np.ndarray:
    """Load the (first frame of the) image, apply EXIF orientation, convert to HWC uint8 RGB or L."""
    try:
        image.load()
    except OSError as exc:
        message = str(exc)
        reason = Reason.TRUNCATED if "truncated" in message or "broken" in message else Reason.DECODE_FAILED
        raise RowError(reason, message) from None
    # In place: the default returns a full copy of an image that needs no turning.
    image = ImageOps.exif_transpose(image, in_place=True) or image
    mode = image.mode
    if mode.startswith("I;16") or mode in ("I", "F"):
        # 16-bit (or int/float) greyscale: Pillow's convert("L") clips at 255, so scale the range down instead.
        wide = np.asarray(image)
        if mode == "F":
            eight = np.clip(wide, 0, 255).astype(np.uint8)
        else:
            eight = (np.clip(wide.astype(np.int64), 0, 65535) >> 8).astype(np.uint8)
        image = Image.fromarray(eight, mode="L")
    elif (
        mode in _ALPHA_MODES
        or (mode == "P" and "transparency" in image.info)
        or (mode in ("L", "RGB") and "transparency" in image.info)
    ):
        rgba = image if image.mode == "RGBA" else image.convert("RGBA")
        # Pasting through the alpha channel onto an opaque canvas gives alpha_composite's pixels (tested
        # equal) with two full-size images fewer at the peak.
        canvas = Image.new("RGB", rgba.size, background)
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        image = canvas
    if image.mode != color:
        image = image.convert(color)
    return _pixels(image)


# Pillow's array export joins a list of row chunks into one bytes object: two full copies beside the image
# itself. Past this many bytes the rows are copied out a strip at a time into one array instead.
_STRIP_BYTES = 8_000_000


def _pixels(image: Image.Image) -> np.ndarray:
    """HWC uint8 pixels of an "RGB" or "L" image, holding one copy beside Pillow's."""
    width, height = image.size
    channels = len(image.getbands())
    if width * height * channels <= _STRIP_BYTES:
        array = np.asarray(image)
        return array[:, :, None] if array.ndim == 2 else array
    out = np.empty((height, width, channels), dtype=np.uint8)
    rows = max(1, _STRIP_BYTES // (width * channels))
    for top in range(0, height, rows):
        strip = np.asarray(image.crop((0, top, width, min(top + rows, height))))
        out[top : top + strip.shape[0]] = strip.reshape(strip.shape[0], width, channels)
    return out
