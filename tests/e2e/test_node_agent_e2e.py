"""A Node.js agent (express, dd-trace-js, openai and the Vercel AI SDK) gets the RUM session, behind the real proxy.

No hook and no session code in the agent: dd-trace-js (>= 5.114 / 6.3) reads the ``_dd.p.llmobs_sid`` the
proxy propagates with the Datadog trace headers. So these tests depend on the proxy's trace propagation
(its default settings).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.conftest import ensure_node_agent_with_dd_trace, run_node_agent, run_proxy
from tests.e2e.sessions import (
    SOURCES,
    WORKFLOW_TOOL_LLM,
    apm_trace_id_of,
    assert_every_span_has_session,
    chat,
    kind_of,
    new_session_id,
    wait_for_session,
)
from tests.support.testagent import TestAgent, session_id_of, tags_of

pytestmark = pytest.mark.integration

ROUTES = {"openai": "/chat", "ai-sdk": "/chat/ai"}


@pytest.fixture(scope="module")
def proxied_node_agent(test_agent: TestAgent, fake_llm: str) -> Iterator[str]:
    with run_node_agent(test_agent, fake_llm) as agent, run_proxy(agent, tracing=True, test_agent=test_agent) as proxy:
        yield proxy


@pytest.mark.parametrize("route", ROUTES.values(), ids=ROUTES.keys())
@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("source", SOURCES)
def test_every_llmobs_span_of_a_node_agent_carries_the_rum_session(
    proxied_node_agent: str, test_agent: TestAgent, source: str, stream: bool, route: str
) -> None:
    session_id = new_session_id()
    chat(proxied_node_agent, route, session_id, source, stream=stream)
    spans = wait_for_session(test_agent, session_id)
    assert_every_span_has_session(spans, session_id, WORKFLOW_TOOL_LLM)
    integrations = {tags_of(e).get("integration") for e in spans}
    assert integrations >= {"openai" if route == "/chat" else "ai"}, integrations
    assert {tags_of(e).get("language") for e in spans} == {"javascript"}


def test_node_agent_spans_continue_the_browsers_trace(proxied_node_agent: str, test_agent: TestAgent) -> None:
    session_id, trace_id = new_session_id(), random.getrandbits(63)  # noqa: S311 - an id, not a secret
    rum_headers = {
        "x-datadog-trace-id": str(trace_id),
        "x-datadog-parent-id": str(random.getrandbits(63)),  # noqa: S311
        "x-datadog-origin": "rum",
        "x-datadog-sampling-priority": "1",
    }
    chat(proxied_node_agent, "/chat/ai", session_id, "cookie", stream=True, extra_headers=rum_headers)
    spans = wait_for_session(test_agent, session_id)
    assert_every_span_has_session(spans, session_id, WORKFLOW_TOOL_LLM)
    assert {(apm_trace_id_of(e) or 0) & (2**64 - 1) for e in spans} == {trace_id}


@pytest.mark.parametrize(
    ("dd_trace", "has_session"),
    [("5.114.0", True), ("6.3.0", True), ("5.113.0", False)],
    ids=["oldest-5.x", "oldest-6.x", "too-old"],
)
def test_dd_trace_js_versions(test_agent: TestAgent, fake_llm: str, dd_trace: str, has_session: bool) -> None:
    """dd-trace-js reads the propagated _dd.p.llmobs_sid from 5.114.0 / 6.3.0; older spans get no session."""
    app_dir = ensure_node_agent_with_dd_trace(dd_trace)
    session_id = new_session_id()
    with (
        run_node_agent(test_agent, fake_llm, app_dir=app_dir) as agent,
        run_proxy(agent, tracing=True, test_agent=test_agent) as proxy,
    ):
        chat(proxy, "/chat", session_id, "header", stream=True)
        if has_session:
            spans = wait_for_session(test_agent, session_id)
            assert_every_span_has_session(spans, session_id, WORKFLOW_TOOL_LLM)
        else:
            events = test_agent.wait_for_llmobs_spans(lambda evs: len(mine(evs, session_id)) >= 3)
            spans = mine(events, session_id)
            assert {kind_of(e) for e in spans} >= WORKFLOW_TOOL_LLM
            assert all(session_id_of(e) is None for e in spans)
    assert {tags_of(e).get("ddtrace.version") for e in spans} == {dd_trace}


def mine(events: list[dict[str, Any]], marker: str) -> list[dict[str, Any]]:
    """The events of the request whose message held ``marker`` (found through its workflow's input)."""
    traces = {e.get("trace_id") for e in events if marker in str((e.get("meta") or {}).get("input", ""))}
    return [e for e in events if e.get("trace_id") in traces]
