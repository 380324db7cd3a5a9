"""The OpenTelemetry example agent's own virtualenv (.venv-otel): OTel packages only, and rum-otel-session.

Separate from the main venv: Datadog's test agent pins an older opentelemetry-proto than the OTLP exporter
needs, and an OTel agent has no ddtrace. Rebuilt only when its requirements change. ``python -m
tests.support.otel_venv`` builds it (make test does).
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

from tests.support.processes import REPO

OTEL_VENV = REPO / ".venv-otel"
REQUIREMENTS = REPO / "examples" / "agents" / "otel_fastapi" / "requirements.txt"
TWIN = REPO / "hook" / "otel"


def _fingerprint() -> str:
    sources = (REQUIREMENTS, TWIN / "pyproject.toml")
    return hashlib.sha256(b"".join(p.read_bytes() for p in sources)).hexdigest()


def ensure_otel_venv(venv: Path = OTEL_VENV) -> Path:
    """Return the venv's bin directory (python, opentelemetry-instrument), building it when needed."""
    stamp = venv / ".installed"
    if stamp.exists() and stamp.read_text() == _fingerprint():
        return venv / "bin"
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", "--clear", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run([*pip, "-r", str(REQUIREMENTS), "-e", str(TWIN)], check=True)
    stamp.write_text(_fingerprint())
    return venv / "bin"


if __name__ == "__main__":
    print(ensure_otel_venv())
