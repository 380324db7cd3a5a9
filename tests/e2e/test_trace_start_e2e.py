"""A trace the proxy starts (no browser trace came) is one no tracer complains about, whose first span in the agent
is a root for Datadog, and which still carries the session to ddtrace and dd-trace-js (issue 17, item 13).

ddtrace's LLMObs logs "Failed to extract trace/span ID from request headers." for an incoming context whose span
id is 0, which `x-datadog-parent-id: 0` alone was. The proxy now also sends the trace as W3C with a span id of its
own and `p` 0 in tracestate; the tracers record that as `_dd.parent_id` 0000000000000000 on the agent's first
span, which Datadog's backend reads as "no Datadog parent" when the parent span is not in the trace.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.conftest import run_agent_process, run_node_agent, run_proxy
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
from tests.support.testagent import TestAgent

pytestmark = pytest.mark.integration

WARNING = "Failed to extract trace/span ID from request headers"
NO_DATADOG_PARENT = "0000000000000000"
LOW_64 = 2**64 - 1


def first_agent_span(test_agent: TestAgent, spans: list[dict[str, Any]], service: str) -> dict[str, Any]:
    """The agent's first APM span of the trace the LLMObs `spans` belong to: its parent is no span of the agent."""
    (trace_id,) = {(apm_trace_id_of(e) or 0) & LOW_64 for e in spans}

    def mine(apm: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [s for s in apm if s.get("service") == service and s.get("trace_id") == trace_id]

    def roots(apm: list[dict[str, Any]]) -> list[dict[str, Any]]:
        ids = {s["span_id"] for s in mine(apm)}
        return [s for s in mine(apm) if s.get("parent_id") not in ids]

    [root] = roots(test_agent.wait_for_apm_spans(lambda apm: len(roots(apm)) == 1))
    return root


@pytest.fixture(scope="module")
def fastapi_behind_proxy(test_agent: TestAgent, fake_llm: str) -> Iterator[tuple[str, str, Process]]:
    # ddtrace instruments FastAPI (no hook): the server integration extracts the context and LLMObs activates it.
    env = {"DD_TRACE_ENABLED": "true"}
    with (
        run_agent_process("fastapi", test_agent, fake_llm, hook=False, env=env) as (agent, process),
        run_proxy(agent, propagate=True) as proxy,
    ):
        yield proxy, agent, process


def test_ddtrace_takes_the_started_trace_without_a_warning(
    fastapi_behind_proxy: tuple[str, str, Process], test_agent: TestAgent
) -> None:
    proxy, agent, process = fastapi_behind_proxy
    session_id = new_session_id()
    chat(proxy, "/chat", session_id, "body")
    spans = wait_for_session(test_agent, session_id)
    assert_every_span_has_session(spans, session_id, WORKFLOW_TOOL_LLM)
    root = first_agent_span(test_agent, spans, "e2e-fastapi")
    assert root.get("parent_id", 0) != 0 and root["meta"].get("_dd.parent_id") == NO_DATADOG_PARENT, root

    # The browser's trace still continues, its span the parent of the agent's.
    session_id, trace_id, parent_id = new_session_id(), random.getrandbits(63), random.getrandbits(63)  # noqa: S311
    chat(proxy, "/chat", session_id, "cookie", extra_headers=rum_trace_headers(trace_id, parent_id))
    spans = wait_for_session(test_agent, session_id)
    assert_every_span_has_session(spans, session_id, WORKFLOW_TOOL_LLM)
    root = first_agent_span(test_agent, spans, "e2e-fastapi")
    assert (root["trace_id"], root["parent_id"]) == (trace_id, parent_id)

    assert WARNING not in process.output()
    # The control: the same agent does log the warning for the parent id 0 the proxy used to send alone.
    parent_zero = {"x-datadog-trace-id": str(random.getrandbits(63)), "x-datadog-parent-id": "0"}  # noqa: S311
    chat(agent, "/chat", None, "body", extra_headers=parent_zero, marker="control")
    assert WARNING in process.output()


@pytest.fixture(scope="module")
def node_behind_proxy(test_agent: TestAgent, fake_llm: str) -> Iterator[str]:
    with run_node_agent(test_agent, fake_llm) as agent, run_proxy(agent, propagate=True) as proxy:
        yield proxy


def test_dd_trace_js_takes_the_started_trace_as_a_root_with_the_session(
    node_behind_proxy: str, test_agent: TestAgent
) -> None:
    """dd-trace-js reads `_dd.p.llmobs_sid` from x-datadog-tags (it needs both Datadog ids), and records the
    tracestate's `p` 0 as `_dd.parent_id` on the agent's first span."""
    session_id = new_session_id()
    chat(node_behind_proxy, "/chat", session_id, "body")
    spans = wait_for_session(test_agent, session_id)
    assert_every_span_has_session(spans, session_id, WORKFLOW_TOOL_LLM)
    root = first_agent_span(test_agent, spans, "e2e-node-express")
    assert root.get("parent_id", 0) != 0 and root["meta"].get("_dd.parent_id") == NO_DATADOG_PARENT, root
