"""When the hook is needed: the proxy-only path, an agent without the hook, and the oldest supported ddtrace."""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.e2e.conftest import run_agent, run_proxy
from tests.e2e.sessions import (
    WORKFLOW_TOOL_LLM,
    assert_every_span_has_session,
    chat,
    kind_of,
    new_session_id,
    spans_of_session,
)
from tests.e2e.sessions import wait_for_session as wait_for_session
from tests.support.ddtrace_venv import ensure_ddtrace_venv
from tests.support.testagent import TestAgent, session_id_of

pytestmark = pytest.mark.integration

OLDEST_DDTRACE = "4.13.0"


# The suite turns APM tracing off for every process it starts (tests/conftest.py); these agents report it.
APM_ON = {"DD_TRACE_ENABLED": "true"}
RUM_TRACE_ID = 7_234_567_890_123_456_789
RUM_PARENT_ID = 4_242_424_242
RUM_TRACE_HEADERS = {
    "x-datadog-trace-id": str(RUM_TRACE_ID),
    "x-datadog-parent-id": str(RUM_PARENT_ID),
    "x-datadog-origin": "rum",
    "x-datadog-sampling-priority": "1",
}


@pytest.mark.parametrize(
    ("framework", "source", "stream"),
    [
        ("fastapi", "header", True),
        ("fastapi", "cookie", False),
        ("flask", "body", True),
        ("django", "query", False),
        ("django", "baggage", False),
    ],
)
def test_proxy_propagation_alone_sets_the_session_of_an_instrumented_agent(
    test_agent: TestAgent, fake_llm: str, framework: str, source: str, stream: bool
) -> None:
    """ddtrace >= 4.13 adopts _dd.p.llmobs_sid from x-datadog-tags: no hook, no proxy span, no Agent for the proxy.

    (A Django StreamingHttpResponse generator runs after the request span is no longer active, so its LLMObs
    spans start a trace of their own: streaming Django views need the hook — hook/README.md.)
    """
    session_id = new_session_id()
    with (
        run_agent(framework, test_agent, fake_llm, hook=False, env=APM_ON) as agent,
        run_proxy(agent, propagate=True) as proxy,
    ):
        chat(proxy, "/chat", session_id, source, stream=stream)
        spans = wait_for_session(test_agent, session_id)
        root = request_span(test_agent, session_id)  # while the agent runs and flushes its APM trace
    assert_every_span_has_session(spans, session_id, WORKFLOW_TOOL_LLM)
    # No trace came from the browser: the proxy started one, and the agent's first span is its root — its parent is
    # the traceparent's span id, which no span reports, with `_dd.parent_id` 0000000000000000 (no Datadog parent),
    # what Datadog shows as the root (README, "Forwarding it"; tests/e2e/test_trace_start_e2e.py).
    assert root.get("parent_id", 0) != 0 and root["meta"].get("_dd.parent_id") == "0000000000000000", root


@pytest.mark.parametrize("apm_span", [False, True], ids=["header-rewrite", "proxy-span"])
def test_the_browser_trace_continues_into_the_agent(test_agent: TestAgent, fake_llm: str, apm_span: bool) -> None:
    """RUM session → APM trace → LLM trace: the agent's spans are in the trace the RUM SDK started."""
    session_id = new_session_id()
    with (
        run_agent("fastapi", test_agent, fake_llm, hook=False, env=APM_ON) as agent,
        run_proxy(agent, propagate=True, apm_span=apm_span, test_agent=test_agent) as proxy,
    ):
        chat(proxy, "/chat", session_id, "body", extra_headers=RUM_TRACE_HEADERS)
        spans = wait_for_session(test_agent, session_id)
        root = request_span(test_agent, session_id)
        trace = trace_spans(test_agent, RUM_TRACE_ID, "rum_proxy.request" if apm_span else "openai.request")
    assert_every_span_has_session(spans, session_id, WORKFLOW_TOOL_LLM)
    assert root["trace_id"] == RUM_TRACE_ID
    names = {span["name"] for span in trace}
    assert {"fastapi.request", "chat", "openai.request"} <= names, names  # the LLM work is in the browser's trace
    if apm_span:  # the proxy's span sits between the browser's resource and the agent's request
        proxy_span = next(span for span in trace if span["name"] == "rum_proxy.request")
        assert (proxy_span["parent_id"], root["parent_id"]) == (RUM_PARENT_ID, proxy_span["span_id"])
    else:
        assert root["parent_id"] == RUM_PARENT_ID  # the agent's request is the browser resource's child


