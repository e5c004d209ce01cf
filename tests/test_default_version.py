"""One meaning of ``NAME``: the model's default version, promoted atomically, the same for every command.

Each path that resolves ``NAME`` is run for real here: the repository, ``models promote|list|add`` as
subprocesses, ``score`` and ``nightly`` as subprocesses (the local executor), and the Serve app's deploy-time
pin. The digits model is copied under several versions with different weights, so the version a command
used shows in its answers, not only in a field it reports.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable

from common.errors import ConfigError, ModelLoadError, ModelNotFoundError
from pipeline.models.default_version import DEFAULT_FILE, read_default, write_default
from pipeline.models.ref import ModelRef
from pipeline.models.repository import ModelRepository
from tests.conftest import MODELS_DIR, REPO, copy_digits
from tests.processes import clean_env


def _repository(root: Path, *versions: str) -> ModelRepository:
    for version in versions:
        copy_digits(root, version)
    return ModelRepository(str(root))


def _cli(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "jobs.cli", *args],
        cwd=cwd,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=180,
    )


def test_without_a_default_name_means_the_highest_numeric_version_not_a_named_one(tmp_path: Path) -> None:
    repository = _repository(tmp_path, "1", "exp", "10", "9")
    assert repository.versions("digits") == ["1", "9", "10", "exp"]
    assert repository.resolve_version("digits", None) == "10"  # "exp" sorts last but is never chosen by it
    assert repository.load("digits").version == "10"


def test_a_promoted_version_wins_over_higher_numbers_and_names_keep_working(tmp_path: Path) -> None:
    repository = _repository(tmp_path, "1", "2", "exp")
    promoted = repository.promote(ModelRef.parse("digits:exp"))
    assert promoted.version == "exp" and repository.default_version("digits") == "exp"
    assert repository.resolve_version("digits", None) == "exp"
    assert repository.resolve_version("digits", "2") == "2"  # an explicit version always wins
    repository.promote(ModelRef.parse("digits:1"))
    assert ModelRepository(str(tmp_path)).load("digits").version == "1"  # a fresh reader sees the new pointer
    assert "_default.json" not in repository.versions("digits")  # the pointer is never a version


def test_only_named_versions_need_a_default(tmp_path: Path) -> None:
    repository = _repository(tmp_path, "exp")
    assert repository.resolve_version("digits", None) == "exp"  # the only version: nothing else it could mean
    copy_digits(tmp_path, "canary")
    with pytest.raises(ModelNotFoundError, match="no default version.*models promote digits:VERSION"):
        repository.resolve_version("digits", None)


def test_promote_refuses_what_would_break_name(tmp_path: Path) -> None:
    repository = _repository(tmp_path, "1", "2")
    with pytest.raises(ModelNotFoundError, match="no version '7'"):
        repository.promote(ModelRef.parse("digits:7"))
    with pytest.raises(ConfigError, match="names a version"):
        repository.promote(ModelRef.parse("digits"))
    (tmp_path / "digits" / "2" / "model.onnx").write_bytes(b"not an onnx graph")
    with pytest.raises(ModelLoadError):
        repository.promote(ModelRef.parse("digits:2"))  # a version that does not load never becomes the default
    assert repository.default_version("digits") is None and not (tmp_path / "digits" / DEFAULT_FILE).exists()


def test_a_default_whose_folder_is_gone_is_an_error_naming_the_fix(tmp_path: Path) -> None:
    repository = _repository(tmp_path, "1", "2")
    repository.promote(ModelRef.parse("digits:2"))
    shutil.rmtree(tmp_path / "digits" / "2")
    with pytest.raises(ModelNotFoundError, match="default version '2' is not in the repository.*promote"):
        repository.resolve_version("digits", None)


def test_a_damaged_pointer_is_refused_not_guessed(tmp_path: Path) -> None:
    repository = _repository(tmp_path, "1")
    (tmp_path / "digits" / DEFAULT_FILE).write_text('{"version": "../../etc"')
    with pytest.raises(ModelLoadError, match="invalid default-version file"):
        repository.resolve_version("digits", None)


def test_promote_works_through_a_uri_root(tmp_path: Path) -> None:
    """Any pyarrow filesystem: here the local one reached by a ``file://`` URI, as a cluster config names it."""
    _repository(tmp_path, "1", "2")
    repository = ModelRepository(f"file://{tmp_path}")
    repository.promote(ModelRef.parse("digits:1"))
    assert ModelRepository(str(tmp_path)).resolve_version("digits", None) == "1"


