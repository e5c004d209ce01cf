"""The Ray Data pipeline on a real 2-CPU local Ray instance, real files, real ONNX Runtime sessions."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from common.errors import ErrorBudgetExceeded, InputError
from pipeline.graph import build_graph
from pipeline.options import ScoringOptions
from pipeline.runs._isolation import start_journal
from pipeline.runs.planner import ResourceOverrides, plan_resources
from pipeline.runs.ray_data import preprocessed_dataset, run_batch, source_dataset
from pipeline.runs.sources import detect_source
from tests.bad_images import bad_inputs

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory, digit_files, photos) -> Path:  # type: ignore[no-untyped-def]
    """Held-out digits in nested folders, hazardous files, aspect-ratio bombs (tiny files that a whole-image
    resize to the shorter side would blow up to gigabytes), a hidden file and a non-image file."""
    root = tmp_path_factory.mktemp("images")
    for i, (path, _) in enumerate(digit_files[:120]):
        sub = root / f"part{i % 3}"
        sub.mkdir(exist_ok=True)
        shutil.copy(path, sub / path.name)
    for name, (data, _) in bad_inputs(photos["coffee"]).items():
        (root / name).write_bytes(data)
    Image.fromarray(np.full((1, 4000), 200, dtype=np.uint8)).save(root / "strip-4000x1.png")
    Image.fromarray(np.tile(photos["coffee"][:300], (1, 34, 1))[:, :20000]).save(root / "panorama-20000x300.png")
    (root / ".hidden.png").write_bytes(digit_files[0][0].read_bytes())
    (root / "notes.txt").write_text("not an image, skipped by extension")
    return root


def _read(folder: Path) -> pa.Table:
    return pq.read_table(folder).sort_by("id")


def _run(graph, source, out: Path, cluster, **overrides):  # type: ignore[no-untyped-def]
    plan = plan_resources(cluster, ResourceOverrides(**overrides))
    return run_batch(graph, source, str(out), plan, overwrite=True)


def test_every_row_comes_out_as_prediction_or_error(ray_cluster, repository, image_folder, digit_files, tmp_path):  # type: ignore[no-untyped-def]
    graph = build_graph("digits", repository, read_files=True)
    source = detect_source(str(image_folder))
    summary = _run(graph, source, tmp_path / "out", ray_cluster)
    table = _read(tmp_path / "out")
    assert table.num_rows == summary.rows == 127 == source.table.num_rows  # 120 digits, 5 hazards, 2 strips
    assert ".hidden.png" not in table.column("id").to_pylist() and "notes.txt" not in table.column("id").to_pylist()
    assert summary.errors_by_reason == {"empty": 1, "truncated": 1, "not_an_image": 1, "too_many_pixels": 2}
    rows = {r["id"]: r for r in table.to_pylist()}
    assert rows["strip-4000x1.png"]["label"] is not None and rows["panorama-20000x300.png"]["label"] is not None
    assert rows["part1/" + digit_files[1][0].name]["model"] == "digits"
    truth = {f"part{i % 3}/{p.name}": str(label) for i, (p, label) in enumerate(digit_files[:120])}
    accuracy = np.mean([rows[k]["label"] == v for k, v in truth.items()])
    assert accuracy >= 0.95
    for name in bad_inputs(np.zeros((2, 2, 3), np.uint8)):
        assert rows[name]["label"] is None and rows[name]["top_k"] is None and rows[name]["error"]


def test_layouts_and_in_process_graph_agree(ray_cluster, repository, photo_jpegs, tmp_path):  # type: ignore[no-untyped-def]
    folder = tmp_path / "photos"
    folder.mkdir()
    for name, data in photo_jpegs.items():
        (folder / f"{name}.jpg").write_bytes(data)
    options = ScoringOptions(raw_outputs=True)
    graph = build_graph("efficientnet-lite0", repository, options, read_files=True)
    source = detect_source(str(folder))
    reference = build_graph("efficientnet-lite0", repository, options).run(
        list(photo_jpegs.values()), [f"{n}.jpg" for n in photo_jpegs]
    )
    reference = reference.sort_by("id")
    expected = np.stack(reference.column("raw_output").to_numpy(zero_copy_only=False))
    for layout, batch_size in (("fused", 4), ("split", 1), ("split", 3)):
        _run(graph, source, tmp_path / layout, ray_cluster, layout=layout, batch_size=batch_size)
        table = _read(tmp_path / layout)
        got = np.stack(table.column("raw_output").to_numpy(zero_copy_only=False))
        np.testing.assert_allclose(got, expected, atol=1e-4, err_msg=f"{layout}, batch {batch_size}")
        assert table.column("label").to_pylist() == reference.column("label").to_pylist()


def test_pixels_cross_as_uint8_arrow_tensors(ray_cluster, repository, digit_files) -> None:  # type: ignore[no-untyped-def]
    from ray.data.extensions import ArrowTensorTypeV2

    graph = build_graph("digits", repository, read_files=True)
    source = detect_source(str(digit_files[0][0].parent))
    plan = plan_resources(ray_cluster, ResourceOverrides(layout="split"))
    dataset, rename = source_dataset(source, plan)
    block = preprocessed_dataset(dataset, graph, plan, rename, start_journal()).take_batch(8, batch_format="pyarrow")
    pixels = block.schema.field("pixels").type
    assert isinstance(pixels, ArrowTensorTypeV2) and pixels.shape == (8, 8, 1) and pixels.value_type == pa.uint8()
    assert set(block.schema.names) == {"id", "pixels", "error"}  # no encoded bytes, no Python objects


def test_parquet_glob_and_uri_list_inputs(ray_cluster, repository, digit_files, tmp_path) -> None:  # type: ignore[no-untyped-def]
    chosen = digit_files[:40]
    graph_bytes = build_graph("digits", repository)
    graph_files = build_graph("digits", repository, read_files=True)
    data = [p.read_bytes() for p, _ in chosen] + [None, b"junk"]
    ids = [p.name for p, _ in chosen] + ["null-row", "junk-row"]
    pq.write_table(pa.table({"key": ids, "jpeg": pa.array(data, pa.binary())}), tmp_path / "input.parquet")
    parquet = detect_source(str(tmp_path / "input.parquet"), id_column="key", bytes_column="jpeg")
    summary = _run(graph_bytes, parquet, tmp_path / "from-parquet", ray_cluster)
    by_parquet = _read(tmp_path / "from-parquet")
    assert by_parquet.num_rows == 42 and summary.errors_by_reason == {"empty": 1, "not_an_image": 1}

    listing = tmp_path / "uris.txt"
    listing.write_text("# one per line\n" + "\n".join(f"file://{p}" for p, _ in chosen) + "\n/no/such/file.png\n")
    summary = _run(graph_files, detect_source(str(listing)), tmp_path / "from-uris", ray_cluster)
    assert summary.rows == 41 and summary.errors_by_reason == {"read_failed": 1}

    folder = chosen[0][0].parent
    glob_source = detect_source(f"{folder}/0*_label[0-4].png")
    expected = sorted(p.name for p in folder.glob("0*_label[0-4].png"))
    assert glob_source.table.column("id").to_pylist() == expected
    _run(graph_files, glob_source, tmp_path / "from-glob", ray_cluster)
    labels = {r["id"]: r["label"] for r in by_parquet.to_pylist()}
    for row in _read(tmp_path / "from-glob").to_pylist():
        if row["id"] in labels:
            assert row["label"] == labels[row["id"]]


def test_error_budget_fails_the_run_but_keeps_every_row(ray_cluster, repository, photos, tmp_path) -> None:  # type: ignore[no-untyped-def]
    folder = tmp_path / "mostly-bad"
    folder.mkdir()
    for name, (data, _) in bad_inputs(photos["coffee"]).items():
        (folder / name).write_bytes(data)
    (folder / "fine.png").write_bytes(__import__("tests.conftest", fromlist=["encode"]).encode(photos["coffee"], "PNG"))
    graph = build_graph("efficientnet-lite0", repository, read_files=True)
    plan = plan_resources(ray_cluster)
    with pytest.raises(ErrorBudgetExceeded, match="5 of 6 rows failed"):
        run_batch(graph, detect_source(str(folder)), str(tmp_path / "out"), plan, max_error_fraction=0.5)
    assert pq.read_table(tmp_path / "out").num_rows == 6
    with pytest.raises(InputError, match="holds a complete run"):
        run_batch(graph, detect_source(str(folder)), str(tmp_path / "out"), plan)
