#!/usr/bin/env bash
# Container engine for `make image-test`, on a fresh Debian machine (run as root, as CI does):
#   1. podman, buildah, runc, debootstrap and podman-compose from Debian;
#   2. /etc/containers/containers.conf: this VM kind has no CAP_SYS_RESOURCE (podman's default nofile/nproc
#      ulimits cannot be set) and crun refuses its cgroup layout, so runc and explicit ulimits are configured,
#      only when the file lacks them;
#   3. the Python base image: no container registry is reachable, so it is made from Debian packages with
#      debootstrap and `podman import`ed, once per machine (the tag in podman's store, outside the repo, is
#      the cache; ~2 min when missing).
# Prints the base image's name on stdout as its last line.
set -euo pipefail

BASE_IMAGE=${RUM_IMAGE_BASE:-localhost/rum-llmobs-proxy-base:bookworm-py3}
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
# What the proxy's Dockerfile and the example agent need of a base: python (python-is-python3), venv, pip,
# the headers mypyc compiles against, and the CA bundle package.
BASE_PACKAGES=python3,python3-venv,python3-pip,python-is-python3,python3-dev,ca-certificates

log() { echo "engine.sh: $*" >&2; }

if [ "$(id -u)" != 0 ]; then
    log "run as root (it installs Debian packages and writes /etc/containers/containers.conf)"
    exit 1
fi

missing=()
for tool in podman buildah runc debootstrap podman-compose iptables; do
    command -v "$tool" >/dev/null || missing+=("$tool")
done
if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]} from Debian"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    # With podman's recommends (catatonit for the pods' infra containers, slirp4netns, uidmap...), plus iptables,
    # which netavark needs to publish ports (only suggested).
    apt-get install -y -qq podman buildah runc debootstrap podman-compose netavark aardvark-dns iptables >&2
fi

# containers.conf: add each setting only where the file does not set that key already.
python3 - <<'PY'
import pathlib, tomllib

path = pathlib.Path("/etc/containers/containers.conf")
text = path.read_text() if path.exists() else ""
current = tomllib.loads(text)
wanted = {
    "containers": ("default_ulimits", '["nofile=20000:20000", "nproc=32768:32768"]'),
    "engine": ("runtime", '"runc"'),
}
lines = text.splitlines()
changed = False
for section, (key, value) in wanted.items():
    if key in current.get(section, {}):
        continue
    changed = True
    entry = f"{key} = {value}"
    header = next((i for i, line in enumerate(lines) if line.strip() == f"[{section}]"), None)
    if header is None:
        lines += ["", f"[{section}]", entry]
    else:
        lines.insert(header + 1, entry)
if changed:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines).lstrip("\n") + "\n")
    print(f"engine.sh: wrote {path}", file=__import__("sys").stderr)
PY

if podman image exists "$BASE_IMAGE"; then
    log "base $BASE_IMAGE is cached"
else
    log "building base $BASE_IMAGE with debootstrap (bookworm, $BASE_PACKAGES)"
    rootfs=$(mktemp -d /var/tmp/rum-llmobs-base.XXXXXX)
    trap 'rm -rf "$rootfs"' EXIT
    debootstrap --variant=minbase --include="$BASE_PACKAGES" bookworm "$rootfs" "$DEBIAN_MIRROR" >&2
    # The apt lists and caches debootstrap leaves are not needed in the image (the build stage updates them).
    rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/archives/*.deb
    tar -C "$rootfs" -c . | podman import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' \
        --change 'CMD ["python3"]' \
        - "$BASE_IMAGE" >&2
fi
echo "$BASE_IMAGE"
