"""Hazardous inputs, made from real photos: each is a kind of file seen in the wild that must not crash a run."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from benchmarks.bombs import png_with_declared_size


def _save(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def bad_inputs(photo: np.ndarray) -> dict[str, tuple[bytes, str]]:
    """name -> (bytes, expected error reason)."""
    jpeg = _save(Image.fromarray(photo), "JPEG", quality=90)
    return {
        "empty.jpg": (b"", "empty"),
        "truncated.jpg": (jpeg[: len(jpeg) // 2], "truncated"),
        "text.jpg": (b"this is not an image at all, just text\n" * 10, "not_an_image"),
        "bomb.png": (png_with_declared_size(100_000, 100_000), "too_many_pixels"),
        "huge-declared.png": (png_with_declared_size(60_000, 1_000), "too_many_pixels"),
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
