#!/usr/bin/env bash
# `make image-test` (CI: .ci/run, after `make test`): the image built by podman from the Dockerfile, unchanged, and
# run for real (check_image.py: a pod with the example agent, the hook copier, Datadog's test agent; compose).
# Root, on a fresh Debian machine: engine.sh installs the engine and makes the base. Usage: run.sh [PYTHON]
# (the suite's venv interpreter, for pytest). Prints the image's size and build time.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${1:-.venv/bin/python}
IMAGE=${RUM_IMAGE:-localhost/rum-llmobs-proxy:image-test}
TOOLS_IMAGE=${RUM_TOOLS_IMAGE:-localhost/rum-llmobs-image-test-tools:dev}

base=$(bash tests/image/engine.sh | tail -n 1)

# The build containers reach PyPI through this machine's TLS setup: its CA bundle is mounted read-only for the
# build (never copied into a layer). --format docker keeps HEALTHCHECK (the OCI format has none).
build=(podman build --format docker --build-arg "PYTHON_IMAGE=$base")
ca=/etc/ssl/certs/ca-certificates.crt
if [ -f "$ca" ]; then
    build+=(--volume "$ca:$ca:ro")
fi

start=$SECONDS
"${build[@]}" --tag "$IMAGE" . >/tmp/rum-image-test-build.log 2>&1 || {
    tail -n 60 /tmp/rum-image-test-build.log >&2
    echo "run.sh: podman build of the Dockerfile failed (log: /tmp/rum-image-test-build.log)" >&2
    exit 1
}
build_seconds=$((SECONDS - start))
if grep -qi "useradd warning" /tmp/rum-image-test-build.log; then
    grep -i "useradd warning" /tmp/rum-image-test-build.log >&2
    echo "run.sh: useradd warned while building the image" >&2
    exit 1
fi
start=$SECONDS
"${build[@]}" --tag "$TOOLS_IMAGE" --file tests/image/tools.Containerfile tests/image \
    >/tmp/rum-image-test-tools.log 2>&1 || {
    tail -n 60 /tmp/rum-image-test-tools.log >&2
    echo "run.sh: podman build of tests/image/tools.Containerfile failed" >&2
    exit 1
}
tools_seconds=$((SECONDS - start))

size=$(podman image inspect --format '{{.Size}}' "$IMAGE")
base_size=$(podman image inspect --format '{{.Size}}' "$base")
echo "run.sh: $IMAGE: $((size / 1000000)) MB (base $base: $((base_size / 1000000)) MB), built in ${build_seconds} s" \
    "(podman's layer cache may have served steps); tools image in ${tools_seconds} s"

RUM_IMAGE=$IMAGE RUM_TOOLS_IMAGE=$TOOLS_IMAGE RUM_IMAGE_BASE=$base \
    "$PY" -m pytest -q --noconftest tests/image/check_image.py
