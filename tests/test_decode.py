"""decode on real photos and on the hazards real data sets contain; both back ends."""

from __future__ import annotations

import io
import struct

import cv2
import numpy as np
import pytest
from PIL import Image

import operators
from operators._rows import object_array
from operators.base import ERROR, OperatorSpec
from tests.bad_images import bad_inputs, odd_but_valid
from tests.conftest import encode

BACKENDS = ("pillow", "opencv")


def decode(data: list[bytes | None], **params: object) -> dict[str, np.ndarray]:
    op = operators.create(OperatorSpec(name="decode", params=params))
    return op({"bytes": object_array(data)})


@pytest.mark.parametrize("backend", BACKENDS)
def test_hazards_become_error_rows_with_reasons(backend: str, photos: dict[str, np.ndarray]) -> None:
    cases = bad_inputs(photos["coffee"])
    out = decode([data for data, _ in cases.values()] + [None], backend=backend)
    reasons = [e.split(":")[0] for e in out[ERROR]]
    assert reasons == [reason for _, reason in cases.values()] + ["empty"]
    assert all(image is None for image in out["image"])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("color", ["RGB", "L"])
def test_unusual_modes_and_containers_decode(backend: str, color: str, photos: dict[str, np.ndarray]) -> None:
    cases = odd_but_valid(photos["coffee"])
    out = decode(list(cases.values()), backend=backend, color=color)
    assert list(out[ERROR]) == [None] * len(cases)
    for name, image in zip(cases, out["image"], strict=True):
        assert image.dtype == np.uint8 and image.shape == (64, 96, 3 if color == "RGB" else 1), name


@pytest.mark.parametrize("backend", BACKENDS)
def test_encoded_images_over_the_byte_limit_are_refused(backend: str, photos: dict[str, np.ndarray]) -> None:
    """The limit holds for bytes from any source (a Parquet cell, an HTTP body), not only for files read."""
    data, small = encode(photos["coffee"], quality=90), encode(photos["coffee"][:64, :64].copy(), quality=90)
    out = decode([data, small], backend=backend, max_bytes=len(data) - 1)
    assert out[ERROR][0].startswith(f"file_too_large: {len(data)} bytes") and out[ERROR][1] is None


def test_alpha_is_composited_on_the_background(photos: dict[str, np.ndarray]) -> None:
    image = decode([odd_but_valid(photos["coffee"])["rgba.png"]], background=(255, 255, 255))["image"][0]
    assert (image[:, :40] == 255).all(), "fully transparent pixels must become the background, not black"


def test_sixteen_bit_keeps_its_range(photos: dict[str, np.ndarray]) -> None:
    gray = np.asarray(Image.fromarray(photos["coffee"]).resize((96, 64)).convert("L"))
    image = decode([odd_but_valid(photos["coffee"])["gray16.png"]], color="L")["image"][0][:, :, 0]
    np.testing.assert_array_equal(image, gray)  # v*257 >> 8 == v: no clipping at 255


def test_animation_gives_its_first_frame(photos: dict[str, np.ndarray]) -> None:
    first = decode([odd_but_valid(photos["coffee"])["animated.webp"]])["image"][0]
    still = np.asarray(Image.fromarray(photos["coffee"]).resize((96, 64)))
    assert np.abs(first.astype(int) - still.astype(int)).mean() < 8  # lossy WebP, but not the flipped frame


@pytest.mark.parametrize("backend", BACKENDS)
def test_exif_orientation_is_applied(backend: str, photos: dict[str, np.ndarray]) -> None:
    photo = Image.fromarray(photos["chelsea"])  # 451 wide, 300 high
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, to be shown rotated 90 degrees clockwise
    buffer = io.BytesIO()
    photo.save(buffer, "JPEG", quality=92, exif=exif)
    image = decode([buffer.getvalue()], backend=backend)["image"][0]
    assert image.shape[:2] == (451, 300)
    expected = np.asarray(photo.transpose(Image.Transpose.ROTATE_270))
    assert np.abs(image.astype(int) - expected.astype(int)).mean() < 4


