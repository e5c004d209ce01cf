"""Benchmark images: ImageNet-sized JPEGs made from the real photos that scikit-image bundles.

Why not random noise: JPEG decode cost depends on content (noise compresses badly and decodes slowly), and
resize cost on size, so benchmark inputs should look like the photos a user scores: shorter side 375-500
pixels, aspect between 3:4 and 4:3, quality 85-95, as in the ImageNet validation set. Every image comes from
random crops, flips and resizes of a real photo, so the set is varied but needs no download.

Deterministic: image ``i`` depends only on ``(seed, i)``, so a folder of 400 images is the first 400 of a
folder of 1000. Idempotent: images already on disk are kept, so repeated benchmark runs reuse them.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

SHORTER_SIDE_PX = (375, 500)
ASPECT = (3 / 4, 4 / 3)
JPEG_QUALITY = (85, 95)
# The RGB photographs skimage 0.26 ships with the wheel (the others need pooch and a download, are greyscale,
# or are synthetic like colorwheel; ``cat`` is ``chelsea`` again).
_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "retina")


@functools.cache
def _sources() -> tuple[np.ndarray, ...]:
    """The source photos as HxWx3 uint8 arrays, loaded once per process."""
    from skimage import data

    photos = [getattr(data, name)() for name in _PHOTOS]
    left, right, _ = data.stereo_motorcycle()
    return tuple(np.ascontiguousarray(p[..., :3]) for p in [*photos, left, right])


def _make_image(seed: int, index: int) -> tuple[np.ndarray, int]:
    """Return image ``index`` of the set (HxWx3 uint8) and the JPEG quality to save it with."""
    from PIL import Image

    rng = np.random.default_rng([seed, index])
    sources = _sources()
    source = sources[rng.integers(len(sources))]
    h, w = source.shape[:2]
    aspect = float(np.exp(rng.uniform(np.log(ASPECT[0]), np.log(ASPECT[1]))))  # width / height
    # The largest crop of this aspect that fits, scaled down by up to half, at a random position.
    crop_h = min(h, int(w / aspect))
    crop_w = min(w, int(crop_h * aspect))
    crop_h = int(crop_w / aspect)
    fraction = rng.uniform(0.5, 1.0)
    crop_h, crop_w = max(32, int(crop_h * fraction)), max(32, int(crop_w * fraction))
    top = int(rng.integers(0, h - crop_h + 1))
    left = int(rng.integers(0, w - crop_w + 1))
    crop = Image.fromarray(source[top : top + crop_h, left : left + crop_w])
    if rng.random() < 0.5:
        crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    shorter = int(rng.integers(SHORTER_SIDE_PX[0], SHORTER_SIDE_PX[1] + 1))
    if crop_h <= crop_w:
        size = (round(shorter * crop_w / crop_h), shorter)
    else:
        size = (shorter, round(shorter * crop_h / crop_w))
    resample = [Image.Resampling.BILINEAR, Image.Resampling.BICUBIC, Image.Resampling.LANCZOS][rng.integers(3)]
    image = np.asarray(crop.resize(size, resample))
    quality = int(rng.integers(JPEG_QUALITY[0], JPEG_QUALITY[1] + 1))
    return image, quality


def make_benchmark_images(folder: Path, n: int, seed: int = 0, first: int = 0) -> list[Path]:
    """Write ``n`` ImageNet-sized JPEGs into ``folder`` (keeping any already there) and return their paths;
    ``first``: only images from that index on are written (so several processes can each write a range).

    Files are ``img_000000.jpg`` ... in order; each is written to a temporary name and renamed, so an
    interrupted run never leaves a truncated JPEG that a later run would mistake for a finished one.
    """
    from PIL import Image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"img_{i:06d}.jpg" for i in range(n)]
    for index, path in enumerate(paths):
        if index < first or path.exists():
            continue
        pixels, quality = _make_image(seed, index)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        Image.fromarray(pixels).save(tmp, format="JPEG", quality=quality)
        tmp.replace(path)
    return paths


def write_parquet_of_images(images: Sequence[Path], path: Path, rows_per_group: int = 64) -> Path:
    """Write the JPEG files as a Parquet table (``id``: string, the file stem; ``image``: binary, the bytes).

    This is the "images already in a table" input that batch jobs often get. Row groups of
    ``rows_per_group`` images (~6 MB) keep readers' memory bounded. An existing file with the same ids is
    kept.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    ids = [Path(p).stem for p in images]
    if path.exists() and pq.read_table(path, columns=["id"]).column("id").to_pylist() == ids:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.table(
        {
            "id": pa.array(ids, pa.string()),
            "image": pa.array([Path(p).read_bytes() for p in images], pa.binary()),
        }
    )
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    pq.write_table(table, tmp, row_group_size=rows_per_group)
    tmp.replace(path)
    return path
