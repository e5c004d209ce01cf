"""``streamscore models quantize``: static INT8 versions of the bundled models, calibrated through their own
preprocessing, checked for accuracy on held-out data (speed is the benchmark's business, not a test's)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from common.errors import ConfigError
from jobs.model_commands import DEMO_IMAGES
from pipeline.graph import graph_for_model
from pipeline.models.quantize import quantize_model
from pipeline.models.ref import ModelRef
from pipeline.models.repository import ModelRepository
from pipeline.options import ScoringOptions
from tests.conftest import MODELS_DIR, REPO


@pytest.fixture
def repository_copy(tmp_path: Path) -> Path:
    root = tmp_path / "models"
    for name in ("digits", "efficientnet-lite0", "efficientnet-lite0-embed"):
        shutil.copytree(MODELS_DIR / name, root / name)
    return root


def _accuracy(repository: ModelRepository, ref: str, files: list[tuple[Path, int]]) -> float:
    table = graph_for_model(repository.load(ref), ScoringOptions()).run([p.read_bytes() for p, _ in files])
    return float(
        np.mean(
            [label == str(truth) for label, (_, truth) in zip(table.column("label").to_pylist(), files, strict=True)]
        )
    )


def test_digits_int8_keeps_held_out_accuracy_within_a_point(repository_copy: Path, digit_files) -> None:  # type: ignore[no-untyped-def]
    done = subprocess.run(
        [sys.executable, "-m", "jobs.cli", "models", "quantize", "digits:1", "--models-dir", str(repository_copy)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "wrote digits:2 (static INT8 of version 1)" in done.stdout and "calibrated on 100 images" in done.stdout
    repository = ModelRepository(str(repository_copy))
    quantized = repository.load("digits:2").manifest.quantization
    assert quantized is not None and quantized.source_version == "1" and quantized.calibration_images == 100
    assert quantized.calibration_sources == (str(repository_copy / "digits" / "1" / "calibration"),)
    fp32, int8 = _accuracy(repository, "digits:1", digit_files), _accuracy(repository, "digits:2", digit_files)
    assert fp32 >= 0.95 and int8 >= fp32 - 0.01, (fp32, int8)  # 450 held-out digits, none used to calibrate


def test_efficientnet_int8_agrees_with_fp32_on_real_photos(repository_copy: Path, tmp_path: Path, photo_jpegs) -> None:  # type: ignore[no-untyped-def]
    held_out = tmp_path / "photos"
    held_out.mkdir()
    for name, data in photo_jpegs.items():  # scikit-image's photos at full size: not the demo files calibrated on
        (held_out / f"{name}.jpg").write_bytes(data)
    report = quantize_model(
        repository_copy, ModelRef.parse("efficientnet-lite0:1"), [DEMO_IMAGES], evaluation=[held_out]
    )
    assert report.calibration_images == 4  # the demo folder's truncated JPEG is left out, not calibrated on
    c = report.comparison
    assert c.images == len(photo_jpegs) and c.top1_agreement == 1.0 and c.top5_hits == 1.0, c
    assert report.sizes_mb[1] < 0.35 * report.sizes_mb[0]
    int8 = graph_for_model(ModelRepository(str(repository_copy)).load("efficientnet-lite0:2"), ScoringOptions())
    assert int8.run([photo_jpegs["coffee"]]).column("label")[0].as_py() == "espresso"
    with pytest.raises(ConfigError, match="already quantized"):
        quantize_model(repository_copy, ModelRef.parse("efficientnet-lite0:2"), [DEMO_IMAGES])


def test_embedding_int8_stays_close_to_fp32(repository_copy: Path, photo_jpegs, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    held_out = tmp_path / "photos"
    held_out.mkdir()
    for name, data in photo_jpegs.items():
        (held_out / f"{name}.jpg").write_bytes(data)
    report = quantize_model(
        repository_copy, ModelRef.parse("efficientnet-lite0-embed"), [DEMO_IMAGES], evaluation=[held_out]
    )
    c = report.comparison
    assert c.top1_agreement is None and c.cosine_min is not None and c.cosine_min > 0.9, c
    assert "cosine(fp32, int8)" in report.render()
