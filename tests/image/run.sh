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

# The tool image and the compose stack's agent image (mostly downloads) build beside the proxy image (mostly
# mypyc's CPU); the compose test's own build then finds the agent's steps in podman's cache.
"${build[@]}" --tag "$TOOLS_IMAGE" --file tests/image/tools.Containerfile tests/image \
    >/tmp/rum-image-test-tools.log 2>&1 &
tools_pid=$!
"${build[@]}" --file deploy/compose/agent.Dockerfile deploy/compose >/tmp/rum-image-test-compose-agent.log 2>&1 &
compose_agent_pid=$!
start=$SECONDS
if ! "${build[@]}" --tag "$IMAGE" . >/tmp/rum-image-test-build.log 2>&1; then
    tail -n 60 /tmp/rum-image-test-build.log >&2
    echo "run.sh: podman build of the Dockerfile failed (log: /tmp/rum-image-test-build.log)" >&2
    wait "$tools_pid" "$compose_agent_pid" || true
    exit 1
fi
build_seconds=$((SECONDS - start))
if ! wait "$tools_pid"; then
    tail -n 60 /tmp/rum-image-test-tools.log >&2
    echo "run.sh: podman build of tests/image/tools.Containerfile failed (log: /tmp/rum-image-test-tools.log)" >&2
    exit 1
fi
if ! wait "$compose_agent_pid"; then
    tail -n 60 /tmp/rum-image-test-compose-agent.log >&2
    echo "run.sh: podman build of deploy/compose/agent.Dockerfile failed" >&2
    exit 1
fi
if grep -qi "useradd warning" /tmp/rum-image-test-build.log; then
    grep -i "useradd warning" /tmp/rum-image-test-build.log >&2
    echo "run.sh: useradd warned while building the image" >&2
    exit 1
fi

# The archive `make dist` ships (tests/image/save.sh): podman save, then load it back under another name.
archive=$(mktemp /tmp/rum-image-archive.XXXXXX)
podman save --format docker-archive --output "$archive" "$IMAGE" >/dev/null
loaded=$(podman load --input "$archive" 2>&1)
rm -f "$archive"
if ! grep -q "$IMAGE" <<<"$loaded"; then
    echo "run.sh: podman load of the saved image did not give back $IMAGE: $loaded" >&2
    exit 1
fi

size=$(podman image inspect --format '{{.Size}}' "$IMAGE")
base_size=$(podman image inspect --format '{{.Size}}' "$base")
echo "run.sh: $IMAGE: $((size / 1000000)) MB (its base $base: $((base_size / 1000000)) MB)," \
    "built in ${build_seconds} s (steps podman had cached are not rebuilt)"

status=0
RUM_IMAGE=$IMAGE RUM_TOOLS_IMAGE=$TOOLS_IMAGE RUM_IMAGE_BASE=$base \
    "$PY" -m pytest -q --noconftest tests/image/check_image.py || status=$?
echo "run.sh: make image-test took $((SECONDS / 60)) min $((SECONDS % 60)) s"
exit $status
