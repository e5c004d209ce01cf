"""Shadow scoring (``pipeline/serving/shadow.py``): comparing two versions' answers on real model outputs, and a
queue that never waits."""

from __future__ import annotations

import asyncio
import json
import random
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from pipeline.graph import graph_for_model
from pipeline.models.ref import ModelRef
from pipeline.models.repository import ModelRepository
from pipeline.options import ScoringOptions
from pipeline.serving.canary import plan
from pipeline.serving.control import ControlSnapshot
from pipeline.serving.control_store import VersionState
from pipeline.serving.routing import RoutingPolicy
from pipeline.serving.shadow import ShadowQueue, ShadowWork, compare
from pipeline.serving.traffic import PairCounts
from tests.conftest import MODELS_DIR


def _tables(tmp_path: Path, images: list[bytes], mean: float) -> tuple[pa.Table, pa.Table]:
    """The digits model's answers, and those of a copy whose manifest's mean is ``mean``."""
    shutil.copytree(
        MODELS_DIR / "digits" / "1", tmp_path / "digits" / "1", ignore=shutil.ignore_patterns("calibration")
    )
    shutil.copytree(tmp_path / "digits" / "1", tmp_path / "digits" / "2")
    manifest = json.loads((tmp_path / "digits" / "2" / "manifest.json").read_text())
    manifest["version"], manifest["preprocess"]["mean"] = "2", [mean]
    (tmp_path / "digits" / "2" / "manifest.json").write_text(json.dumps(manifest))
    repository = ModelRepository(str(tmp_path))
    tables = [
        graph_for_model(repository.load(ModelRef(name="digits", version=v)), ScoringOptions()).run(images)
        for v in ("1", "2")
    ]
    return tables[0], tables[1]


def test_a_version_agrees_with_itself_and_not_with_broken_preprocessing(tmp_path: Path, digit_files) -> None:  # type: ignore[no-untyped-def]
    images = [path.read_bytes() for path, _ in digit_files[:30]]
    same, also_same = _tables(tmp_path / "a", images, 0.0)
    outcome = compare(same, also_same)
    assert (outcome.compared, outcome.agreement, outcome.top1_equal, outcome.top5_overlap) == (1, 1.0, 1, 1.0)
    answer, broken = _tables(tmp_path / "b", images, 255.0)
    outcome = compare(answer.slice(0, 1), broken.slice(0, 1))
    assert outcome.compared == 1 and outcome.agreement in (0.0, 1.0)
    whole = compare(answer, broken)  # 30 images in one request: their shares
    labels = np.array(answer.column("label").to_pylist()) == np.array(broken.column("label").to_pylist())
    assert whole.agreement == pytest.approx(labels.mean()) and whole.agreement < 0.7
    assert whole.top1_equal == int(labels.all()) and 0 < whole.top5_overlap < 1


def test_embeddings_are_compared_by_cosine_similarity() -> None:
    vectors = np.array([[1.0, 0.0], [0.6, 0.8]], np.float32)
    answer = pa.table({"embedding": pa.array(list(vectors))})
    turned = pa.table({"embedding": pa.array([[0.0, 1.0], [0.6, 0.8]])})
    outcome = compare(answer, turned)
    assert outcome.embeddings == 1 and outcome.cosine == pytest.approx(0.5) and outcome.agreement == pytest.approx(0.5)
    broken = pa.table({"embedding": pa.array([[float("nan"), 1.0], [0.6, 0.8]])})
    assert compare(answer, broken).agreement == pytest.approx(0.5)  # a NaN vector agrees with nothing


def test_the_queue_drops_what_does_not_fit_and_counts_failures() -> None:
    table = pa.table({"label": ["1"], "top_k": [[{"label": "1", "score": 1.0}]]})
    release = asyncio.Event()
    recorded: list[PairCounts] = []

    async def score(ref: ModelRef, images: list[bytes]) -> pa.Table:
        await release.wait()
        if images == [b"bad"]:
            raise RuntimeError("the shadow failed")
        return table

    async def main() -> list[bool]:
        queue = ShadowQueue(
            score, lambda work, outcome: recorded.append(outcome), max_requests=2, max_bytes=100, timeout_s=30
        )
        ref = ModelRef(name="m", version="1")

        def work(data: bytes) -> ShadowWork:
            return ShadowWork(answered=ref, shadow=ref.at("2"), images=[data], answer=table)

        offered = [queue.offer(work(b"ok")), queue.offer(work(b"bad")), queue.offer(work(b"ok"))]
        offered.append(queue.offer(work(b"x" * 101)))  # too many bytes alone
        await asyncio.sleep(0)  # the worker takes the first: room for one more
        offered.append(queue.offer(work(b"ok")))
        release.set()
        while sum(o.compared + o.errors for o in recorded) < 3:
            await asyncio.sleep(0.01)
        return offered

    offered = asyncio.run(main())
    assert offered == [True, True, False, False, True]
    assert sum(o.dropped for o in recorded) == 2
    assert sum(o.compared for o in recorded) == 2 and sum(o.errors for o in recorded) == 1


def test_a_canary_request_is_compared_with_the_stable_version_and_sampled_by_the_policys_shadow() -> None:
    def ref(version: str) -> ModelRef:
        return ModelRef(name="m", version=version)

    policy = RoutingPolicy.model_validate(
        {"weights": {"1": 90, "2": 10}, "guard": {"min_agreement": 0.9}, "shadow": {"version": "3", "fraction": 1}}
    )
    snapshot = ControlSnapshot(routing={"m": policy})
    rng = random.Random(0)
    canary = plan(snapshot, ref("2"), True, rng)
    assert canary.fallback == ref("1") and canary.shadows == (ref("1"), ref("3")) and canary.counted
    stable = plan(snapshot, ref("1"), True, rng)
    assert stable.fallback is None and stable.shadows == (ref("3"),)
    # A shadow that failed its check is not scored; a request that named its version is not the policy's.
    failed = snapshot.model_copy(update={"states": {ref("3"): VersionState(state="failed", error="x")}})
    assert plan(failed, ref("2"), True, rng).shadows == (ref("1"),)
    assert plan(snapshot, ref("2"), False, rng).shadows == ()
