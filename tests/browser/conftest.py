"""Browser end-to-end fixtures: Debian's Chromium, the real RUM SDK bundles, and the demo stack with free ports.

Chromium ──► proxy (tracing on) ──► examples/demo/agent_with_page.py (the FastAPI example agent, unchanged,
                                     plus the page) under ddtrace-run with the hook ──► gated fake LLM
page's RUM SDK ──► examples/demo/console.py (local RUM intake)      ddtrace ──► Datadog's test agent
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.processes import REPO, VENV_PYTHON, free_port, running
from tests.support.testagent import TestAgent

from .cdp import CHROMIUM_FLAGS, wait_for_devtools_url

CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))
DEMO = REPO / "examples" / "demo"
WEB = DEMO / "web"
RUM_VERSIONS = ("5", "6", "7")

DDTRACE_ENV = {
    "DD_INSTRUMENTATION_TELEMETRY_ENABLED": "false",
    "DD_REMOTE_CONFIGURATION_ENABLED": "false",
    "DD_DYNAMIC_INSTRUMENTATION_ENABLED": "false",
    "DD_CRASHTRACKING_ENABLED": "false",
    "DD_TRACE_WRITER_INTERVAL_SECONDS": "0.2",
    "_DD_LLMOBS_WRITER_INTERVAL": "0.2",
    # v0.4 (not the default v0.5) so the tests can read the proxy's span tags back from the test agent.
    "DD_TRACE_API_VERSION": "v0.4",
}


def ensure_browser_tools() -> None:
    """Idempotent, and fast when everything is there: Chromium from Debian, the RUM SDK bundles from npm."""
    if not CHROMIUM.exists():
        apt = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=apt)
        subprocess.run(["apt-get", "install", "-y", "-qq", "chromium"], check=True, env=apt)
    if not all((WEB / "node_modules" / f"rum{v}" / "bundle" / "datadog-rum.js").is_file() for v in RUM_VERSIONS):
        npm = shutil.which("npm")
        if npm is None:
            pytest.fail("npm is needed to install the RUM SDK bundles (apt-get install -y npm)")
        subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=WEB, check=True)


@pytest.fixture(scope="session")
def browser_ws_url() -> Iterator[str]:
    """One headless Chromium for the session; each test gets its own browser context (cookies, storage)."""
    ensure_browser_tools()
    with tempfile.TemporaryDirectory(prefix="chromium-") as profile:
        argv = [str(CHROMIUM), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "about:blank"]
        with running("chromium", argv):
            yield wait_for_devtools_url(Path(profile))


@pytest.fixture(scope="session")
def gated_llm() -> Iterator[str]:
    port = free_port()
    argv = [str(VENV_PYTHON), str(REPO / "tests" / "browser" / "gated_llm.py"), "--port", str(port)]
    with running("gated-llm", argv, ready_url=f"http://127.0.0.1:{port}/healthz"):
        yield f"http://127.0.0.1:{port}"


@pytest.fixture(scope="session")
def console() -> Iterator[str]:
    port = free_port()
    argv = [str(VENV_PYTHON), str(DEMO / "console.py"), "--port", str(port)]
    with running("console", argv, ready_url=f"http://127.0.0.1:{port}/healthz"):
        yield f"http://127.0.0.1:{port}"


@dataclass(frozen=True)
class Stack:
    url: str  # the proxy: the page and /chat
    llm: str
    test_agent: TestAgent


@pytest.fixture(scope="session")
def stack(browser_ws_url: str, test_agent: TestAgent, gated_llm: str, console: str) -> Iterator[Stack]:
    agent_port, proxy_port, admin_port = free_port(), free_port(), free_port()
    common = {**DDTRACE_ENV, "DD_TRACE_AGENT_URL": test_agent.url}
    agent_env = {
        **common,
        "DD_LLMOBS_ENABLED": "1",
        "DD_LLMOBS_ML_APP": "browser-e2e",
        "DD_SERVICE": "browser-e2e-agent",
        "OPENAI_BASE_URL": gated_llm + "/v1",
        "OPENAI_API_KEY": "sk-test-not-a-secret",
        "PORT": str(agent_port),
        "PYTHONPATH": str(REPO / "hook"),
        "DEMO_CONSOLE_URL": console,
        "DEMO_RUM_INTAKE_URL": console + "/rum-intake",
    }
    agent_argv = [str(VENV_PYTHON.parent / "ddtrace-run"), str(VENV_PYTHON), str(DEMO / "agent_with_page.py")]
    proxy_env = {
        **common,
        "RUM_PROXY_UPSTREAM_URL": f"http://127.0.0.1:{agent_port}",
        "RUM_PROXY_HOST": "127.0.0.1",
        "RUM_PROXY_PORT": str(proxy_port),
        "RUM_PROXY_ADMIN_HOST": "127.0.0.1",
        "RUM_PROXY_ADMIN_PORT": str(admin_port),
        # The proxy's own span (RUM_PROXY_APM_SPAN) records where it found the ID (rum.session_source), which
        # these tests read back from the test agent; the demo test covers the default, span-less propagation.
        "RUM_PROXY_APM_SPAN": "true",
        "DD_TRACE_ENABLED": "true",
        "DD_SERVICE": "rum-llmobs-proxy",
    }
    agent_ready = f"http://127.0.0.1:{agent_port}/healthz"
    proxy_ready = f"http://127.0.0.1:{admin_port}/readyz"
    with (
        running("agent-with-page", agent_argv, env=agent_env, ready_url=agent_ready, timeout=60),
        running("proxy", [str(VENV_PYTHON), "-m", "proxy"], env=proxy_env, ready_url=proxy_ready),
    ):
        yield Stack(f"http://127.0.0.1:{proxy_port}", gated_llm, test_agent)
