"""The proxy continues the browser's trace and carries the session in `_dd.p.llmobs_sid`, without a span of its
own by default (RUM_PROXY_APM_SPAN adds one)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.trace_context import MAX_TAGS_LENGTH, propagate, tags_with_session, tracestate_with_session
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


def index(headers: dict[str, str]) -> dict[bytes, list[bytes]]:
    return {name.encode(): [value.encode()] for name, value in headers.items()}


async def test_the_browser_trace_is_continued_and_the_session_added(proxy: Any, upstream: Upstream) -> None:
    await proxy.post("/chat", json={"session_id": SESSION_ID}, headers=RUM_TRACE_HEADERS)
    headers = seen(upstream)
    assert headers["x-datadog-trace-id"] == "1234567890123456789"
    assert headers["x-datadog-parent-id"] == "987654321"  # no proxy span: the agent's span is the browser's child
    assert headers["x-datadog-tags"] == "_dd.p.llmobs_sid=" + SESSION_ID
    assert (headers["x-datadog-origin"], headers["x-datadog-sampling-priority"]) == ("rum", "1")
    assert headers["traceparent"] == RUM_TRACE_HEADERS["traceparent"]
    assert headers["tracestate"] == f"dd=s:1;o:rum;t.llmobs_sid:{SESSION_ID}"
    assert headers["baggage"] == f"session.id={SESSION_ID}"


async def test_a_root_trace_is_started_when_the_browser_sent_none(proxy: Any, upstream: Upstream) -> None:
    await proxy.get("/chat", params={"session_id": SESSION_ID})
    headers = seen(upstream)
    assert int(headers["x-datadog-trace-id"]) > 0
    # parent 0: the agent's first span is a root, and dd-trace-js still reads x-datadog-tags (it needs both ids).
    assert headers["x-datadog-parent-id"] == "0"
    tags = dict(tag.split("=", 1) for tag in headers["x-datadog-tags"].split(","))
    assert tags["_dd.p.llmobs_sid"] == SESSION_ID
    assert len(tags["_dd.p.tid"]) == 16
    # The same trace in W3C, with a span id of its own (ddtrace's LLMObs warns on a span id 0) and `p` 0 (no
    # Datadog parent), which the tracers record as the agent span's `_dd.parent_id`: a root for Datadog.
    _, trace_id, span_id, _ = headers["traceparent"].split("-")
    assert trace_id == tags["_dd.p.tid"] + f"{int(headers['x-datadog-trace-id']):016x}" and int(span_id, 16) > 0
    assert headers["tracestate"] == f"dd=p:0000000000000000;t.llmobs_sid:{SESSION_ID}"


async def test_no_session_leaves_the_trace_as_it_came(proxy: Any, upstream: Upstream) -> None:
    await proxy.get("/chat", headers=RUM_TRACE_HEADERS)
    headers = seen(upstream)
    assert "llmobs_sid" not in headers.get("x-datadog-tags", "")
    for name, value in RUM_TRACE_HEADERS.items():
        assert headers[name] == value


async def test_no_session_and_no_trace_adds_no_trace_headers(proxy: Any, upstream: Upstream) -> None:
    await proxy.get("/chat")
    assert not {"x-datadog-trace-id", "x-datadog-tags", "traceparent"} & seen(upstream).keys()


async def test_a_client_llmobs_session_tag_is_replaced_by_the_validated_one(proxy: Any, upstream: Upstream) -> None:
    forged = {**RUM_TRACE_HEADERS, "x-datadog-tags": "_dd.p.dm=-4,_dd.p.llmobs_sid=not-the-rum-one"}
    await proxy.get("/chat", params={"session_id": SESSION_ID}, headers=forged)
    assert seen(upstream)["x-datadog-tags"] == f"_dd.p.dm=-4,_dd.p.llmobs_sid={SESSION_ID}"


async def test_underscore_spellings_of_trace_headers_never_reach_the_upstream(proxy: Any, upstream: Upstream) -> None:
    await proxy.get("/chat", params={"session_id": SESSION_ID}, headers={"X_Datadog_Tags": "_dd.p.llmobs_sid=x"})
    assert "x_datadog_tags" not in seen(upstream)


async def test_with_propagation_off_trace_headers_pass_untouched(make_proxy: Any, upstream: Upstream) -> None:
    client = await make_proxy(propagate_trace=False)
    await client.get("/chat", params={"session_id": SESSION_ID}, headers=RUM_TRACE_HEADERS)
    headers = seen(upstream)
    for name, value in RUM_TRACE_HEADERS.items():
        assert headers[name] == value
    assert headers["x-rum-session-id"] == SESSION_ID


async def test_the_apm_span_continues_the_trace_and_becomes_the_parent(make_proxy: Any, upstream: Upstream) -> None:
    client = await make_proxy(tracing=True)
    await client.post("/chat", json={"session_id": SESSION_ID}, headers=RUM_TRACE_HEADERS)
    headers = seen(upstream)
    assert headers["x-datadog-trace-id"] == "1234567890123456789"
    assert headers["x-datadog-parent-id"] != "987654321"  # the proxy's span is the new parent
    assert "_dd.p.llmobs_sid=" + SESSION_ID in headers["x-datadog-tags"].split(",")
    assert headers["traceparent"].split("-")[1] == "0000000000000000112210f47de98115"
    assert "t.llmobs_sid:" + SESSION_ID in headers["tracestate"]


@pytest.mark.parametrize(
    ("incoming", "expected_trace_id"),
    [
        ({"x-datadog-trace-id": "abc"}, None),  # not a trace id: a new trace is started
        ({"x-datadog-trace-id": "0"}, None),
        ({"x-datadog-trace-id": str(2**64)}, None),
        ({"x-datadog-trace-id": "42"}, b"42"),
    ],
)
def test_only_valid_datadog_trace_ids_are_continued(incoming: dict[str, str], expected_trace_id: bytes | None) -> None:
    result = propagate(index(incoming), SESSION_ID, ids=lambda: (1 << 32, 7))
    if expected_trace_id is None:
        assert result.headers[b"x-datadog-trace-id"] == b"7"
    else:
        assert result.headers[b"x-datadog-trace-id"] == expected_trace_id
        assert result.headers[b"x-datadog-parent-id"] == b"0"  # a missing parent id is sent as 0


def test_a_w3c_only_context_gets_the_session_in_tracestate() -> None:
    traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    result = propagate(index({"traceparent": traceparent, "tracestate": "rojo=00f067aa0ba902b7"}), SESSION_ID)
    assert result.headers == {
        b"traceparent": traceparent.encode(),
        b"tracestate": f"dd=t.llmobs_sid:{SESSION_ID},rojo=00f067aa0ba902b7".encode(),
    }
    assert result.log_trace_id == "4bf92f3577b34da6a3ce929d0e0e4736"


def test_tags_over_the_length_limit_are_left_as_they_came() -> None:
    long_tags = b"_dd.p.x=" + b"a" * (MAX_TAGS_LENGTH - 20)
    assert tags_with_session(long_tags, SESSION_ID.encode()) == long_tags
    result = propagate(index({"x-datadog-trace-id": "42", "x-datadog-tags": long_tags.decode()}), SESSION_ID)
    assert result.headers[b"x-datadog-tags"] == long_tags


@given(st.lists(st.from_regex(r"[a-z0-9_.]{1,8}=[a-z0-9:;_.-]{0,12}", fullmatch=True), max_size=40))
def test_tracestate_keeps_other_vendors_and_one_dd_member(members: list[str]) -> None:
    state = tracestate_with_session([",".join(members).encode()], SESSION_ID.encode())
    assert state is not None
    parts = state.split(b",")
    assert parts[0].startswith(b"dd=") and parts[0].endswith(SESSION_ID.encode())
    assert sum(1 for part in parts if part.startswith(b"dd=")) == 1
    assert len(parts) <= 32
