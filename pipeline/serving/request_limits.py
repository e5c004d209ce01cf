"""What one request may ask of a replica: how many images, and how many pixels they hold together.

Each image is decoded at full size before it is cropped, so a request's memory and CPU grow with its pixels,
not its bytes: a 200 kB PNG can declare 50 megapixels. Both limits are checked from the images' headers (no
pixels decoded) before any work starts, and answered 413 with the figures.
"""

from __future__ import annotations

from collections.abc import Sequence

from common.errors import HttpError
from operators.decode import declared_pixels
from pipeline.serving.config import ServeConfig


def check_request_images(images: Sequence[bytes], config: ServeConfig) -> None:
    if len(images) > config.max_images_per_request:
        raise HttpError(
            413, f"the request holds {len(images)} images, over the limit of {config.max_images_per_request}"
        )
    pixels = sum(declared_pixels(image) for image in images)
    if pixels > config.max_pixels_per_request:
        raise HttpError(
            413,
            f"the request's images declare {pixels:,} pixels together, over the limit of "
            f"{config.max_pixels_per_request:,}; send them in several requests",
        )
