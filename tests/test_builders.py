"""The one registry of model builders, and a builder run as a user runs it (``python -m builders``)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from common.errors import ConfigError
from tests.conftest import REPO


def test_every_shipped_and_benchmark_model_has_one_builder() -> None:
    import builders

    shipped = {p.name for p in (REPO / "models").iterdir() if p.is_dir()}
    assert shipped == {"digits", "efficientnet-lite0", "efficientnet-lite0-embed"}
    assert set(builders.builder_names()) == shipped | {"mobilenetv2-shaped", "resnet50-shaped"}
    with pytest.raises(ConfigError, match="no builder for model 'resnet-9000'; known: digits, efficientnet-lite0"):
        builders.builder("resnet-9000")
    with pytest.raises(ConfigError, match="taken by builders.zoo.build_resnet50"):
        builders.register_builder("resnet50-shaped")(lambda repository, version: repository)


def test_python_m_builders_writes_a_version_the_repository_loads(tmp_path: Path) -> None:
    from pipeline.models.repository import ModelRepository

    done = subprocess.run(
        [sys.executable, "-m", "builders", "mobilenetv2-shaped", "--models-dir", str(tmp_path), "--version", "3"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"wrote {tmp_path / 'mobilenetv2-shaped' / '3'}"
    model = ModelRepository(str(tmp_path)).load("mobilenetv2-shaped")  # checks the graph against the manifest
    assert (model.version, len(model.labels)) == ("3", 1000)
