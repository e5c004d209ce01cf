#!/usr/bin/env bash
# Builds StreamScore's image (the Dockerfile at the repository's root) on a machine with no image registry and no
# container daemon, then runs it: the README's demo `score`, and `serve` answering one HTTP request.
#
#   deploy/build-image.sh                 # CPU flavour: localhost/streamscore:0.1.0-cpu
#   FLAVOR=cuda deploy/build-image.sh     # CUDA flavour: localhost/streamscore:0.1.0 (deploy/'s image name)
#   FRESH=1 deploy/build-image.sh         # from nothing: drops $STATE (the base, every layer) first
#   STORAGE_DRIVER=vfs deploy/build-image.sh   # vfs even where overlay mounts (see "The storage driver" below)
#   TAG=localhost/x:1 KEEP_IMAGE=0 PORT=18001 deploy/build-image.sh   # as tests/test_container.py runs it
#
# Stages, each timed:
#   1. base   mmdebstrap makes Debian bookworm (minbase, docs and locales left out as in debian:bookworm-slim) from
#             Debian's mirror, imported as localhost/streamscore-base:bookworm; it stands in for the Dockerfile's
#             default BASE_IMAGE (docker.io/library/debian:bookworm-slim), which needs a registry. Kept between
#             runs (REBUILD_BASE=1 makes it again).
#   2. build  buildah, chroot isolation (no daemon, no user namespaces), --layers: a rerun with unchanged inputs
#             takes seconds, and one after a code change redoes only the Dockerfile's last layer (the code).
#   3. score  podman run: the demo, offline (--network none): the models and images are in the image.
#   4. serve  podman run -d: `streamscore serve`, its port published on 127.0.0.1:$PORT, one request and the V2
#             server metadata (the installed version), then SIGTERM (serve drains and exits 0).
#
# Needs root, or rootless podman/buildah with /etc/subuid set up (mmdebstrap then runs in unshare mode), and
# Debian's packages: apt-get install mmdebstrap buildah podman (and runc on hosts in cgroup hybrid mode, below).
# Images and layers live in their own store, $STATE/<storage driver> (overlay where the host can mount it, else
# vfs: see below); the first line printed says which, and how to list its images. After a build the store keeps
# the images it holds by name and their layers (the cache), nothing older.
# Safe to rerun; the containers it starts are removed when it exits, however it exits (and with KEEP_IMAGE=0 the
# image too, its layers kept for the next build).
set -euo pipefail
cd "$(dirname "$0")/.."

FLAVOR=${FLAVOR:-cpu}
case "$FLAVOR" in
    cpu) TAG=${TAG:-localhost/streamscore:0.1.0-cpu} ;;
    cuda) TAG=${TAG:-localhost/streamscore:0.1.0} ;;
    *) echo "FLAVOR must be cpu or cuda, not $FLAVOR" >&2; exit 2 ;;
