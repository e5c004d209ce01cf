"""resize on real photos and on aspect-ratio bombs: only the region the crop keeps is resized."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

import operators
from operators._rows import object_array
from operators.base import OperatorSpec

CROP = (224, 224)


def _resize(images: list[np.ndarray], **params: object) -> list[np.ndarray]:
    op = operators.create(OperatorSpec(name="resize", params={"shorter": 256, **params}))
    return list(op({"image": object_array(images)})["image"])


def _center(image: np.ndarray, height: int, width: int) -> np.ndarray:
    top, left = (image.shape[0] - height) // 2, (image.shape[1] - width) // 2
    return image[top : top + height, left : left + width]


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic", "lanczos", "area", "nearest"])
def test_pillow_crop_region_equals_resizing_everything_and_cropping(photos, interpolation: str) -> None:  # type: ignore[no-untyped-def]
    images = list(photos.values())
    whole = _resize(images, interpolation=interpolation)
    region = _resize(images, interpolation=interpolation, crop=CROP)
    for full, cropped in zip(whole, region, strict=True):
        difference = np.abs(cropped.astype(int) - _center(full, *CROP).astype(int))
        # Pillow's fixed-point filters round a few values the other way when they start inside the image.
        assert difference.max() <= 1 and (difference > 0).mean() < 0.05


def test_opencv_keeps_its_whole_image_resize_for_ordinary_photos(photos) -> None:  # type: ignore[no-untyped-def]
    images = list(photos.values())
    whole = _resize(images, backend="opencv", interpolation="bicubic")
    cropped = _resize(images, backend="opencv", interpolation="bicubic", crop=CROP)
    for full, out in zip(whole, cropped, strict=True):
        np.testing.assert_array_equal(out, full)  # unchanged: center_crop cuts it next


@pytest.mark.parametrize("backend", ["pillow", "opencv"])
@pytest.mark.parametrize("shape", [(1, 4000), (4000, 1), (300, 20_000), (3, 9_000)])
def test_aspect_ratio_bombs_resize_to_the_crop_not_to_gigabytes(backend: str, shape: tuple[int, int]) -> None:
    """Resized whole, a 1 x 4000 strip to a shorter side of 256 is 256 x 1,024,000 pixels; its crop is 224 x 224."""
    strip = np.random.default_rng(0).integers(0, 256, (*shape, 3), dtype=np.uint8)
    (out,) = _resize([strip], backend=backend, crop=CROP)
    assert out.shape == (*CROP, 3) and out.dtype == np.uint8


def test_an_85_byte_strip_png_is_scored_like_any_image(repository) -> None:  # type: ignore[no-untyped-def]
    """The probe of issue 9: a tiny file whose extreme shape passes the pixel limit; it is scored, with the
    work of one model input (it cost 2.5 GB and 2.6 s before)."""
    from pipeline.graph import build_graph

    buffer = io.BytesIO()
    Image.new("RGB", (4000, 1), (200, 30, 30)).save(buffer, "PNG")
    strip = buffer.getvalue()
    assert len(strip) < 200
    (row,) = build_graph("efficientnet-lite0", repository).run([strip]).to_pylist()
    assert row["error"] is None and row["label"], row


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic", "lanczos", "area", "nearest"])
@pytest.mark.parametrize("crop", [CROP, None])
def test_large_images_resize_in_bands_with_the_one_piece_pixels(photos, monkeypatch, interpolation, crop) -> None:  # type: ignore[no-untyped-def]
    """Bands of output rows, each reading only the source rows its filter needs, give the pixels of the
    one-piece resize (a smaller band limit here makes ordinary photos take several bands)."""
    from operators import resize

    images = [np.asarray(Image.fromarray(photos["astronaut"]).resize((1500, 1100)))] + list(photos.values())
    whole = _resize(images, interpolation=interpolation, crop=crop)
    monkeypatch.setattr(resize, "_PILLOW_BAND_PIXELS", 20_000)
    banded = _resize(images, interpolation=interpolation, crop=crop)
    for one, bands in zip(whole, banded, strict=True):
        assert one.shape == bands.shape
        difference = np.abs(one.astype(int) - bands.astype(int))
        assert difference.max() <= 1 and (difference > 0).mean() < 0.01, (difference.max(), (difference > 0).mean())
