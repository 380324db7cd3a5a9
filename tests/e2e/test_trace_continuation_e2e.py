"""aiohttp and ``http.server`` agents continue the browser's trace through the proxy (the hook extracts it).

ddtrace instruments neither server, so without the hook their spans would start a new trace at each
request and the RUM → APM → LLM link would stop at the proxy. Both tests depend on the proxy's trace
propagation (its default): it continues the browser's context, or starts one when none came.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.conftest import run_agent, run_proxy_process
from tests.e2e.sessions import (
    WORKFLOW_TOOL_LLM,
    apm_trace_id_of,
    assert_every_span_has_session,
    chat,
    new_session_id,
    rum_trace_headers,
    wait_for_session,
)
from tests.support.processes import Process
from tests.support.testagent import TestAgent, span_id_of

pytestmark = pytest.mark.integration

LOW_64 = 2**64 - 1


@pytest.fixture(scope="module", params=["aiohttp", "http_server"])
def framework_and_proxy(
    request: pytest.FixtureRequest, test_agent: TestAgent, fake_llm: str
) -> Iterator[tuple[str, str, Process]]:
    framework = request.param
    # APM traces on (the test process turns them off for its children): the agent's APM spans are checked too.
    env = {"DD_TRACE_ENABLED": "true"}
    with (
        run_agent(framework, test_agent, fake_llm, env=env) as agent,
        run_proxy_process(agent, tracing=True, test_agent=test_agent) as (proxy, process),
    ):
        yield framework, proxy, process


def logged_trace_id(proxy: Process, session_id: str, timeout: float = 10.0) -> int:
    """The trace id (low 64 bits) the proxy's ``request`` log line names for the request of ``session_id``."""
    deadline = time.monotonic() + timeout
    while True:
        for line in proxy.complete_lines():
            if session_id in line and line.startswith("{"):
                record = json.loads(line)
                if record.get("event") == "request" and record.get("session_id") == session_id:
                    raw = str(record["dd.trace_id"])
                    return (int(raw, 16) if len(raw) == 32 else int(raw)) & LOW_64
        if time.monotonic() > deadline:
            raise AssertionError(f"no request line for {session_id}:\n{proxy.output()}")
        time.sleep(0.05)  # poll interval while the proxy flushes its log lines


def agent_apm_spans(test_agent: TestAgent, service: str, llmobs_spans: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The agent's APM spans behind the request's LLMObs spans (the same span ids), once all arrived."""
    ids = {span_id_of(e) for e in llmobs_spans}

    def mine(spans: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [s for s in spans if s.get("service") == service and s.get("span_id") in ids]

    return mine(test_agent.wait_for_apm_spans(lambda spans: len(mine(spans)) == len(ids)))


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_agent_spans_sit_in_the_trace_the_browser_started(
    framework_and_proxy: tuple[str, str, Process], test_agent: TestAgent, stream: bool
) -> None:
    framework, proxy, _ = framework_and_proxy
    session_id, trace_id = new_session_id(), random.getrandbits(63)  # noqa: S311
    chat(proxy, "/chat", session_id, "cookie", stream=stream, extra_headers=rum_trace_headers(trace_id))
    spans = wait_for_session(test_agent, session_id)
    assert_every_span_has_session(spans, session_id, WORKFLOW_TOOL_LLM)
    assert {(apm_trace_id_of(e) or 0) & LOW_64 for e in spans} == {trace_id}
    apm = agent_apm_spans(test_agent, f"e2e-{framework}", spans)
    assert len(apm) == len(spans)
    assert {s["trace_id"] for s in apm} == {trace_id}


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_without_browser_trace_headers_the_agent_continues_the_proxys_trace(
    framework_and_proxy: tuple[str, str, Process], test_agent: TestAgent, stream: bool
) -> None:
    framework, proxy, proxy_process = framework_and_proxy
    traces = []
    for _ in range(2):  # two requests on the same agent: two traces, never one request's context reused
        session_id = new_session_id()
        chat(proxy, "/chat", session_id, "body", stream=stream)
        spans = wait_for_session(test_agent, session_id)
        assert_every_span_has_session(spans, session_id, WORKFLOW_TOOL_LLM)
        apm = agent_apm_spans(test_agent, f"e2e-{framework}", spans)
        assert len(apm) == len(spans)
        # The trace the proxy started and logged for this request is the agent's.
        assert {s["trace_id"] for s in apm} == {logged_trace_id(proxy_process, session_id)}
        traces.append(apm[0]["trace_id"])
    assert traces[0] != traces[1]
