"""Real Chromium, the real @datadog/browser-rum v5/v6/v7 bundles, the real proxy, an unchanged agent.

Every test reads the session ID the browser actually has (`DD_RUM.getInternalContext().session_id`) and checks
what Datadog's test agent received from the agent: every LLMObs span of the chat carries it.
"""

from __future__ import annotations

import base64
import gzip
import json
import time
import uuid
from typing import Any

import aiohttp
import msgpack
import pytest

from tests.support.testagent import TestAgent, session_id_of

from .cdp import Page, SentRequest, connect
from .conftest import Stack

pytestmark = pytest.mark.integration

# The request headers the RUM SDK adds to a fetch matched by `allowedTracingUrls` (default propagators
# datadog + tracecontext, plus baggage: default in v7, opt-in in v6): a cross-origin agent must allow exactly
# these in CORS. examples/demo/README.md documents the same list.
RUM_TRACING_HEADERS = {
    "x-datadog-trace-id",
    "x-datadog-parent-id",
    "x-datadog-origin",
    "x-datadog-sampling-priority",
    "traceparent",
    "tracestate",
    "baggage",
}
LLMOBS_KINDS = {"workflow", "tool", "llm"}
MASK64 = (1 << 64) - 1


async def open_chat(page: Page, stack: Stack, query: str) -> str:
    """Load the chat page through the proxy; return the RUM session ID the browser's SDK reports."""
    await page.goto(f"{stack.url}/?{query}")
    await page.wait_for("window.demo && window.demo.ready")
    session_id = await page.wait_for("DD_RUM.getInternalContext() && DD_RUM.getInternalContext().session_id")
    assert isinstance(session_id, str)
    return session_id


async def chat(page: Page, message: str) -> dict[str, Any]:
    record = await page.evaluate(f"window.demo.chat({json.dumps(message)}).then(r => JSON.parse(JSON.stringify(r)))")
    assert record["status"] == 200, record
    assert record["error"] is None, record
    return dict(record)


def chat_spans(test_agent: TestAgent, token: str) -> list[dict[str, Any]]:
    """The LLMObs span events of the trace whose LLM call saw ``token``, once workflow, tool and LLM all arrived."""

    def of_trace(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        traces = {e.get("trace_id") for e in events if token in json.dumps(e, default=str)}
        return [e for e in events if e.get("trace_id") in traces]

    events = test_agent.wait_for_llmobs_spans(
        lambda events: LLMOBS_KINDS <= {e.get("meta", {}).get("span", {}).get("kind") for e in of_trace(events)}
    )
    spans = of_trace(events)
    kinds = {e.get("meta", {}).get("span", {}).get("kind") for e in spans}
    assert LLMOBS_KINDS <= kinds, f"spans of {token!r}: {kinds}"
    return spans


def assert_every_span_has(spans: list[dict[str, Any]], session_id: str) -> None:
    assert {(e.get("name"), session_id_of(e)) for e in spans} == {(e.get("name"), session_id) for e in spans}


def proxy_spans(test_agent: TestAgent, session_id: str) -> list[dict[str, Any]]:
    """The proxy's own `rum_proxy.request` APM spans that forwarded ``session_id`` (bounded poll)."""
    deadline = time.monotonic() + 30
    while True:
        found = [
            span
            for request in test_agent.requests()
            if "/v0.4/traces" in str(request.get("url"))
            for trace in _msgpack_body(request)
            for span in trace
            if span.get("name") == "rum_proxy.request" and span.get("meta", {}).get("rum.session_id") == session_id
        ]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.1)  # poll interval while the proxy flushes


def _msgpack_body(request: dict[str, Any]) -> list[list[dict[str, Any]]]:
    raw = base64.b64decode(request.get("body") or "")
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    return list(msgpack.unpackb(raw, raw=False, strict_map_key=False) or [])


def the_chat_request(page: Page) -> SentRequest:
    """The page's one POST /chat, after checking that nothing the page requested left the machine."""
    remote = [r.url for r in page.requests.values() if r.url.startswith(("http:", "https:", "ws:", "wss:"))]
    assert [url for url in remote if not url.startswith("http://127.0.0.1:")] == []
    sent = page.sent("/chat")
    assert len(sent) == 1, [r.url for r in sent]
    return sent[0]


def rum_cookies(request: SentRequest) -> set[str]:
    names = {part.split("=", 1)[0].strip() for part in request.headers.get("cookie", "").split(";")}
    return names & {"_dd_s", "_dd_s_v2"}


async def chat_once(browser_ws_url: str, stack: Stack, query: str) -> tuple[str, str, SentRequest]:
    """Open the page with `query`, send one chat message; return its token, the page's session ID and request."""
    token = f"tok-{uuid.uuid4().hex[:12]}"
    async with connect(browser_ws_url) as browser, browser.new_page() as page:
        session_id = await open_chat(page, stack, query)
        await chat(page, f"how long does shipping take? {token}")
        return token, session_id, the_chat_request(page)