def test_readers_see_the_old_pointer_or_the_new_never_a_torn_one(tmp_path: Path) -> None:
    """The pointer is replaced by a rename: a reader racing 200 promotions never sees a partial file."""
    _repository(tmp_path, "1", "2")
    fs, folder = ModelRepository(str(tmp_path))._fs, str(tmp_path / "digits")
    write_default(fs, folder, "1")
    seen: set[str | None] = set()
    failures: list[BaseException] = []
    done = threading.Event()

    def read_forever() -> None:
        while not done.is_set():
            try:
                seen.add(read_default(fs, folder))
            except BaseException as exc:  # noqa: BLE001 - any failure to read is what this test looks for
                failures.append(exc)
                return

    reader = threading.Thread(target=read_forever)
    reader.start()
    try:
        for i in range(200):
            write_default(fs, folder, "2" if i % 2 == 0 else "1")
    finally:
        done.set()
        reader.join(timeout=30)
    assert failures == [] and seen <= {"1", "2"} and seen, (failures, seen)
    assert sorted(p.name for p in (tmp_path / "digits").iterdir()) == ["1", "2", DEFAULT_FILE]  # no temp left


def test_the_listing_cache_holds_the_default_as_long_as_the_versions(tmp_path: Path) -> None:
    _repository(tmp_path, "1", "2")
    cached = ModelRepository(str(tmp_path), listing_ttl_s=3600)
    assert cached.resolve_version("digits", None) == "2"
    ModelRepository(str(tmp_path)).promote(ModelRef.parse("digits:1"))
    assert cached.resolve_version("digits", None) == "2"  # reused, as a listing is
    assert cached.default_version("digits", fresh=True) == "1"
    assert cached.resolve_version("digits", None) == "1"


def test_cli_promote_and_list_mark_the_default(tmp_path: Path) -> None:
    _repository(tmp_path, "1", "2")
    listed = _cli("models", "list", "--models-dir", str(tmp_path))
    assert listed.returncode == 0, listed.stderr
    assert "  digits: versions 1, 2* (none promoted: the highest numeric version)" in listed.stdout.splitlines()
    promoted = _cli("models", "promote", "digits:1", "--models-dir", str(tmp_path))
    assert promoted.returncode == 0, promoted.stderr
    assert promoted.stdout.strip() == "digits now means digits:1 (was 2)"
    listed = _cli("models", "list", "--models-dir", str(tmp_path))
    assert "  digits: versions 1*, 2 (promoted)" in listed.stdout.splitlines(), listed.stdout
    missing = _cli("models", "promote", "digits:5", "--models-dir", str(tmp_path))
    assert missing.returncode == 2 and "no version '5'" in missing.stderr


def test_add_keeps_what_name_means_unless_promote(tmp_path: Path) -> None:
    """The issue's case: versions ``1, exp``; ``add`` writes ``2`` and NAME keeps meaning what it meant."""
    repository = _repository(tmp_path, "1", "exp")
    assert repository.resolve_version("digits", None) == "1"
    onnx = str(MODELS_DIR / "digits" / "1" / "model.onnx")
    labels = str(MODELS_DIR / "digits" / "1" / "labels.txt")
    added = _cli("models", "add", "digits", onnx, "--preset", "unit", "--labels", labels, "--models-dir", str(tmp_path))
    assert added.returncode == 0, added.stderr
    assert added.stdout.startswith("added digits:2 to ")
    assert repository.versions("digits") == ["1", "2", "exp"]
    assert repository.resolve_version("digits", None) == "1" and repository.default_version("digits") == "1"
    promoted = _cli(
        "models",
        "add",
        "digits",
        onnx,
        "--preset",
        "unit",
        "--labels",
        labels,
        "--promote",
        "--models-dir",
        str(tmp_path),
    )
    assert promoted.returncode == 0, promoted.stderr
    assert "added digits:3 to" in promoted.stdout and "as its default" in promoted.stdout
    assert repository.resolve_version("digits", None) == "3"


def _set_up_two_versions_that_answer_differently(root: Path) -> None:
    """digits:1 as shipped and digits:2 whose labels are renamed, so each answer shows its version."""
    _repository(root, "1", "2")
    labels = root / "digits" / "2" / "labels.txt"
    labels.write_text("".join(f"v2-{line}\n" for line in labels.read_text().split()))
    ModelRepository(str(root)).promote(ModelRef.parse("digits:1"))