def test_formats_outside_the_allow_list_are_refused(photos: dict[str, np.ndarray]) -> None:
    out = decode([encode(photos["coffee"], "BMP")], formats=("JPEG", "PNG"))
    assert out[ERROR][0].startswith("not_an_image")


@pytest.mark.parametrize("backend", BACKENDS)
def test_dct_downscaling_shrinks_large_jpegs_but_not_below_target(backend: str, photos: dict[str, np.ndarray]) -> None:
    big = np.asarray(Image.fromarray(photos["astronaut"]).resize((1024, 1024)))  # 512 -> 1024 px
    image = decode([encode(big, quality=92)], backend=backend, target_shorter=200)["image"][0]
    assert 200 <= min(image.shape[:2]) <= 512, image.shape  # 1/4 scale = 256 px; 1/8 would be under 200


def _independent(data: bytes) -> np.ndarray:
    """Pillow's own decoder, called directly: not the kernels ``decode`` routes JPEGs and PNGs through."""
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"))


def test_the_jpeg_kernel_matches_an_independent_decoder(photo_jpegs: dict[str, bytes]) -> None:
    """Both back ends send plain JPEGs through ``operators/_jpeg.py``; checked here against Pillow's decoder.

    Stated tolerance: mean absolute difference under 1.5 grey levels and the 99th percentile under 8 (libjpeg
    builds differ in IDCT and chroma upsampling), at full size (no DCT downscaling asked for).
    """
    data = list(photo_jpegs.values())
    for backend in BACKENDS:
        for name, ours, data_one in zip(photo_jpegs, decode(data, backend=backend)["image"], data, strict=True):
            theirs = _independent(data_one)
            assert ours.shape == theirs.shape, (backend, name)
            diff = np.abs(ours.astype(int) - theirs.astype(int))
            assert diff.mean() < 1.5 and np.percentile(diff, 99) < 8, (backend, name, diff.mean())


def test_the_png_path_is_lossless_against_an_independent_decoder(photos: dict[str, np.ndarray]) -> None:
    """PNGs go through libpng (OpenCV) for both back ends; PNG is lossless, so the pixels must be Pillow's."""
    data = [encode(photo, "PNG") for photo in photos.values()]
    for backend in BACKENDS:
        for name, ours, data_one in zip(photos, decode(data, backend=backend)["image"], data, strict=True):
            np.testing.assert_array_equal(ours, _independent(data_one), err_msg=f"{backend} {name}")


@pytest.mark.parametrize(("fmt", "options"), [("BMP", {}), ("WEBP", {"quality": 90}), ("WEBP", {"lossless": True})])
def test_back_ends_agree_where_they_decode_differently(
    fmt: str, options: dict[str, object], photos: dict[str, np.ndarray]
) -> None:
    """WebP and BMP are where the back ends really differ (OpenCV's decoders against Pillow's): the same pixels
    for lossless formats, and lossy WebP within a grey level on average (both wrap libwebp, maybe not one build)."""
    data = [encode(photo, fmt, **options) for photo in photos.values()]
    pillow, opencv = (decode(data, backend=backend)["image"] for backend in BACKENDS)
    lossless = fmt == "BMP" or options.get("lossless")
    for name, a, b in zip(photos, pillow, opencv, strict=True):
        assert a.shape == b.shape, name
        if lossless:
            np.testing.assert_array_equal(a, b, err_msg=name)
        else:
            diff = np.abs(a.astype(int) - b.astype(int))
            assert diff.mean() < 1.0 and np.percentile(diff, 99) < 6, (name, diff.mean())


