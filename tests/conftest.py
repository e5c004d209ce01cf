"""Shared fixtures: one real local Ray instance per session, real models from ``models/``, real image files."""

from __future__ import annotations

import io
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
MODELS_DIR = REPO / "models"
SERVED_MAX_REQUEST_BYTES = 3_000_000  # the session app's request limit (``server``), HTTP and gRPC
# The session app's gRPC address per layout ("127.0.0.1:PORT"), set by ``server``: see ``grpc_target``.
GRPC_TARGETS: dict[str, str] = {}


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[dict[str, float]]:
    """A 2-CPU local Ray instance shared by every test that needs Ray (starting one costs seconds)."""
    import ray
    import ray.data

    from jobs.ingress import limit_grpc_messages, use_fast_ingress

    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    use_fast_ingress()  # the serving tests run the app as `streamscore serve` does
    limit_grpc_messages(SERVED_MAX_REQUEST_BYTES)
    # "local": a fresh instance, never a cluster that another test (or `ray start`) left recorded on the machine.
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    yield ray.cluster_resources()
    ray.shutdown()


@pytest.fixture(scope="session")
def repository():
    from pipeline.models.repository import ModelRepository

    return ModelRepository(str(MODELS_DIR))


@pytest.fixture(scope="session")
def digit_files(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[Path, int]]:
    """The held-out handwritten digits (never seen in training) as real 32x32 PNG files."""
    from builders.digits import write_heldout_images

    return write_heldout_images(tmp_path_factory.mktemp("digits"))


@pytest.fixture(scope="session")
def photos() -> dict[str, np.ndarray]:
    """Real photos bundled with scikit-image (RGB uint8)."""
    from skimage import data

    return {name: getattr(data, name)() for name in ("coffee", "chelsea", "astronaut", "rocket")}


def copy_digits(root: Path, version: str = "1") -> Path:
    """The shipped digits model as ``root/digits/<version>`` (its manifest naming that version; no calibration
    images): a repository with several versions of a real model, for the tests of versions and defaults."""
    import json
    import shutil

    target = root / "digits" / version
    shutil.copytree(MODELS_DIR / "digits" / "1", target, ignore=shutil.ignore_patterns("calibration"))
    manifest = json.loads((target / "manifest.json").read_text())
    (target / "manifest.json").write_text(json.dumps(manifest | {"version": version}))
    return target


def encode(array: np.ndarray, fmt: str = "JPEG", **options: object) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, fmt, **options)
    return buffer.getvalue()


@pytest.fixture(scope="session")
def photo_jpegs(photos: dict[str, np.ndarray]) -> dict[str, bytes]:
    return {name: encode(array, quality=92) for name, array in photos.items()}


def wait_for(condition: Callable[[], bool], timeout_s: float = 30.0, interval_s: float = 0.2) -> None:
    """Poll until ``condition()`` is true; never sleep a fixed time and hope."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(interval_s)
    raise TimeoutError(f"condition not met within {timeout_s} s")


@pytest.fixture(scope="session", params=["split", "fused"])
def topology(request: pytest.FixtureRequest) -> str:
    """Every test of the app runs against both layouts: split (the GPU one) and fused (the CPU default)."""
    return str(request.param)


@pytest.fixture(scope="session")
def served_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.serving import make_served_repository

    return make_served_repository(tmp_path_factory.mktemp("repository"), MODELS_DIR)


@pytest.fixture(scope="session")
def server(
    ray_cluster, served_repository: Path, topology: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:  # type: ignore[no-untyped-def]
    """The app over ``served_repository`` in one layout, with two gateway replicas (so every answer about the
    whole app must hold whichever replica gives it) and the routing of ``tests.serving.ROUTING``; HTTP at the
    URL it yields, and V2 over gRPC too (``grpc_target``). Its control plane keeps its state in a file of its
    own (each layout's app is another app)."""
    from ray import serve

    from jobs.ingress import free_app_port
    from pipeline.serving.app import deploy
    from pipeline.serving.config import ServeConfig
    from tests.serving import ADMIN_TOKEN, ROUTING

    port, grpc_port = free_app_port(), free_app_port()
    config = ServeConfig(
        models_dir=str(served_repository),
        max_request_bytes=SERVED_MAX_REQUEST_BYTES,
        max_images_per_request=4,
        max_pixels_per_request=3_000_000,
        body_timeout_s=2.0,
        topology=topology,
        preprocess_cpus=0.25,
        scorer_cpus=0.25,
        routing=ROUTING,
        admin_token=ADMIN_TOKEN,
        max_cached_versions=7,  # the routing's 4 versions, and a guarded model's stable, canary and shadow
        control_state_uri=str(tmp_path_factory.mktemp(f"control-{topology}") / "state.json"),
        preprocess_autoscaling={"min_replicas": 2, "max_replicas": 2, "target_ongoing_requests": 8},
    )
    deploy(config, "127.0.0.1", port, grpc_port)
    GRPC_TARGETS[topology] = f"127.0.0.1:{grpc_port}"
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()  # frees the replicas' CPUs for whatever runs next
    GRPC_TARGETS.pop(topology)


@pytest.fixture
def grpc_target(server: str, topology: str) -> str:
    """The session app's V2 gRPC address (the same app as ``server``, Serve's gRPC ingress)."""
    return GRPC_TARGETS[topology]


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests of the session's Serve app run last, whatever order files are named in: the app holds CPUs of
    the shared 2-CPU Ray instance until the session ends, and a batch job planned after it would wait for them.
    (The sort is stable, so pytest's grouping by layout is kept.)"""
    items.sort(key=lambda item: "server" in getattr(item, "fixturenames", ()))
