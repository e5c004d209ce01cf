"""The row error reasons of the README's table, from real files through the real graph and the CLI.

``file_too_large`` comes from a file (``read_bytes``) and from a Parquet cell (``decode``). Three reasons of the
table cannot come from any input today, and the tests below pin why, so that a change that makes them
reachable (or a real file that reaches them) is seen:

- ``bad_dimensions`` (a zero size): Pillow refuses a zero or negative size while opening any format we allow
  ("not identified by this driver"), so such a file is ``not_an_image``; an absurd size is ``too_many_pixels``.
- ``crop_failed``: the manifest refuses ``resize_shorter`` below the input size, and decode converts every image
  to the manifest's colour, so every resized image holds the crop.
- ``resize_failed``: raised only when Pillow or OpenCV raise on an image that decoded; no size or aspect ratio
  does (swept below, both back ends, a model whose shorter side equals its crop included).
"""

from __future__ import annotations

import io
import json
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from jobs.exit_codes import ExitCode
from operators._rows import object_array
from operators.base import ERROR
from pipeline.graph import Stage, build_graph
from pipeline.models.repository import ModelRepository
from pipeline.options import ScoringOptions
from tests.bad_images import png_declaring
from tests.conftest import MODELS_DIR, REPO
from tests.processes import clean_env

LIMIT = 4_000  # bytes: the digits are under 1 kB, the noise PNG over 12 kB


