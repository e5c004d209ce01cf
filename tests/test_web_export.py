"""``streamscore models export-web``: the exported page in headless Chromium (Debian's ``chromium``, driven by
Playwright with ``executable_path``; nothing is downloaded), served over real HTTP from 127.0.0.1. On real
photos (EXIF-rotated among them) the browser's top-5 must equal the batch job's, the page must request nothing
off its origin, and a person's upload must show bars."""

from __future__ import annotations

import functools
import http.server
import io
import json
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from jobs.model_commands import DEMO_IMAGES
from pipeline.graph import build_graph
from pipeline.models.repository import ModelRepository
from pipeline.models.web_export import default_runtime_dist
from tests.conftest import MODELS_DIR, REPO

MODEL = "efficientnet-lite0"
# Measured: the page's top-5 equals the batch job's, scores within 3e-5 (2e-7 for most: the same pixels, Pillow's
# resampling reproduced, libjpeg-turbo on both sides), except for JPEGs the batch job decodes at reduced DCT scale
# (shorter side >= twice the resize: operators._imaging.dct_draft_size), which a browser cannot: there the top-1
# is the same and its score differs by up to 0.021 (the top-5 may swap near-ties).
SCORE_TOLERANCE = 1e-4
DRAFTED_TOLERANCE = 0.03


def _photos(folder: Path) -> list[Path]:
    """Real photos: the demo JPEGs, scikit-image's and scikit-learn's, one PNG, and one JPEG stored on its side
    with EXIF orientation 6 (both the batch job and the browser turn it upright)."""
    from skimage import data
    from sklearn.datasets import load_sample_images

    folder.mkdir()
    for demo in sorted(DEMO_IMAGES.glob("*.jpg")):
        if "truncated" not in demo.name:
            shutil.copy(demo, folder / demo.name)
    arrays = {"cat": data.chelsea(), "hubble": data.hubble_deep_field(), "camera": data.camera()}
    arrays |= dict(zip(("china", "flower"), load_sample_images().images, strict=True))
    for name, array in arrays.items():
        Image.fromarray(array).save(folder / f"{name}.jpg", quality=90)
    Image.fromarray(data.coffee()).save(folder / "coffee.png")
    sideways = Image.fromarray(np.rot90(data.chelsea()).copy())
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    buffer = io.BytesIO()
    sideways.save(buffer, "JPEG", quality=90, exif=exif.tobytes())
    (folder / "sideways.jpg").write_bytes(buffer.getvalue())
    return sorted(folder.iterdir())


def _drafted(photo: Path) -> bool:
    from operators._imaging import dct_draft_size

    if photo.suffix != ".jpg":
        return False
    with Image.open(photo) as image:
        return dct_draft_size(image.width, image.height, 256) is not None


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """The exported page (by the command, as a user runs it) served over HTTP; yields (base URL, folder)."""
    folder = tmp_path_factory.mktemp("site")
    done = subprocess.run(
        [sys.executable, "-m", "jobs.cli", "models", "export-web", MODEL, str(folder / "page")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "with onnxruntime-web 1.31.1" in done.stdout and "model.onnx" in done.stdout
    _photos(folder / "page" / "photos")
    handler = functools.partial(QuietHandler, directory=str(folder / "page"))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", folder / "page"
    server.shutdown()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        pass


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium")
    assert chromium, "Debian's chromium is not installed (apt-get install chromium): .ci/run installs it"
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        yield launched
        launched.close()


def test_the_browser_answers_what_the_batch_job_answers_and_asks_nothing_off_its_origin(site, browser) -> None:  # type: ignore[no-untyped-def]
    base, folder = site
    photos = sorted((folder / "photos").iterdir())
    page = browser.new_page()  # type: ignore[attr-defined]
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    page.goto(f"{base}/index.html")
    in_browser = page.evaluate(
        "async (names) => { const out = []; for (const n of names) out.push(await streamscore.classify(n)); "
        "return out; }",
        [f"photos/{p.name}" for p in photos],
    )
    graph = build_graph(MODEL, ModelRepository(str(MODELS_DIR)))
    batch = graph.run([p.read_bytes() for p in photos]).to_pylist()
    drafted = []
    for photo, ours, theirs in zip(photos, in_browser, batch, strict=True):
        assert ours[0]["label"] == theirs["top_k"][0]["label"], (photo.name, ours, theirs["top_k"])
        if _drafted(photo):  # the batch job decoded it at reduced DCT scale; the browser cannot
            drafted.append(photo.name)
            assert abs(ours[0]["score"] - theirs["top_k"][0]["score"]) < DRAFTED_TOLERANCE, (photo.name, ours)
            continue
        assert [t["label"] for t in ours] == [t["label"] for t in theirs["top_k"]], photo.name
        np.testing.assert_allclose(
            [t["score"] for t in ours], [t["score"] for t in theirs["top_k"]], atol=SCORE_TOLERANCE, err_msg=photo.name
        )
    assert sorted(drafted) == ["astronaut.jpg", "camera.jpg", "hubble.jpg"]  # the others are held to 1e-4
    assert [t["label"] for t in batch[[p.name for p in photos].index("sideways.jpg")]["top_k"]][0] in (
        "tabby",
        "tiger cat",
        "Egyptian cat",
    )  # turned upright, or it would not be a cat
    assert requested and all(url.startswith(base + "/") for url in requested), sorted(set(requested))
    page.close()


def test_a_person_picks_images_and_sees_five_bars_each(site, browser) -> None:  # type: ignore[no-untyped-def]
    base, folder = site
    photos = [folder / "photos" / "coffee.jpg", folder / "photos" / "rocket.jpg"]
    page = browser.new_page()  # type: ignore[attr-defined]
    page.goto(f"{base}/index.html")
    page.set_input_files("#pick", [str(p) for p in photos])
    page.wait_for_function("document.querySelectorAll('.result').length === 2", timeout=60_000)
    rows = page.eval_on_selector_all(
        ".result",
        "rows => rows.map(r => [r.querySelector('strong').textContent, r.querySelectorAll('.bar').length, "
        "r.querySelector('.bar .name').textContent])",
    )
    assert sorted(r[0] for r in rows) == ["coffee.jpg", "rocket.jpg"]
    assert all(r[1] == 5 for r in rows)
    assert any(r[2].startswith("espresso ") for r in rows), rows
    (folder / "screenshot.png").write_bytes(page.screenshot(full_page=True))
    page.close()


def test_export_refuses_what_the_page_cannot_show_and_names_the_missing_runtime(tmp_path: Path) -> None:
    from common.errors import ConfigError
    from pipeline.models.ref import ModelRef
    from pipeline.models.web_export import export_web

    with pytest.raises(ConfigError, match="embedding model"):
        export_web(str(MODELS_DIR), ModelRef.parse("efficientnet-lite0-embed"), tmp_path / "a", default_runtime_dist())
    with pytest.raises(ConfigError, match="npm ci"):
        export_web(str(MODELS_DIR), ModelRef.parse(MODEL), tmp_path / "b", tmp_path / "no-dist")
    assert json.loads((default_runtime_dist().parent / "package.json").read_text())["version"] == "1.31.1"
