"""A GPU plan never falls back to the CPU quietly (README, Layouts): an actor Ray gave no GPU, or an ONNX Runtime
session that comes up without CUDA, fails with a message that says so, instead of scoring on the CPU.

Checked without a GPU: this machine's ONNX Runtime either lists ``CUDAExecutionProvider`` with no GPU or CUDA
libraries behind it (the GPU wheel), or does not list it at all (the CPU wheel); both must refuse a CUDA session.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from common.errors import ModelLoadError
from operators.infer import InferParams, make_session
from pipeline.graph import build_graph
from pipeline.runs.planner import ResourceOverrides, plan_resources
from tests.conftest import MODELS_DIR

# Where a GPU is present a CUDA session may well work: the session tests are about machines without one.
no_gpu_here = pytest.mark.skipif(Path("/dev/nvidia0").exists(), reason="a GPU is present: CUDA sessions may work")

CUDA_REFUSED = r"asked for CUDA \(device 0\) but ONNX Runtime created the session with \['CPUExecutionProvider'\]"


def _digits_infer_params(**params: object) -> InferParams:
    return InferParams(
        model_uri=str(MODELS_DIR / "digits" / "1" / "model.onnx"), input_name="input", output_name="logits", **params
    )


@no_gpu_here
def test_a_cuda_session_that_comes_up_on_the_cpu_is_refused() -> None:
    session = make_session(_digits_infer_params())  # the same model on the CPU loads: only CUDA is refused below
    assert session.get_providers() == ["CPUExecutionProvider"]
    with pytest.raises(ModelLoadError, match=CUDA_REFUSED):
        make_session(_digits_infer_params(device="cuda"))


@no_gpu_here
def test_a_graph_placed_on_cuda_scores_nothing_on_the_cpu(repository, digit_files) -> None:  # type: ignore[no-untyped-def]
    """In-process scoring (notebooks, the Serve replicas) of a CUDA graph fails before any row is answered."""
    graph = build_graph("digits", repository)
    image = digit_files[0][0].read_bytes()
    assert graph.run([image]).column("error").to_pylist() == [None]  # the CPU graph scores it
    with pytest.raises(ModelLoadError, match=CUDA_REFUSED):
        graph.on_device("cuda").run([image])


@no_gpu_here
def test_a_serve_scorer_given_gpus_answers_every_request_with_the_error(repository) -> None:  # type: ignore[no-untyped-def]
    """A Scorer whose config gives it GPUs asks ORT for CUDA; without it, each request gets the reason (a 503 at
    the gateway), never CPU predictions."""
    from pipeline.models.ref import ModelRef
    from pipeline.serving.config import ServeConfig
    from pipeline.serving.scorer import ModelScorer

    ref = ModelRef(name="digits", version="1")
    pixels = np.zeros((2, 8, 8, 1), dtype=np.uint8)
    on_cpu = ModelScorer(ServeConfig(models_dir=str(MODELS_DIR)))
    scored = on_cpu.score_now(ref, pixels)
    assert scored.error is None and scored.table is not None and scored.table.num_rows == 2
    on_gpu = ModelScorer(ServeConfig(models_dir=str(MODELS_DIR), scorer_gpus=1.0))
    scored = on_gpu.score_now(ref, pixels)
    assert scored.table is None and scored.error is not None
    assert scored.error.startswith("ModelLoadError: asked for CUDA (device 0)"), scored.error


@pytest.mark.parametrize("layout", ["fused", "split"])
def test_every_gpu_plan_places_inference_on_cuda(repository, layout: str) -> None:  # type: ignore[no-untyped-def]
    """A plan that takes GPUs hands its actors a CUDA graph (which then refuses to run on the CPU, above)."""
    plan = plan_resources({"CPU": 8, "GPU": 2}, ResourceOverrides(layout=layout, gpus_per_inference_actor=1.0))
    assert (plan.device, plan.inference_actors, plan.gpus_per_inference_actor) == ("cuda", 2, 1.0)
    graph = build_graph("digits", repository).on_device(plan.device, 0, plan.ort_threads, plan.rows_per_ort_call)
    (infer,) = [spec for spec in graph.inference if spec.name == "infer"]
    assert infer.params["device"] == "cuda"


@pytest.mark.timeout(120)
@pytest.mark.parametrize("actor", ["InferenceActor", "FusedActor"])
def test_an_actor_ray_gave_no_gpu_refuses_a_cuda_plan(ray_cluster, repository, actor: str) -> None:  # type: ignore[no-untyped-def]
    """The batch job's model actors, started by Ray without a GPU for a CUDA plan, fail in their constructor
    (the run fails) instead of opening a session at all (on any machine: Ray assigns this actor no GPU)."""
    import ray

    import pipeline.runs.ray_data as batch

    graph = build_graph("digits", repository, read_files=True).on_device("cuda")
    args = (graph.inference, graph.model) if actor == "InferenceActor" else (graph,)
    if actor == "FusedActor":
        args += ("cuda", {}, None, False)
    else:
        args += ("cuda", None, False)
    handle = ray.remote(num_cpus=0.01, num_gpus=0, max_restarts=0)(getattr(batch, actor)).remote(*args)
    with pytest.raises(ray.exceptions.ActorDiedError) as died:
        ray.get(handle.__ray_ready__.remote(), timeout=90)
    assert "inference was planned on CUDA but Ray assigned this actor no GPU" in str(died.value)
