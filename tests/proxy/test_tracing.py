"""The proxy continues the browser's trace and carries the session in `_dd.p.llmobs_sid`."""

from __future__ import annotations

from typing import Any

from tests.proxy.conftest import SESSION_ID, Upstream

RUM_TRACE_HEADERS = {
    "x-datadog-trace-id": "1234567890123456789",
    "x-datadog-parent-id": "987654321",
    "x-datadog-origin": "rum",
    "x-datadog-sampling-priority": "1",
    "traceparent": "00-0000000000000000112210f47de98115-000000003ade68b1-01",
    "tracestate": "dd=s:1;o:rum",
}


def seen(upstream: Upstream) -> dict[str, str]:
    return {name.lower(): value for name, value in upstream.last["headers"]}


async def test_trace_is_continued_and_session_propagated(make_proxy: Any, upstream: Upstream) -> None:
    client = await make_proxy(tracing=True)
    await client.post("/chat", json={"session_id": SESSION_ID}, headers=RUM_TRACE_HEADERS)
    headers = seen(upstream)
    assert headers["x-datadog-trace-id"] == "1234567890123456789"
    assert headers["x-datadog-parent-id"] != "987654321"  # the proxy's span is the new parent
    assert "_dd.p.llmobs_sid=" + SESSION_ID in headers["x-datadog-tags"].split(",")
    assert headers["x-datadog-origin"] == "rum"
    assert headers["traceparent"].split("-")[1] == "0000000000000000112210f47de98115"
    assert "t.llmobs_sid:" + SESSION_ID in headers["tracestate"]
    assert headers["baggage"] == f"session.id={SESSION_ID}"


async def test_a_trace_is_started_when_the_browser_sent_none(make_proxy: Any, upstream: Upstream) -> None:
    client = await make_proxy(tracing=True)
    await client.get("/chat", params={"session_id": SESSION_ID})
    headers = seen(upstream)
    assert int(headers["x-datadog-trace-id"]) > 0
    assert "_dd.p.llmobs_sid=" + SESSION_ID in headers["x-datadog-tags"].split(",")


async def test_no_session_no_llmobs_tag(make_proxy: Any, upstream: Upstream) -> None:
    client = await make_proxy(tracing=True)
    await client.get("/chat", headers=RUM_TRACE_HEADERS)
    assert "llmobs_sid" not in seen(upstream).get("x-datadog-tags", "")


async def test_with_tracing_off_trace_headers_pass_untouched(make_proxy: Any, upstream: Upstream) -> None:
    client = await make_proxy(tracing=False)
    await client.get("/chat", params={"session_id": SESSION_ID}, headers=RUM_TRACE_HEADERS)
    headers = seen(upstream)
    for name, value in RUM_TRACE_HEADERS.items():
        assert headers[name] == value
    assert headers["x-rum-session-id"] == SESSION_ID
