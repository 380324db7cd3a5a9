"""When the hook is needed: the proxy-only path, an agent without the hook, and the oldest supported ddtrace."""

from __future__ import annotations

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


@pytest.mark.parametrize(
    ("framework", "source", "stream"),
    [("fastapi", "header", True), ("fastapi", "cookie", True), ("flask", "body", True), ("django", "query", False)],
)
def test_proxy_tracing_alone_sets_the_session_of_an_instrumented_agent(
    test_agent: TestAgent, fake_llm: str, framework: str, source: str, stream: bool
) -> None:
    """ddtrace >= 4.13 adopts _dd.p.llmobs_sid from x-datadog-tags: no hook needed for the frameworks it instruments."""
    session_id = new_session_id()
    with (
        # APM tracing on, as in production (the test process turns it off for its children by default): ddtrace's
        # WSGI integrations (Flask, Django) extract the trace headers only when it is on.
        run_agent(framework, test_agent, fake_llm, hook=False, env={"DD_TRACE_ENABLED": "true"}) as agent,
        run_proxy(agent, tracing=True, test_agent=test_agent) as proxy,
    ):
        chat(proxy, "/chat", session_id, source, stream=stream)
        spans = wait_for_session(test_agent, session_id)
    assert_every_span_has_session(spans, session_id, WORKFLOW_TOOL_LLM)


def test_a_django_streaming_response_needs_the_hook(test_agent: TestAgent, fake_llm: str) -> None:
    """A StreamingHttpResponse's generator runs after ddtrace's Django request span: outside the propagated trace.

    Without the hook its LLMObs spans get no session (with the hook they do: test_hook_e2e.py). If this starts
    failing, ddtrace fixed it: update the supported-stacks table in README.md.
    """
    marker = new_session_id()
    with (
        run_agent("django", test_agent, fake_llm, hook=False, env={"DD_TRACE_ENABLED": "true"}) as agent,
        run_proxy(agent, tracing=True, test_agent=test_agent) as proxy,
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


def test_without_hook_or_proxy_tracing_spans_have_no_session(test_agent: TestAgent, fake_llm: str) -> None:
    """The negative control: header and baggage alone are not consulted by ddtrace."""
    marker = new_session_id()
    with run_agent("fastapi", test_agent, fake_llm, hook=False) as agent, run_proxy(agent, tracing=False) as proxy:
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
        run_proxy(agent, tracing=False) as proxy,
    ):
        chat(proxy, "/chat", session_id, "body", stream=True)
        spans = wait_for_session(test_agent, session_id)
    assert_every_span_has_session(spans, session_id, WORKFLOW_TOOL_LLM)
    assert {e["tags"] and next(t for t in e["tags"] if t.startswith("ddtrace.version:")) for e in spans} == {
        f"ddtrace.version:{OLDEST_DDTRACE}"
    }
