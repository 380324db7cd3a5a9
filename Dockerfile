# syntax=docker/dockerfile:1
# rum-llmobs-proxy image. One image, two roles:
#   - the proxy sidecar (default entrypoint `rum-llmobs-proxy`);
#   - the init container that copies the agent-side hook out of /opt/rum-llmobs-hook. Kubernetes' `command`
#     replaces the entrypoint; with docker/podman give `cp` as the entrypoint (words after the image go to it):
#       docker run --rm --entrypoint cp -v rum-llmobs-hook:/rum-llmobs-hook IMAGE \
#         -R /opt/rum-llmobs-hook/. /rum-llmobs-hook/
# Build: docker build -t rum-llmobs-proxy:0.1.0 .   (see deploy/README.md)
#        podman/buildah: add --format docker, else the image is OCI and silently loses HEALTHCHECK.
#
# The base is Python 3.11 because requirements.lock is resolved for 3.11 (deploy/lock.sh);
# change both together. Pin it by digest in your own registry for bit-for-bit rebuilds. Any base with
# `python` 3.11, its venv module and its headers (Python.h) works: `make image-test` builds on one made with
# debootstrap from Debian's python3, python3-venv, python-is-python3 and python3-dev.
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
# gcc compiles the request path to C extensions with mypyc (setup.py). It stays in this stage: the runtime image
# gets the built extensions, no compiler. (Debian's own versions of the two; the stage is never shipped.)
# Python.h is checked first: without it mypyc would fail minutes later, deep in its C build.
# hadolint ignore=DL3008
RUN python -c "import os, sys, sysconfig; h = os.path.join(sysconfig.get_paths()['include'], 'Python.h'); \
os.path.exists(h) or sys.exit(f'{h} is missing: PYTHON_IMAGE must ship the Python headers (python:*-slim does; \
a Debian base needs python3-dev)')" \
    && apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# Dependencies first (exact versions, sha256-checked) so this layer survives code edits.
COPY requirements.lock ./
RUN pip install --no-deps --require-hashes -r requirements.lock
COPY requirements-build.lock pyproject.toml setup.py README.md ./
COPY proxy/ proxy/
COPY config/ config/
# mypyc type-checks the modules against the installed dependencies, so the wheel is built in this venv (no build
# isolation) with the locked build tools, which are removed again: the image ships the compiled extensions, not
# mypy. RUM_LLMOBS_PROXY_PURE_PYTHON=0 makes a failed compile fail the build (setup.py would otherwise fall back
# to plain Python); then a check that the request path is compiled. Last, the venv's own setuptools and pip go
# too: nothing runs them in the image, and they were 22 MB of it (issue 20).
ENV RUM_LLMOBS_PROXY_PURE_PYTHON=0
RUN pip install --no-deps --require-hashes -r requirements-build.lock \
    && pip install --no-deps --no-build-isolation . \
    && pip uninstall -y mypy mypy-extensions librt pathspec ast-serialize \
    && pip check \
    && python -I -c "import sys, proxy; sys.exit(not proxy.compiled())" \
    && python -m pip uninstall -y setuptools pip

FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="rum-llmobs-proxy" \
      org.opencontainers.image.description="Sidecar proxy linking Datadog RUM sessions to LLM Observability traces" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="0.1.0"
# Numeric, fixed IDs so Kubernetes runAsNonRoot can verify them without /etc/passwd lookups. Not --system: its
# range ends at 999 and useradd warns about 10001; --no-log-init keeps a UID this high out of lastlog/faillog.
# /rum-llmobs-hook, owned by that user, is the copier's mount point: a new named volume mounted there takes its
# owner (docker and podman), so the copier can write into it without running as root.
RUN groupadd --gid 10001 rumproxy \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent --no-log-init \
       --shell /usr/sbin/nologin rumproxy \
    && install -d -o 10001 -g 10001 /rum-llmobs-hook
COPY --from=build /opt/venv /opt/venv
# The hook is plain source for the *agent's* interpreter: any Python the agent runs, not this one.
COPY hook/sitecustomize.py hook/rum_llmobs_hook.py /opt/rum-llmobs-hook/
COPY LICENSE /usr/share/doc/rum-llmobs-proxy/LICENSE
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
USER 10001:10001
WORKDIR /tmp
EXPOSE 8080 8081
# Liveness only (/healthz does no I/O). Kubernetes ignores HEALTHCHECK: it uses the probes. Docker image format
# only: an OCI image (podman/buildah's default format) has no HEALTHCHECK, so build with --format docker.
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('RUM_PROXY_ADMIN_PORT', '8081') + '/healthz', timeout=2)"]
# Exec form: the proxy is PID 1 and receives SIGTERM itself (it drains, then exits 0).
ENTRYPOINT ["rum-llmobs-proxy"]