@pytest.mark.parametrize(("send", "source"), [("body", "body"), ("query", "query")])
async def test_id_sent_by_the_page_reaches_every_llmobs_span(
    browser_ws_url: str, stack: Stack, send: str, source: str
) -> None:
    """(a)/(b) The Datadog guide's way. local-storage persistence and no tracing: nothing else carries the ID."""
    query = f"rum=7&send={send}&tracing=0&persistence=local-storage"
    token, session_id, request = await chat_once(browser_ws_url, stack, query)

    assert not rum_cookies(request) and "baggage" not in request.headers
    if send == "query":
        assert request.url.endswith(f"/chat?session_id={session_id}")
    assert_every_span_has(chat_spans(stack.test_agent, token), session_id)
    assert {s["meta"]["rum.session_source"] for s in proxy_spans(stack.test_agent, session_id)} == {source}


@pytest.mark.parametrize("rum", ["5", "6", "7"])
async def test_rum_cookie_alone_reaches_every_llmobs_span(browser_ws_url: str, stack: Stack, rum: str) -> None:
    """(c) Same origin, no frontend change: the page sends nothing, the SDK's own cookie carries the session."""
    token, session_id, request = await chat_once(browser_ws_url, stack, f"rum={rum}&send=none&tracing=0")

    assert rum_cookies(request) == ({"_dd_s_v2"} if rum == "7" else {"_dd_s"})
    assert not RUM_TRACING_HEADERS & request.headers.keys()
    assert_every_span_has(chat_spans(stack.test_agent, token), session_id)
    assert {s["meta"]["rum.session_source"] for s in proxy_spans(stack.test_agent, session_id)} == {"cookie"}


@pytest.mark.parametrize(("rum", "opt_in"), [("7", ""), ("6", "&baggage=1")], ids=["v7-default", "v6-opt-in"])
async def test_baggage_alone_reaches_every_llmobs_span_and_the_trace_continues(
    browser_ws_url: str, stack: Stack, rum: str, opt_in: str
) -> None:
    """(d) `allowedTracingUrls` with `propagateTraceBaggage` (v7 default, v6 opt-in); local-storage: no cookie."""
    query = f"rum={rum}&send=none&tracing=1&persistence=local-storage{opt_in}"
    token, session_id, request = await chat_once(browser_ws_url, stack, query)

    assert not rum_cookies(request)
    assert f"session.id={session_id}" in request.headers["baggage"].split(",")
    # What the SDK added is exactly the CORS allow-list docs/frontend.md gives for cross-origin agents.
    added = {name for name in request.headers if name.startswith(("x-datadog-", "trace", "baggage"))}
    assert added == RUM_TRACING_HEADERS
    spans = chat_spans(stack.test_agent, token)
    assert_every_span_has(spans, session_id)
    assert {s["meta"]["rum.session_source"] for s in proxy_spans(stack.test_agent, session_id)} == {"baggage"}
    assert_trace_continues(request, spans)


def assert_trace_continues(request: SentRequest, spans: list[dict[str, Any]]) -> None:
    """The trace the RUM SDK started is the trace of the agent's spans (through the proxy)."""
    datadog_trace_id = int(request.headers["x-datadog-trace-id"])
    w3c_trace_id = int(request.headers["traceparent"].split("-")[1], 16)
    assert w3c_trace_id & MASK64 == datadog_trace_id
    # An LLMObs event's own `trace_id` is LLM Observability's; `_dd.apm_trace_id` is the APM trace it ran in.
    assert {int(e["_dd"]["apm_trace_id"]) for e in spans} == {w3c_trace_id}


@pytest.mark.parametrize("rum", ["5", "6", "7"])
async def test_trace_started_by_the_rum_sdk_continues_into_the_agent(
    browser_ws_url: str, stack: Stack, rum: str
) -> None:
    token, session_id, request = await chat_once(browser_ws_url, stack, f"rum={rum}&send=none&tracing=1")

    spans = chat_spans(stack.test_agent, token)
    assert_trace_continues(request, spans)
    assert_every_span_has(spans, session_id)


async def test_streamed_answer_arrives_in_pieces_through_the_proxy(browser_ws_url: str, stack: Stack) -> None:
    """The LLM holds its answer after the first word until released: the page must already show that word."""
    gate = uuid.uuid4().hex[:12]
    text = f"tell me a story [gate:{gate}]"
    async with connect(browser_ws_url) as browser, browser.new_page() as page:
        session_id = await open_chat(page, stack, "rum=7&send=none&stream=1")
        await page.evaluate(f"window.demo.chat({json.dumps(text)}); true")
        first = await page.wait_for("window.demo.chats.length && window.demo.chats.at(-1).chunks.join('')")
        assert first == "You "
        assert await page.evaluate("window.demo.chats.at(-1).done") is False
        assert await page.evaluate("document.querySelector('.message.assistant:last-child span').textContent") == "You "

        async with aiohttp.ClientSession() as http, http.post(f"{stack.llm}/release/{gate}") as released:
            assert released.status == 200
        record = await page.wait_for("window.demo.chats.at(-1).done && window.demo.chats.at(-1)")

    assert record["status"] == 200 and record["error"] is None
    assert "".join(record["chunks"]) == f"You said: {text} "
    assert record["chunks"][0] == "You " and len(record["chunks"]) > 1
    assert_every_span_has(chat_spans(stack.test_agent, gate), session_id)
