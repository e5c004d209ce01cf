"""Embedding models: ``efficientnet-lite0-embed`` (the shipped one) in process, in a Ray Data batch job and in a
nightly Delta table, with the same vectors everywhere (the Serve side is in ``tests/test_serving_app.py``)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.graph import build_graph
from pipeline.models.repository import ModelRepository
from pipeline.nightly.job import NightlyJob, run_nightly
from pipeline.output import EMBEDDING_TYPE
from pipeline.runs.planner import ResourceOverrides, plan_resources
from pipeline.runs.sources import detect_source
from tests.conftest import REPO

MODEL = "efficientnet-lite0-embed"
DEMO = REPO / "jobs" / "demo_images"


def _demo_set(folder: Path) -> list[str]:
    """The demo photos as they ship, plus the first one again as PNG and as WebP: names in order."""
    folder.mkdir(parents=True, exist_ok=True)
    photos = sorted(p for p in DEMO.glob("*.jpg") if p.name != "truncated.jpg")
    for path in photos:
        (folder / path.name).write_bytes(path.read_bytes())
    first = Image.open(photos[0]).convert("RGB")
    for fmt, suffix in (("PNG", "png"), ("WEBP", "webp")):
        buffer = io.BytesIO()
        first.save(buffer, format=fmt, **({"quality": 80} if fmt == "WEBP" else {}))
        (folder / f"{photos[0].stem}-again.{suffix}").write_bytes(buffer.getvalue())
    return sorted(p.name for p in folder.iterdir())


def test_the_same_photo_in_two_formats_is_nearer_itself_than_any_other_photo(
    repository: ModelRepository, tmp_path: Path
) -> None:
    names = _demo_set(tmp_path)
    table = build_graph(MODEL, repository).run([(tmp_path / n).read_bytes() for n in names], names)
    assert table.schema.field("embedding").type == EMBEDDING_TYPE and "label" not in table.column_names
    vectors = np.array(table.column("embedding").to_pylist())
    assert vectors.shape == (len(names), 1280)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)  # the manifest's L2 normalisation
    similarity = vectors @ vectors.T
    stem = sorted(p.stem for p in DEMO.glob("*.jpg") if p.name != "truncated.jpg")[0]
    same = [i for i, n in enumerate(names) if n.startswith(stem)]
    others = [i for i in range(len(names)) if i not in same]
    assert len(same) == 3
    for i in same:
        nearest_other = similarity[i, others].max()
        assert all(similarity[i, j] > nearest_other for j in same if j != i), (names[i], similarity[i])


@pytest.mark.slow
def test_batch_vectors_equal_the_in_process_ones_and_bad_rows_come_out(ray_cluster, repository, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from pipeline.runs.ray_data import run_batch

    names = _demo_set(tmp_path / "images")
    (tmp_path / "images" / "truncated.jpg").write_bytes((DEMO / "truncated.jpg").read_bytes())
    graph = build_graph(MODEL, repository, read_files=True)
    plan = plan_resources(ray_cluster, ResourceOverrides(layout="fused", batch_size=4))
    summary = run_batch(graph, detect_source(str(tmp_path / "images")), str(tmp_path / "out"), plan)
    rows = {r["id"]: r for r in pq.read_table(tmp_path / "out").to_pylist()}
    assert summary.rows == len(rows) == len(names) + 1 and summary.errors_by_reason == {"truncated": 1}
    assert rows["truncated.jpg"]["embedding"] is None and rows["truncated.jpg"]["error"].startswith("truncated")
    reference = build_graph(MODEL, repository).run([(tmp_path / "images" / n).read_bytes() for n in names], names)
    for name, vector in zip(names, reference.column("embedding").to_pylist(), strict=True):
        np.testing.assert_allclose(rows[name]["embedding"], vector, atol=1e-5)


@pytest.mark.slow
def test_a_nightly_table_of_embeddings(ray_cluster, repository, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from deltalake import DeltaTable

    names = _demo_set(tmp_path / "images")
    source = detect_source(str(tmp_path / "images"))
    graph = build_graph(MODEL, repository, read_files=True)

    def night():  # type: ignore[no-untyped-def]
        planner = lambda: plan_resources(ray_cluster, ResourceOverrides(layout="fused", batch_size=4))  # noqa: E731
        return run_nightly(NightlyJob(graph, source, str(tmp_path / "scores.delta"), planner, "embed-job"))

    (first,) = night()
    assert (first.outcome, first.scored_now) == ("committed", len(names))
    table = DeltaTable(str(tmp_path / "scores.delta")).to_pyarrow_table()
    assert table.schema.field("embedding").type == EMBEDDING_TYPE and "label" not in table.column_names
    assert sorted(table.column("id").to_pylist()) == names
    assert all(len(v) == 1280 for v in table.column("embedding").to_pylist())
    (second,) = night()
    assert second.outcome == "nothing new"
