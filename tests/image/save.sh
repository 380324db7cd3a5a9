#!/usr/bin/env bash
# The image archive `make dist` ships: the Dockerfile built by podman (--format docker keeps HEALTHCHECK) on the Python
# base engine.sh makes (no registry is reachable here), tagged with the package's version, saved with `podman save`.
# Root (installs the engine; see engine.sh). Usage: save.sh OUT.tar [TAG]. tests/image/run.sh checks the same
# save/load round trip on the image it tests.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=$1
version=$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' proxy/__init__.py)
tag=${2:-localhost/rum-llmobs-proxy:$version}
base=$(bash tests/image/engine.sh | tail -n 1)
build=(podman build --format docker --build-arg "PYTHON_IMAGE=$base" --tag "$tag")
ca=/etc/ssl/certs/ca-certificates.crt
if [ -f "$ca" ]; then
    build+=(--volume "$ca:$ca:ro")  # the build reaches PyPI through this machine's TLS setup; never baked in
fi
"${build[@]}" . >&2
rm -f "$out"
podman save --format docker-archive --output "$out" "$tag" >&2
echo "$out"