def request_span(test_agent: TestAgent, session_id: str) -> dict[str, Any]:
    """The agent's request span of that session: ddtrace tags it `baggage.session.id` from the forwarded baggage."""
    for _ in range(100):
        for span in test_agent.apm_spans():
            if (span.get("meta") or {}).get("baggage.session.id") == session_id:
                return span
        time.sleep(0.1)  # poll interval while the agent's tracer flushes
    raise AssertionError(f"no APM span tagged baggage.session.id={session_id}")


def trace_spans(test_agent: TestAgent, trace_id: int, name: str) -> list[dict[str, Any]]:
    """Every APM span of one trace (bounded poll until a span called `name` is among them)."""
    spans: list[dict[str, Any]] = []
    for _ in range(100):
        spans = [span for span in test_agent.apm_spans() if span.get("trace_id") == trace_id]
        if any(span.get("name") == name for span in spans):
            break
        time.sleep(0.1)  # poll interval while the tracers flush
    return spans


def test_a_django_streaming_response_needs_the_hook(test_agent: TestAgent, fake_llm: str) -> None:
    """A StreamingHttpResponse's generator runs after ddtrace's Django request span: outside the propagated trace.

    Without the hook its LLMObs spans get no session (with the hook they do: test_hook_e2e.py). If this starts
    failing, ddtrace fixed it: update docs/supported-stacks.md.
    """
    marker = new_session_id()
    with (
        run_agent("django", test_agent, fake_llm, hook=False, env={"DD_TRACE_ENABLED": "true"}) as agent,
        run_proxy(agent, propagate=True) as proxy,
    ):
        chat(proxy, "/chat", marker, "header", stream=True)
        events = test_agent.wait_for_llmobs_spans(lambda evs: len(of_marker(evs, marker)) >= 3)
    mine = of_marker(events, marker)
    assert {kind_of(e) for e in mine} >= WORKFLOW_TOOL_LLM
    assert all(session_id_of(e) is None for e in mine)


def of_marker(events: list[dict[str, Any]], marker: str) -> list[dict[str, Any]]:
    """The events of the trace whose LLM input holds ``marker``."""
    traces = {e.get("trace_id") for e in events if marker in str((e.get("meta") or {}).get("input", ""))}
    return [e for e in events if e.get("trace_id") in traces]


def test_without_hook_or_propagation_spans_have_no_session(test_agent: TestAgent, fake_llm: str) -> None:
    """The negative control: header and baggage alone are not consulted by ddtrace."""
    marker = new_session_id()
    with run_agent("fastapi", test_agent, fake_llm, hook=False) as agent, run_proxy(agent, propagate=False) as proxy:
        chat(proxy, "/chat", marker, "header")
        events = test_agent.wait_for_llmobs_spans(
            lambda evs: len([e for e in evs if marker in str(e.get("meta", {}).get("input", ""))]) >= 1
        )
    mine = [e for e in events if marker in str(e.get("meta", {}).get("input", ""))]
    assert mine
    assert all(session_id_of(e) is None for e in mine)
    assert not spans_of_session(events, marker)


@pytest.mark.parametrize("framework", ["fastapi", "aiohttp"])
def test_hook_on_oldest_supported_ddtrace(test_agent: TestAgent, fake_llm: str, framework: str) -> None:
    python = ensure_ddtrace_venv(OLDEST_DDTRACE)
    session_id = new_session_id()
    with (
        run_agent(framework, test_agent, fake_llm, python=python) as agent,
        run_proxy(agent, propagate=False) as proxy,
    ):
        chat(proxy, "/chat", session_id, "body", stream=True)
        spans = wait_for_session(test_agent, session_id)
    assert_every_span_has_session(spans, session_id, WORKFLOW_TOOL_LLM)
    assert {e["tags"] and next(t for t in e["tags"] if t.startswith("ddtrace.version:")) for e in spans} == {
        f"ddtrace.version:{OLDEST_DDTRACE}"
    }
