"""The OpenTelemetry example agent's virtualenvs (.venv-otel-<instrumentation>), one per LLM instrumentation.

Separate from the main venv: Datadog's test agent pins an older opentelemetry-proto than the OTLP exporter
needs, and an OTel agent has no ddtrace. One venv per instrumentation because OpenInference's and the GenAI
one's entry points are both named ``openai``. Each has rum-otel-session (hook/otel) installed, and is rebuilt
only when its requirements change. ``python -m tests.support.otel_venv`` builds them all (make test does).
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

from tests.support.processes import REPO

AGENT = REPO / "examples" / "agents" / "otel_fastapi"
TWIN = REPO / "hook" / "otel"
INSTRUMENTATIONS = ("openinference", "genai")


def _fingerprint(requirements: Path) -> str:
    sources = (AGENT / "requirements.txt", requirements, TWIN / "pyproject.toml")
    return hashlib.sha256(b"".join(p.read_bytes() for p in sources)).hexdigest()


def ensure_otel_venv(instrumentation: str) -> Path:
    """Return the bin directory (python, opentelemetry-instrument) of that instrumentation's venv."""
    venv = REPO / f".venv-otel-{instrumentation}"
    requirements = AGENT / f"requirements-{instrumentation}.txt"
    stamp = venv / ".installed"
    if stamp.exists() and stamp.read_text() == _fingerprint(requirements):
        return venv / "bin"
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", "--clear", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run([*pip, "-r", str(requirements), "-e", str(TWIN)], check=True)
    stamp.write_text(_fingerprint(requirements))
    return venv / "bin"


if __name__ == "__main__":
    for name in INSTRUMENTATIONS:
        print(ensure_otel_venv(name))
