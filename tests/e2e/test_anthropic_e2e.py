"""The Datadog guide's own provider: Anthropic SDK calls (JSON and streamed) get the RUM session.

The guide's agent is an ``http.server`` handler calling Anthropic's Messages API; here it calls the fake
Anthropic Messages endpoint of examples/fake_llm/server.py. ddtrace's anthropic integration makes the
``llm`` span. The hook test runs the proxy with its tracing off (only the hook can set the session); the
proxy-only test depends on the proxy's trace propagation (its default).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.conftest import run_agent, run_proxy
from tests.e2e.sessions import (
    SOURCES,
    WORKFLOW_TOOL_LLM,
    assert_every_span_has_session,
    chat,
    kind_of,
    new_session_id,
    wait_for_session,
)
from tests.support.testagent import TestAgent, tags_of

pytestmark = pytest.mark.integration

PATH = "/chat/anthropic"


def assert_anthropic_llm_span(spans: list[dict[str, Any]]) -> None:
    llm = [e for e in spans if kind_of(e) == "llm"]
    assert llm and all(tags_of(e).get("integration") == "anthropic" for e in llm), [e.get("name") for e in llm]


@pytest.fixture(scope="module")
def proxied_guide_agent(test_agent: TestAgent, fake_llm: str) -> Iterator[str]:
    with run_agent("http_server", test_agent, fake_llm) as agent, run_proxy(agent, tracing=False) as proxy:
        yield proxy


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("source", SOURCES)
def test_anthropic_spans_carry_the_rum_session_with_the_hook(
    proxied_guide_agent: str, test_agent: TestAgent, source: str, stream: bool
) -> None:
    session_id = new_session_id()
    chat(proxied_guide_agent, PATH, session_id, source, stream=stream)
    spans = wait_for_session(test_agent, session_id)
    assert_every_span_has_session(spans, session_id, WORKFLOW_TOOL_LLM)
    assert_anthropic_llm_span(spans)


@pytest.fixture(scope="module")
def proxied_fastapi_agent_without_hook(test_agent: TestAgent, fake_llm: str) -> Iterator[str]:
    with (
        run_agent("fastapi", test_agent, fake_llm, hook=False) as agent,
        run_proxy(agent, tracing=True, test_agent=test_agent) as proxy,
    ):
        yield proxy


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_anthropic_spans_carry_the_rum_session_from_proxy_tracing_alone(
    proxied_fastapi_agent_without_hook: str, test_agent: TestAgent, stream: bool
) -> None:
    """No hook: an instrumented framework (FastAPI) adopts the proxy's _dd.p.llmobs_sid, Anthropic spans too."""
    session_id = new_session_id()
    chat(proxied_fastapi_agent_without_hook, PATH, session_id, "cookie", stream=stream)
    spans = wait_for_session(test_agent, session_id)
    assert_every_span_has_session(spans, session_id, WORKFLOW_TOOL_LLM)
    assert_anthropic_llm_span(spans)