def _damaged_corpus(photo: np.ndarray, fmt: str) -> dict[str, bytes]:
    """A real photo damaged as disks, networks and uploads damage files: truncated at many offsets, random bit
    flips, and for PNG a file whose only fault is a bad IDAT checksum (seeded: the same corpus every run)."""
    rng = np.random.default_rng(0)
    good = encode(photo, fmt)
    corpus = {f"{fmt} cut at {k}/13": good[: len(good) * k // 13] for k in range(1, 13)}
    for k in range(20):
        damaged = bytearray(good)
        for at in rng.integers(0, len(good), 3):
            damaged[at] ^= 1 << int(rng.integers(8))
        corpus[f"{fmt} flips {k}"] = bytes(damaged)
    if fmt == "PNG":
        idat = good.index(b"IDAT")
        crc_at = idat + 4 + int.from_bytes(good[idat - 4 : idat], "big")
        corpus["PNG bad IDAT checksum"] = good[:crc_at] + bytes(4) + good[crc_at + 4 :]
    return corpus


@pytest.mark.parametrize("fmt", ["WEBP", "BMP"])
def test_both_back_ends_give_the_same_verdict_on_damaged_files(fmt: str, photos: dict[str, np.ndarray]) -> None:
    """Where the back ends decode differently (OpenCV's WebP and BMP decoders against Pillow's): scored by both
    (with equal pixels), or refused by both with the same reason."""
    corpus = _damaged_corpus(photos["chelsea"], fmt)
    pillow, opencv = (decode(list(corpus.values()), backend=backend) for backend in BACKENDS)
    for i, name in enumerate(corpus):
        reasons = [None if out[ERROR][i] is None else out[ERROR][i].split(":")[0] for out in (pillow, opencv)]
        assert reasons[0] == reasons[1], (name, pillow[ERROR][i], opencv[ERROR][i])
        if reasons[0] is None:
            np.testing.assert_array_equal(pillow["image"][i], opencv["image"][i], err_msg=name)
    assert sum(e is not None for e in pillow[ERROR]) > 0, "the corpus must hold files that are refused"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_damaged_jpegs_and_pngs_are_refused_or_decoded_as_an_independent_decoder_does(
    fmt: str, backend: str, photos: dict[str, np.ndarray]
) -> None:
    """Both back ends share one kernel per format here, so they are checked against Pillow's own decoder instead
    of each other: a file cut short is refused as truncated; a file Pillow refuses is refused too; a file scored
    has Pillow's pixels (exactly for PNG, within the JPEG kernel test's tolerance for JPEG). The JPEG kernel is
    stricter than Pillow: it refuses damaged scans that Pillow fills with grey or garbage and only warns about."""
    corpus = _damaged_corpus(photos["chelsea"], fmt)
    out = decode(list(corpus.values()), backend=backend)
    stricter = 0
    for (name, data), error, ours in zip(corpus.items(), out[ERROR], out["image"], strict=True):
        try:
            theirs: np.ndarray | None = _independent(data)
        except OSError:
            theirs = None
        if " cut at " in name:
            assert error is not None and error.startswith("truncated"), (name, error)
        if theirs is None:
            assert error is not None, f"{name}: Pillow refuses it, {backend} scored it"
        elif error is None:
            assert ours.shape == theirs.shape, name
            diff = np.abs(ours.astype(int) - theirs.astype(int))
            if fmt == "PNG":
                np.testing.assert_array_equal(ours, theirs, err_msg=name)
            else:
                assert diff.mean() < 1.5 and np.percentile(diff, 99) < 8, (name, diff.mean())
        else:
            stricter += 1
    assert sum(e is not None for e in out[ERROR]) > len(corpus) // 3, "the corpus must hold files that are refused"
    if fmt == "JPEG":
        assert stricter > 0, "no damaged scan that Pillow decodes was refused: the strict kernel is not in use"
    else:  # Pillow does not check IDAT checksums; libpng does, and the path gives its reason
        assert out[ERROR][list(corpus).index("PNG bad IDAT checksum")].startswith("decode_failed: damaged PNG")


def _tiff_with(photo: np.ndarray, tag: int | None = None, value: int = 0, loop: bool = False) -> bytes:
    """A little-endian TIFF of ``photo``, with one IFD entry's value replaced, or its IFD pointing to itself."""
    tiff = bytearray(encode(photo, "TIFF"))
    ifd = struct.unpack_from("<I", tiff, 4)[0]
    entries = struct.unpack_from("<H", tiff, ifd)[0]
    for at in range(ifd + 2, ifd + 2 + 12 * entries, 12):
        if struct.unpack_from("<H", tiff, at)[0] == tag:
            struct.pack_into("<I", tiff, at + 8, value)
    if loop:
        struct.pack_into("<I", tiff, ifd + 2 + 12 * entries, ifd)
    return bytes(tiff)


def test_bogus_offsets_and_loops_end_with_one_verdict_in_both_back_ends(photos: dict[str, np.ndarray]) -> None:
    """Headers that point outside the file or back at themselves: no hang, no crash, the same answer."""
    small = photos["coffee"][:32, :48]
    bmp = bytearray(encode(small, "BMP"))
    struct.pack_into("<I", bmp, 10, 10_000_000)  # where the pixels start: far past the end
    corpus = {
        "BMP pixel offset past the end": bytes(bmp),
        "TIFF strip offset past the end": _tiff_with(small, tag=273, value=10_000_000),
        "TIFF IFD pointing to itself": _tiff_with(small, loop=True),
    }
    pillow, opencv = (decode(list(corpus.values()), backend=backend) for backend in BACKENDS)
    for i, name in enumerate(corpus):
        assert pillow[ERROR][i] == opencv[ERROR][i], (name, pillow[ERROR][i], opencv[ERROR][i])
    assert pillow[ERROR][0].startswith("truncated") and pillow[ERROR][1] is not None
    np.testing.assert_array_equal(pillow["image"][2], small)  # a loop after the first frame: that frame


def _png(image: Image.Image, **save: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG", **save)
    return buffer.getvalue()


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_shared_png_kernel_gives_pillows_pixels(backend: str, photos: dict[str, np.ndarray]) -> None:
    """Plain PNGs go through libpng in both back ends; lossless, so the pixels must be exactly Pillow's."""
    from operators import _imaging

    photo = Image.fromarray(photos["chelsea"])
    wide = np.asarray(photo).astype(np.uint16) * 257
    cases = {
        "rgb": _png(photo),
        "grey": _png(photo.convert("L")),
        "interlaced": _png(photo, optimize=False, interlace=1),
        "rgb 16-bit": encode_rgb16(wide),
        "grey 2-bit": _png(photo.convert("L"), bits=2),
    }
    for color in ("RGB", "L"):
        out = decode(list(cases.values()), backend=backend, color=color)
        for i, (name, data) in enumerate(cases.items()):
            assert out[ERROR][i] is None, (name, out[ERROR][i])
            expected = _imaging.to_array(Image.open(io.BytesIO(data)), color, (255, 255, 255))
            np.testing.assert_array_equal(out["image"][i], expected, err_msg=f"{name} as {color}")


def encode_rgb16(wide: np.ndarray) -> bytes:
    """A 16-bit-per-channel RGB PNG (Pillow cannot write one; OpenCV writes BGR order)."""
    ok, data = cv2.imencode(".png", np.ascontiguousarray(wide[:, :, ::-1]))
    assert ok
    return data.tobytes()


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_png_with_an_exif_orientation_is_turned_upright(backend: str, photos: dict[str, np.ndarray]) -> None:
    photo = Image.fromarray(photos["chelsea"])
    exif = Image.Exif()
    exif[0x0112] = 6
    image = decode([_png(photo, exif=exif)], backend=backend)["image"][0]
    np.testing.assert_array_equal(image, np.asarray(photo.transpose(Image.Transpose.ROTATE_270)))


def test_large_images_leave_pillow_in_strips_with_the_same_pixels(photos: dict[str, np.ndarray]) -> None:
    """Past a few megabytes the Pillow path copies rows out a strip at a time (one copy, not three)."""
    from operators import _imaging

    big = Image.fromarray(photos["astronaut"]).resize((3000, 2000))  # 18 MB: several strips
    for mode in ("RGB", "L"):
        image = big.convert(mode)
        expected = np.asarray(image)
        np.testing.assert_array_equal(_imaging._pixels(image).reshape(expected.shape), expected)
