# syntax=docker/dockerfile:1
# The compose demo's agent: the unmodified FastAPI app demo_agent.py under ddtrace-run with LLM Observability.
# Everything it needs is installed here, when compose builds the image (`docker compose up --build`): the
# container starts without network access. Same base as the proxy's Dockerfile (and the same build argument,
# which compose.yaml passes to both); hash-locked packages, in a venv: a Debian-packaged Python (as on the base
# `make image-test` builds from Debian packages) refuses system-wide pip installs (PEP 668).
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm
FROM ${PYTHON_IMAGE}
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PYTHONUNBUFFERED=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
COPY agent-requirements.lock /tmp/agent-requirements.lock
RUN pip install --no-cache-dir --no-deps --require-hashes -r /tmp/agent-requirements.lock \
    && pip check
WORKDIR /app
COPY demo_agent.py ./
USER 10002:10002
EXPOSE 8000
CMD ["ddtrace-run", "uvicorn", "demo_agent:app", "--host", "0.0.0.0", "--port", "8000"]