def test_score_and_nightly_score_the_default_not_the_highest(tmp_path: Path, digit_files) -> None:  # type: ignore[no-untyped-def]
    models, images = tmp_path / "models", tmp_path / "images"
    _set_up_two_versions_that_answer_differently(models)
    images.mkdir()
    for path, _ in digit_files[:6]:
        shutil.copy(path, images / path.name)
    common = ("--model", "digits", "--models-dir", str(models), "--executor", "local")
    scored = _cli("score", str(images), str(tmp_path / "out"), *common)
    assert scored.returncode == 0, scored.stderr
    rows = pq.read_table(tmp_path / "out").to_pylist()
    assert len(rows) == 6 and {(r["model_version"], r["label"].startswith("v2-")) for r in rows} == {("1", False)}

    night = _cli("nightly", str(images), str(tmp_path / "scores.delta"), *common)
    assert night.returncode == 0, night.stderr
    table = DeltaTable(str(tmp_path / "scores.delta")).to_pyarrow_dataset().to_table().to_pylist()
    assert len(table) == 6 and {r["model_version"] for r in table} == {"1"}


def test_serve_pins_the_default_at_deploy(tmp_path: Path) -> None:
    from pipeline.serving.app import routing_with_defaults_pinned
    from pipeline.serving.config import ServeConfig

    _set_up_two_versions_that_answer_differently(tmp_path)
    routing = routing_with_defaults_pinned(ServeConfig(models_dir=str(tmp_path)))
    assert routing["digits"].versions() == {"1"}


def test_a_damaged_pointer_is_listed_and_mended_by_promote(tmp_path: Path) -> None:
    _repository(tmp_path, "1", "2")
    (tmp_path / "digits" / DEFAULT_FILE).write_text("")
    listed = _cli("models", "list", "--models-dir", str(tmp_path))
    assert listed.returncode == 0, listed.stderr
    assert any(line.startswith("  digits: versions 1, 2 (no default: invalid") for line in listed.stdout.splitlines())
    mended = _cli("models", "promote", "digits:2", "--models-dir", str(tmp_path))
    assert mended.returncode == 0 and mended.stdout.strip() == "digits now means digits:2", mended.stderr
    assert ModelRepository(str(tmp_path)).resolve_version("digits", None) == "2"


def test_pinning_what_name_means_never_overwrites_a_promotion(tmp_path: Path) -> None:
    """``add`` pins the current meaning only where no pointer exists when its write lands: a ``promote`` that
    came first wins (the race the pin would otherwise lose)."""
    repository = _repository(tmp_path, "1", "2", "3")
    repository.promote(ModelRef.parse("digits:1"))
    assert repository.pin_default(ModelRef.parse("digits:3")) is False
    assert repository.default_version("digits", fresh=True) == "1"
    (tmp_path / "digits" / DEFAULT_FILE).unlink()
    assert repository.pin_default(ModelRef.parse("digits:3")) is True
    assert ModelRepository(str(tmp_path)).resolve_version("digits", None) == "3"


def test_serve_deploys_with_a_model_that_has_no_default(tmp_path: Path) -> None:
    """A model with several named versions and none promoted is served by version only; the others deploy."""
    from pipeline.serving.app import routing_with_defaults_pinned
    from pipeline.serving.config import ServeConfig

    _repository(tmp_path, "1")
    for version in ("exp", "canary"):
        target = tmp_path / "other" / version
        shutil.copytree(MODELS_DIR / "digits" / "1", target, ignore=shutil.ignore_patterns("calibration"))
        manifest = json.loads((target / "manifest.json").read_text())
        (target / "manifest.json").write_text(json.dumps(manifest | {"name": "other", "version": version}))
    routing = routing_with_defaults_pinned(ServeConfig(models_dir=str(tmp_path)))
    assert set(routing) == {"digits"} and routing["digits"].versions() == {"1"}


def test_quantize_keeps_what_name_means_unless_promote(tmp_path: Path) -> None:
    """A quantized version is scored only when asked for, or once promoted (else nightly would re-score all)."""
    repository = _repository(tmp_path, "1")
    calibration = MODELS_DIR / "digits" / "1" / "calibration"
    common = ("--calibration", str(calibration), "--images", "20", "--models-dir", str(tmp_path))
    quiet = _cli("models", "quantize", "digits:1", *common)
    assert quiet.returncode == 0, quiet.stderr
    assert repository.versions("digits") == ["1", "2"] and repository.resolve_version("digits", None) == "1"
    loud = _cli("models", "quantize", "digits:1", "--promote", *common)
    assert loud.returncode == 0, loud.stderr
    assert repository.resolve_version("digits", None) == "3"
