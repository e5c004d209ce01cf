"""Hazardous inputs, made from real photos: each is a kind of file seen in the wild that must not crash a run."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image


def _save(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG whose header declares ``width`` x ``height`` (checksums valid) over a few bytes of pixels: a
    decompression bomb's calling card when large, a broken encoder's when zero. (Written here rather than taken
    from ``benchmarks/``: the tests must not break with the benchmark scripts.)"""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = chunk(b"IDAT", zlib.compress(b"\x00" * 64))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + idat + chunk(b"IEND", b"")


def bad_inputs(photo: np.ndarray) -> dict[str, tuple[bytes, str]]:
    """name -> (bytes, expected error reason)."""
    jpeg = _save(Image.fromarray(photo), "JPEG", quality=90)
    return {
        "empty.jpg": (b"", "empty"),
        "truncated.jpg": (jpeg[: len(jpeg) // 2], "truncated"),
        "text.jpg": (b"this is not an image at all, just text\n" * 10, "not_an_image"),
        "bomb.png": (png_declaring(100_000, 100_000), "too_many_pixels"),
        "huge-declared.png": (png_declaring(60_000, 1_000), "too_many_pixels"),
    }


def odd_but_valid(photo: np.ndarray) -> dict[str, bytes]:
    """Valid images in unusual modes and containers: each must decode to RGB/L, never fail."""
    small = Image.fromarray(photo).resize((96, 64))
    rgba = small.convert("RGBA")
    alpha = np.zeros((64, 96), dtype=np.uint8)
    alpha[:, 48:] = 255
    rgba.putalpha(Image.fromarray(alpha))
    palette = small.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    palette.info["transparency"] = 0
    frames = [small, small.transpose(Image.Transpose.FLIP_LEFT_RIGHT), small.rotate(90)]
    sixteen = (np.asarray(small.convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
    return {
        "cmyk.jpg": _save(small.convert("CMYK"), "JPEG", quality=90),
        "gray16.png": _save(Image.fromarray(sixteen), "PNG"),
        "rgba.png": _save(rgba, "PNG"),
        "palette-transparent.png": _save(palette, "PNG", transparency=0),
        "animated.gif": _save(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0),
        "animated.webp": _save(frames[0], "WEBP", save_all=True, append_images=frames[1:], duration=50),
        "gray.png": _save(small.convert("L"), "PNG"),
        "photo.bmp": _save(small, "BMP"),
        "photo.tiff": _save(small, "TIFF"),
    }