esac
STATE=${STATE:-/var/tmp/streamscore-image}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
SECURITY_MIRROR=${SECURITY_MIRROR:-http://deb.debian.org/debian-security}
EXTRA_CA_DIR=${EXTRA_CA_DIR-/usr/local/share/ca-certificates}
BASE_TAG=localhost/streamscore-base:bookworm
PORT=${PORT:-18000}          # on the host; the container serves on 8000
SERVE_TIMEOUT_S=${SERVE_TIMEOUT_S:-300}
KEEP_IMAGE=${KEEP_IMAGE:-1}
RUN_ID=$$
SCORE_NAME=streamscore-score-$RUN_ID
SERVE_NAME=streamscore-serve-$RUN_ID

for tool in mmdebstrap buildah podman curl; do
    command -v "$tool" > /dev/null || { echo "missing: $tool (apt-get install mmdebstrap buildah podman curl)" >&2; exit 2; }
done
if [[ "${FRESH:-0}" == 1 ]]; then
    for driver in overlay vfs; do
        if [[ -d "$STATE/$driver/storage" ]]; then
            podman --root "$STATE/$driver/storage" --runroot "$STATE/$driver/run" --storage-driver "$driver" \
                system reset --force > /dev/null
        fi
    done
    rm -rf "$STATE"
fi
mkdir -p "$STATE"

# The storage driver. overlay: a layer holds only what its instruction changed, and a container starts on its
# image without a copy; it needs a kernel mount of overlayfs (root; a store not itself on overlayfs). vfs works
# anywhere but copies the whole tree for every layer, every build step (cached ones too: buildah makes a working
# container per step) and every container. On this project's 2-core VM, after a code change, the build stage took
# 2-3 s with overlay and 58-143 s with vfs, the whole script 45 s against 2.5-4 minutes; the store holds 1.6 GB
# against 4 GB.
overlay_mounts() {
    local dir ok=1
    dir=$(mktemp -d "$STATE/overlay-probe.XXXXXX")
    mkdir "$dir/lower" "$dir/upper" "$dir/work" "$dir/merged"
    if mount -t overlay overlay -o "lowerdir=$dir/lower,upperdir=$dir/upper,workdir=$dir/work" "$dir/merged" \
        2> /dev/null; then
        umount "$dir/merged" && ok=0
    fi
    rm -rf "$dir"
    return "$ok"
}
if [[ -z "${STORAGE_DRIVER:-}" ]]; then
    STORAGE_DRIVER=vfs
    overlay_mounts && STORAGE_DRIVER=overlay
fi
# Each driver its own store: neither can open the other's.
STORE=(--root "$STATE/$STORAGE_DRIVER/storage" --runroot "$STATE/$STORAGE_DRIVER/run"
    --storage-driver "$STORAGE_DRIVER")
echo "storage: $STORAGE_DRIVER, in $STATE/$STORAGE_DRIVER (podman ${STORE[*]} images)"

# crun (podman's default runtime) refuses hosts whose cgroups are in hybrid mode (v1 controllers plus a v2
# "unified" mount), as some VMs are: "crun: cgroups in hybrid mode not supported". runc handles them.
RUNTIME=()
if [[ -z "${OCI_RUNTIME:-}" ]] && mountpoint -q /sys/fs/cgroup/unified 2> /dev/null && command -v runc > /dev/null; then
    OCI_RUNTIME=runc
fi
[[ -n "${OCI_RUNTIME:-}" ]] && RUNTIME=(--runtime "$OCI_RUNTIME")
podman_() { podman "${STORE[@]}" "${RUNTIME[@]}" "$@"; }

# A container may not get higher limits than podman's conmon holds, and podman asks for more than some hosts
# allow by default (nofile 1048576): "setrlimit RLIMIT_NOFILE: Operation not permitted". Ray wants many files.
hard_nofile=$(ulimit -Hn); [[ "$hard_nofile" == unlimited || "$hard_nofile" -gt 65536 ]] && hard_nofile=65536
hard_nproc=$(ulimit -Hu); [[ "$hard_nproc" == unlimited || "$hard_nproc" -gt 32768 ]] && hard_nproc=32768
# Ray keeps its object store in /dev/shm (podman's default is 64 MB; Ray falls back to /tmp with a warning).
RUN_FLAGS=(--shm-size 2g --ulimit "nofile=$hard_nofile:$hard_nofile" --ulimit "nproc=$hard_nproc:$hard_nproc")

cleanup() {
    podman_ rm --force --time 0 --ignore "$SCORE_NAME" "$SERVE_NAME" > /dev/null 2>&1 || true
    # --no-prune: the layers under the image stay, the cache of the next build (a plain rmi takes every parent
    # that no other image uses with it).
    if [[ "$KEEP_IMAGE" == 0 ]]; then
        podman_ rmi --no-prune --ignore "$TAG" > /dev/null 2>&1 || true
    fi
}
trap cleanup EXIT

declare -A SECONDS_OF
stage() { # stage NAME: times what follows until the next stage call
    local now; now=$(date +%s.%N)
    if [[ -n "${CURRENT_STAGE:-}" ]]; then
        SECONDS_OF[$CURRENT_STAGE]=$(awk -v a="$STAGE_START" -v b="$now" 'BEGIN { printf "%.0f", b - a }')
        echo "=== $CURRENT_STAGE: ${SECONDS_OF[$CURRENT_STAGE]} s"
    fi
    CURRENT_STAGE=${1:-}
    STAGE_START=$now
    [[ -n "$CURRENT_STAGE" ]] && echo "=== $CURRENT_STAGE ..."
    return 0
}

# ------------------------------------------------------------------ 1. base
stage base
if [[ "${REBUILD_BASE:-0}" == 1 ]] || ! podman_ image exists "$BASE_TAG"; then
    rm -f "$STATE/base.tar"
    # The host's own CAs (a TLS-inspecting proxy's, as on the machine this was written on) go into the base, as a
    # company's base image would carry them: the Dockerfile's ca-certificates adds them to the store pip uses.
    HOOKS=()
    if compgen -G "$EXTRA_CA_DIR/*.crt" > /dev/null; then
        echo "adding the CAs of $EXTRA_CA_DIR to the base (EXTRA_CA_DIR= leaves them out)"
        # shellcheck disable=SC2016  # "$1" is the hook's argument (the new root), expanded by mmdebstrap's shell
        HOOKS=(--customize-hook='mkdir -p "$1/usr/local/share/ca-certificates"'
            --customize-hook="sync-in $EXTRA_CA_DIR /usr/local/share/ca-certificates")
    fi
    # As debian:bookworm-slim: minbase (Essential and apt), no manuals, docs (copyrights kept) or translations.
    mmdebstrap --variant=minbase \
        --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/info/*' \
        --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
        --dpkgopt='path-exclude=/usr/share/locale/*' "${HOOKS[@]}" \
        bookworm "$STATE/base.tar" \
        "deb $MIRROR bookworm main" "deb $MIRROR bookworm-updates main" \
        "deb $SECURITY_MIRROR bookworm-security main"
    podman_ image rm --force "$BASE_TAG" > /dev/null 2>&1 || true
    podman_ import --change 'CMD ["bash"]' "$STATE/base.tar" "$BASE_TAG"
    rm -f "$STATE/base.tar"
else
    echo "$BASE_TAG exists (REBUILD_BASE=1 makes it again)"
fi

# ------------------------------------------------------------------ 2. build
stage build
# --format docker: the OCI format has no SHELL, and the Dockerfile's RUNs rely on bash's pipefail.
# --pull=never: the base is the local one; nothing may come from a registry.
OLD_ID=$(podman_ image inspect --format '{{.Id}}' "$TAG" 2> /dev/null || true)
buildah "${STORE[@]}" build --isolation chroot --network host --format docker --layers --pull=never \
    --build-arg "BASE_IMAGE=$BASE_TAG" --build-arg "FLAVOR=$FLAVOR" \
    --tag "$TAG" --file Dockerfile .
# The image this build replaced goes, and so do the layers no named image stands on (those of earlier builds,
# and of the Dockerfile's `requirements` stage, which the next build redoes in seconds). The layers of what was
# just built stay: the next build's cache.
NEW_ID=$(podman_ image inspect --format '{{.Id}}' "$TAG")
if [[ -n "$OLD_ID" && "$OLD_ID" != "$NEW_ID" ]]; then
    podman_ rmi "$OLD_ID" > /dev/null 2>&1 || true
fi
podman_ image prune --force > /dev/null
podman_ images "$TAG"
SIZE=$(podman_ image inspect --format '{{.Size}}' "$TAG")

# ------------------------------------------------------------------ 3. score
stage score
# --show 5 prints the five rows; the broken JPEG is one of them, so "errors: 1" is the expected outcome.
SCORE_OUT=$(podman_ run --name "$SCORE_NAME" --rm --network none "${RUN_FLAGS[@]}" "$TAG" \
    score jobs/demo_images out/demo --model efficientnet-lite0 --show 5)
echo "$SCORE_OUT"
grep -q '^coffee.jpg: espresso' <<< "$SCORE_OUT" || { echo "score: no espresso for coffee.jpg" >&2; exit 1; }

# ------------------------------------------------------------------ 4. serve + request
stage serve
podman_ run --name "$SERVE_NAME" --detach --publish "127.0.0.1:$PORT:8000" "${RUN_FLAGS[@]}" "$TAG" \
    serve --host 0.0.0.0 --port 8000 > /dev/null
URL=http://127.0.0.1:$PORT/predict/efficientnet-lite0
deadline=$((SECONDS + SERVE_TIMEOUT_S))
until ANSWER=$(curl --silent --show-error --fail --max-time 10 --data-binary @jobs/demo_images/coffee.jpg "$URL" 2> /dev/null); do
    if [[ "$(podman_ inspect --format '{{.State.Running}}' "$SERVE_NAME")" != true ]] || ((SECONDS > deadline)); then
        podman_ logs --tail 60 "$SERVE_NAME" >&2
        echo "serve: no answer from $URL within ${SERVE_TIMEOUT_S} s" >&2
        exit 1
    fi
    sleep 0.5
done
echo "curl --data-binary @jobs/demo_images/coffee.jpg $URL"
echo "$ANSWER"
grep -q espresso <<< "$ANSWER" || { echo "serve: no espresso in the answer" >&2; exit 1; }
# The V2 server metadata: its version is the installed distribution's (the image's launcher, not the code).
echo "curl http://127.0.0.1:$PORT/v2"
curl --silent --show-error --fail --max-time 10 "http://127.0.0.1:$PORT/v2"
echo
# SIGTERM: serve drains and exits 0 (the README's exit codes); podman waits up to 60 s before SIGKILL.
podman_ stop --time 60 "$SERVE_NAME" > /dev/null
STATUS=$(podman_ inspect --format '{{.State.ExitCode}}' "$SERVE_NAME")
echo "serve exited with $STATUS after SIGTERM"
podman_ logs --tail 5 "$SERVE_NAME"
stage

echo
echo "image: $TAG ($FLAVOR), $(awk -v b="$SIZE" 'BEGIN { printf "%.2f GB (%d bytes)", b / 1e9, b }')"
for name in base build score serve; do
    printf '%-6s %6s s\n' "$name" "${SECONDS_OF[$name]}"
done
[[ "$STATUS" == 0 ]] || { echo "serve: exit status $STATUS after SIGTERM, expected 0" >&2; exit 1; }