def _encoded(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


def _zero_sized() -> dict[str, bytes]:
    """Files whose header declares a zero width or height, each otherwise well formed."""
    gif = bytearray(_encoded(Image.new("L", (4, 4)), "GIF"))
    gif[6:8] = struct.pack("<H", 0)  # logical screen width
    frame = gif.index(b"\x2c")  # image descriptor: left, top, width, height
    gif[frame + 5 : frame + 7] = struct.pack("<H", 0)
    bmp = bytearray(_encoded(Image.new("RGB", (4, 4)), "BMP"))
    bmp[18:22] = struct.pack("<i", 0)  # BITMAPINFOHEADER width
    jpeg = bytearray(_encoded(Image.new("RGB", (16, 16), (9, 9, 9)), "JPEG"))
    sof = jpeg.index(b"\xff\xc0")
    jpeg[sof + 5 : sof + 7] = b"\x00\x00"  # SOF0 height
    return {
        "zero-width.png": png_declaring(0, 10),
        "zero-height.png": png_declaring(10, 0),
        "zero-width.gif": bytes(gif),
        "zero-width.bmp": bytes(bmp),
        "zero-height.jpg": bytes(jpeg),
    }


def _score(source: Path, out: Path) -> dict[str, str | None]:
    command = [sys.executable, "-m", "jobs.cli", "score", str(source), str(out), "--model", "digits"]
    options = ["--executor", "local", "--processes", "1", "--max-file-bytes", str(LIMIT)]
    done = subprocess.run([*command, *options], cwd=REPO, env=clean_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == ExitCode.OK, done.stderr
    return {row["id"]: row["error"] for row in pq.read_table(out).to_pylist()}


@pytest.mark.parametrize("kind", ["folder", "parquet"])
def test_file_too_large_and_zero_sizes_from_real_files(digit_files, tmp_path: Path, kind: str) -> None:  # type: ignore[no-untyped-def]
    noise = np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8)
    files = {path.name: path.read_bytes() for path, _ in digit_files[:2]}
    files |= {"large.png": _encoded(Image.fromarray(noise), "PNG"), **_zero_sized()}
    assert len(files["large.png"]) > LIMIT > max(len(files[path.name]) for path, _ in digit_files[:2])
    source = tmp_path / "input"
    source.mkdir()
    if kind == "folder":
        for name, data in files.items():
            (source / name).write_bytes(data)
    else:
        table = pa.table({"id": list(files), "image": pa.array(list(files.values()), pa.binary())})
        pq.write_table(table, source / "part-0.parquet")

    errors = _score(source, tmp_path / "out")
    assert sorted(errors) == sorted(files)
    assert [errors[path.name] for path, _ in digit_files[:2]] == [None, None]
    large = errors["large.png"]
    if kind == "folder":  # read_bytes stops reading one byte past the limit
        assert large == f"file_too_large: over the {LIMIT}-byte limit"
    else:  # the cell is already in memory: decode refuses it before opening it
        assert large == f"file_too_large: {len(files['large.png'])} bytes, over the {LIMIT}-byte limit"
    for name in _zero_sized():
        assert (errors[name] or "").startswith("not_an_image: "), (name, errors[name])


def test_an_absurd_declared_size_is_refused_before_decoding(repository) -> None:  # type: ignore[no-untyped-def]
    graph = build_graph("digits", repository)
    table = graph.run([png_declaring(2**31 - 1, 2**31 - 1), png_declaring(60_000, 1_000)])
    assert [e.split(":")[0] for e in table.column("error").to_pylist()] == ["too_many_pixels"] * 2


def test_a_manifest_whose_crop_would_not_fit_is_refused(tmp_path: Path) -> None:
    """What keeps ``crop_failed`` out of reach: resize_shorter below the input size is refused at load."""
    from common.errors import ModelLoadError

    shutil.copytree(MODELS_DIR / "digits" / "1", tmp_path / "digits" / "1")
    manifest_path = tmp_path / "digits" / "1" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["preprocess"]["resize_shorter"] = 7  # the input is 8x8
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(ModelLoadError, match="resize_shorter=7 is smaller than the 8x8 input"):
        ModelRepository(str(tmp_path)).load("digits")


# (height, width): strips, near-squares, sizes whose float box lands an ulp past the edge (225 = 224 * 225/224).
SHAPES = [(1, 1), (1, 4000), (4000, 1), (2, 3), (7, 9), (29, 30), (225, 300), (300, 225), (223, 224), (224, 224)]
SHAPES += [(255, 257), (256, 256), (999, 1000), (1080, 1920), (3000, 17)]


@pytest.fixture(scope="module")
def preprocess_stages(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Stage]:
    """The preprocessing half of the real graph of: digits (shorter side 8 = its 8x8 crop, area), EfficientNet-Lite0
    (256 -> 224, bicubic), and EfficientNet-Lite0 as the ``unit`` preset makes it (224 = its crop, bilinear)."""
    root = tmp_path_factory.mktemp("models")
    shutil.copytree(MODELS_DIR / "efficientnet-lite0" / "1", root / "unit-crop" / "1")
    manifest_path = root / "unit-crop" / "1" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["name"], manifest["preprocess"]["resize_shorter"] = "unit-crop", 224
    manifest["preprocess"]["interpolation"] = "bilinear"
    manifest_path.write_text(json.dumps(manifest))
    stages = {}
    for backend in ("pillow", "opencv"):
        options = ScoringOptions(decode_backend=backend, resize_backend=backend)
        for model, where in [("digits", MODELS_DIR), ("efficientnet-lite0", MODELS_DIR), ("unit-crop", root)]:
            graph = build_graph(model, ModelRepository(str(where)), options)
            stages[f"{model}/{backend}"] = Stage(preprocess=graph.preprocess)
    return stages


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_no_image_size_fails_to_resize_or_crop(preprocess_stages: dict[str, Stage], shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(sum(shape))
    rgb = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
    files = [_encoded(Image.fromarray(rgb), "PNG"), _encoded(Image.fromarray(rgb[:, :, 0]), "PNG")]
    if min(shape) >= 8:
        files.append(_encoded(Image.fromarray(rgb), "JPEG"))
    for name, stage in preprocess_stages.items():
        out = stage({"id": object_array([str(i) for i in range(len(files))]), "bytes": object_array(files)})
        assert list(out[ERROR]) == [None] * len(files), (name, list(out[ERROR]))
        crop = 8 if name.startswith("digits") else 224
        assert out["pixels"].shape[:3] == (len(files), crop, crop), name
