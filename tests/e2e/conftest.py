"""End-to-end fixtures: Datadog's test agent, the fake LLM, example agents under ddtrace-run, the real proxy."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from tests.support.processes import REPO, VENV_PYTHON, free_port, running
from tests.support.testagent import TestAgent

AGENTS = REPO / "examples" / "agents"
HOOK_DIR = REPO / "hook"


@pytest.fixture(scope="session")
def fake_llm() -> Iterator[str]:
    port = free_port()
    argv = [str(VENV_PYTHON), str(REPO / "examples" / "fake_llm" / "server.py"), "--port", str(port)]
    with running("fake-llm", argv, ready_url=f"http://127.0.0.1:{port}/healthz"):
        yield f"http://127.0.0.1:{port}/v1"


def datadog_env(test_agent: TestAgent, ml_app: str) -> dict[str, str]:
    return {
        "DD_TRACE_AGENT_URL": test_agent.url,
        "DD_LLMOBS_ENABLED": "1",
        "DD_LLMOBS_ML_APP": ml_app,
        "DD_SERVICE": ml_app,
        "DD_INSTRUMENTATION_TELEMETRY_ENABLED": "false",
        "DD_REMOTE_CONFIGURATION_ENABLED": "false",
        "DD_DYNAMIC_INSTRUMENTATION_ENABLED": "false",
        "DD_CRASHTRACKING_ENABLED": "false",
        # flush quickly so the bounded polls finish early
        "_DD_LLMOBS_WRITER_INTERVAL": "0.2",
        "DD_TRACE_WRITER_INTERVAL_SECONDS": "0.2",
    }


@contextlib.contextmanager
def run_agent(
    framework: str,
    test_agent: TestAgent,
    llm_url: str,
    *,
    python: Path = VENV_PYTHON,
    hook: bool = True,
    env: Mapping[str, str] | None = None,
) -> Iterator[str]:
    """Run examples/agents/<framework>/app.py under ddtrace-run; yield its base URL."""
    port = free_port()
    full_env = {
        **datadog_env(test_agent, f"e2e-{framework}"),
        "OPENAI_BASE_URL": llm_url,
        "OPENAI_API_KEY": "sk-test-not-a-secret",
        "PORT": str(port),
        "PYTHONPATH": str(HOOK_DIR) if hook else "",
        **(env or {}),
    }
    argv = [str(python.parent / "ddtrace-run"), str(python), str(AGENTS / framework / "app.py")]
    base = f"http://127.0.0.1:{port}"
    with running(f"agent-{framework}", argv, env=full_env, ready_url=base + "/healthz", timeout=60):
        yield base


@contextlib.contextmanager
def run_proxy(
    upstream: str, *, propagate: bool, apm_span: bool = False, test_agent: TestAgent | None = None
) -> Iterator[str]:
    """Run the real proxy (python -m proxy) in front of ``upstream``; yield its base URL.

    ``propagate``: the proxy's trace-header rewrite (its default); ``apm_span``: its own ddtrace span too.
    """
    port, admin = free_port(), free_port()
    env = {
        "RUM_PROXY_UPSTREAM_URL": upstream,
        "RUM_PROXY_PORT": str(port),
        "RUM_PROXY_ADMIN_PORT": str(admin),
        "RUM_PROXY_HOST": "127.0.0.1",
        "RUM_PROXY_ADMIN_HOST": "127.0.0.1",
        "RUM_PROXY_PROPAGATE_TRACE": "true" if propagate else "false",
        "RUM_PROXY_APM_SPAN": "true" if apm_span else "false",
        "DD_TRACE_ENABLED": "true" if apm_span else "false",
        "DD_SERVICE": "rum-llmobs-proxy",
        "DD_INSTRUMENTATION_TELEMETRY_ENABLED": "false",
        "DD_REMOTE_CONFIGURATION_ENABLED": "false",
        "DD_TRACE_WRITER_INTERVAL_SECONDS": "0.2",
    }
    if test_agent is not None:
        env["DD_TRACE_AGENT_URL"] = test_agent.url
    argv = [str(VENV_PYTHON), "-m", "proxy"]
    with running("proxy", argv, env=env, ready_url=f"http://127.0.0.1:{admin}/readyz", timeout=30):
        yield f"http://127.0.0.1:{port}"
