"""The model repository: versions, id validation, manifest checks against the ONNX graph, URI roots."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from common.errors import ConfigError, ModelLoadError, ModelNotFoundError
from pipeline.models.ref import ModelRef
from pipeline.models.repository import ModelRepository
from tests.conftest import MODELS_DIR, copy_digits


def _edit_manifest(folder: Path, **changes: object) -> None:
    manifest = json.loads((folder / "manifest.json").read_text())
    for dotted, value in changes.items():
        node = manifest
        *parents, leaf = dotted.split("__")
        for key in parents:
            node = node[key]
        node[leaf] = value
    (folder / "manifest.json").write_text(json.dumps(manifest))


def test_shipped_models_load_and_match_their_manifests(repository: ModelRepository) -> None:
    assert {"digits", "efficientnet-lite0"} <= set(repository.names())
    lite0 = repository.load("efficientnet-lite0")
    assert len(lite0.labels) == 1000 and lite0.labels[967] == "espresso"
    assert repository.load("digits:1").manifest.input.color == "L"


def test_latest_version_is_numeric_not_lexical(tmp_path: Path) -> None:
    for version in ("2", "10", "9"):
        copy_digits(tmp_path, version)
    repository = ModelRepository(str(tmp_path))
    assert repository.versions("digits") == ["2", "9", "10"]
    assert repository.load("digits").version == "10"


@pytest.mark.parametrize("ref", ["../digits", "digits/1", "digits:../../etc", "..", "a b", ".hidden", "digits:1/2"])
def test_model_ids_cannot_escape_the_repository(ref: str) -> None:
    with pytest.raises(ConfigError, match="invalid model"):
        ModelRef.parse(ref)


def test_unknown_model_and_version_name_what_exists(repository: ModelRepository) -> None:
    with pytest.raises(ModelNotFoundError, match="digits"):
        repository.load("resnet-9000")
    with pytest.raises(ModelNotFoundError, match="versions: 1"):
        repository.load("digits:7")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"input__name": "pixels"}, "manifest input 'pixels' is not in the ONNX graph"),
        ({"input__height": 16, "input__width": 16, "preprocess__resize_shorter": 16}, "needs 16 at axis 2"),
        ({"input__color": "RGB", "preprocess__mean": [0, 0, 0], "preprocess__std": [1, 1, 1]}, "needs 3 at axis 1"),
        ({"output__name": "probs"}, "manifest output 'probs'"),
        ({"version": "3"}, "says digits:3"),
        ({"preprocess__std": [0.0]}, "std must be positive"),
    ],
)
def test_mismatches_fail_at_load_naming_them(tmp_path: Path, change: dict, message: str) -> None:
    _edit_manifest(copy_digits(tmp_path), **change)
    with pytest.raises(ModelLoadError, match=message):
        ModelRepository(str(tmp_path)).load("digits")


def test_label_count_must_match_the_output(tmp_path: Path) -> None:
    folder = copy_digits(tmp_path)
    (folder / "labels.txt").write_text("zero\none\n")
    with pytest.raises(ModelLoadError, match="10 classes but labels file has 2"):
        ModelRepository(str(tmp_path)).load("digits")


def test_repository_root_may_be_a_uri(tmp_path: Path) -> None:
    copy_digits(tmp_path)
    for root in (f"file://{tmp_path}", str(tmp_path)):
        model = ModelRepository(root).load("digits")
        assert model.name == "digits" and model.model_uri.endswith("digits/1/model.onnx")


def test_fsspec_only_schemes_work_through_the_same_interface() -> None:
    """fsspec's in-memory filesystem is a real implementation (not a mock) of a non-pyarrow scheme."""
    import fsspec

    memory = fsspec.filesystem("memory")
    for path in (p for p in (MODELS_DIR / "digits" / "1").iterdir() if p.is_file()):
        memory.pipe(f"/repo/digits/1/{path.name}", path.read_bytes())
    model = ModelRepository("memory://repo").load("digits")
    assert model.model_uri == "memory://repo/digits/1/model.onnx"
    from operators.infer import read_model_bytes

    assert read_model_bytes(model.model_uri) == (MODELS_DIR / "digits" / "1" / "model.onnx").read_bytes()


def test_a_reused_listing_still_finds_a_version_added_since(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The gateway reuses folder listings for a second; a version asked for by name is looked for afresh."""
    shutil.copytree(Path(MODELS_DIR) / "digits", tmp_path / "digits")
    repository = ModelRepository(str(tmp_path), listing_ttl_s=3600)
    assert repository.resolve_version("digits", None) == "1"
    shutil.copytree(tmp_path / "digits" / "1", tmp_path / "digits" / "2")
    assert repository.resolve_version("digits", None) == "1"  # the reused listing: "latest" is as it was
    assert repository.resolve_version("digits", "2") == "2"  # named: found at once
    assert repository.resolve_version("digits", None) == "2"  # and the listing is fresh again
