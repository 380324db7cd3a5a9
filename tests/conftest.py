"""Settings every test process shares, and Datadog's test agent for the suites that start real processes."""

from __future__ import annotations

import importlib
import os
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.testagent import TestAgent, run_test_agent

# The proxy's ddtrace must never try to reach a Datadog Agent from the unit suite.
os.environ.setdefault("DD_TRACE_ENABLED", "false")
os.environ.setdefault("DD_INSTRUMENTATION_TELEMETRY_ENABLED", "false")
os.environ.setdefault("DD_REMOTE_CONFIGURATION_ENABLED", "false")


ROOT = Path(__file__).resolve().parent.parent


def pytest_sessionstart(session: pytest.Session) -> None:
    """The suite tests what ships: the request path compiled by mypyc (setup.py) and up to date with its source,
    or, with RUM_LLMOBS_PROXY_PURE_PYTHON=1, the same modules as plain Python."""
    with (ROOT / "pyproject.toml").open("rb") as file:
        modules: list[str] = tomllib.load(file)["tool"]["rum-llmobs-proxy"]["compiled"]
    pure = os.environ.get("RUM_LLMOBS_PROXY_PURE_PYTHON") == "1"
    # Each module's extension is a thin shim, rebuilt only when its interface changes; the code is in the group's
    # shared library (setup.py), rebuilt on every change.
    built = max((path.stat().st_mtime for path in (ROOT / "proxy").glob("_compiled__mypyc.*")), default=0.0)
    for name in modules:
        loaded = Path(importlib.import_module(name).__file__ or "")
        source = ROOT / (name.replace(".", "/") + ".py")
        if pure and loaded.suffix != ".py":
            pytest.exit(
                f"RUM_LLMOBS_PROXY_PURE_PYTHON=1 but {name} is compiled ({loaded.name}): run `make clean-compiled`"
            )
        if not pure and loaded.suffix == ".py":
            pytest.exit(f"{name} is not compiled: run `make compile` (or set RUM_LLMOBS_PROXY_PURE_PYTHON=1)")
        if not pure and source.stat().st_mtime > built:
            pytest.exit(f"the compiled {name} is older than {source.name}: run `make compile`")


@pytest.fixture(scope="session")
def test_agent() -> Iterator[TestAgent]:
    """Datadog's test agent (ddapm-test-agent) on a free loopback port, standing in for the Datadog Agent."""
    with run_test_agent() as agent:
        yield agent
