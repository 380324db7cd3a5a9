"""Send a chat request carrying a RUM session ID in one of the browser's ways, and check the LLMObs spans."""

from __future__ import annotations

import json
import random
import time
import urllib.request
import uuid
from collections.abc import Iterable
from typing import Any

from tests.support.testagent import TestAgent, session_id_of, tags_of

SOURCES = ("body", "query", "header", "baggage", "cookie")
WORKFLOW_TOOL_LLM = frozenset({"workflow", "tool", "llm"})


def new_session_id() -> str:
    return str(uuid.uuid4())


def rum_cookie(session_id: str) -> str:
    now = int(time.time() * 1000)
    return f"_dd_s=rum=2&id={session_id}&created={now}&expire={now + 15 * 60 * 1000}"


def chat(
    base_url: str,
    path: str,
    session_id: str | None,
    source: str,
    *,
    stream: bool = False,
    extra_body: dict[str, Any] | None = None,
    extra_headers: dict[str, str] | None = None,
    marker: str | None = None,
) -> str:
    message = f"How long is shipping? ({marker or session_id})"
    body: dict[str, Any] = {"message": message, "stream": stream, **(extra_body or {})}
    headers = {"Content-Type": "application/json", **(extra_headers or {})}
    url = base_url + path
    if session_id is not None:
        if source == "body":
            body["session_id"] = session_id
        elif source == "query":
            url += f"?session_id={session_id}"
        elif source == "header":
            headers["x-rum-session-id"] = session_id
        elif source == "baggage":
            headers["baggage"] = f"session.id={session_id}"
        elif source == "cookie":
            headers["Cookie"] = rum_cookie(session_id)
        else:
            raise ValueError(source)
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers, method="POST")
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 200
        text: str = response.read().decode()
    assert "You said: How long is shipping?" in text
    return text


def _traces_of(events: Iterable[dict[str, Any]], session_id: str) -> set[str]:
    return {str(e.get("trace_id")) for e in events if session_id_of(e) == session_id}


def spans_of_session(events: list[dict[str, Any]], session_id: str) -> list[dict[str, Any]]:
    """Every LLMObs span of the LLMObs traces in which ``session_id`` appears."""
    traces = _traces_of(events, session_id)
    return [e for e in events if str(e.get("trace_id")) in traces]


def kind_of(event: dict[str, Any]) -> str:
    """The span kind: ddtrace nests it (``meta.span.kind``), dd-trace-js flattens it (``meta["span.kind"]``)."""
    meta = event.get("meta") or {}
    return str((meta.get("span") or {}).get("kind") or meta.get("span.kind") or "")


def apm_trace_id_of(event: dict[str, Any]) -> int | None:
    """The APM trace an LLMObs span belongs to (``_dd.apm_trace_id``), as an integer."""
    raw = str((event.get("_dd") or {}).get("apm_trace_id") or "")
    if not raw:  # an event that rode its APM span (meta_struct): that span's trace id, its low 64 bits
        apm_span_trace_id = (event.get("_apm_span") or {}).get("trace_id")
        return int(apm_span_trace_id) if apm_span_trace_id is not None else None
    # dd-trace-js always writes 32 hex digits; ddtrace writes a 64-bit id in decimal, a 128-bit one in hex.
    return int(raw, 16) if len(raw) == 32 else int(raw)


def wait_for_session(
    test_agent: TestAgent, session_id: str, kinds: frozenset[str] = WORKFLOW_TOOL_LLM, timeout: float = 20.0
) -> list[dict[str, Any]]:
    """Bounded poll until every expected span kind of the request arrived carrying ``session_id``."""

    def complete(events: list[dict[str, Any]]) -> bool:
        spans = spans_of_session(events, session_id)
        return kinds <= {kind_of(e) for e in spans} and all(session_id_of(e) == session_id for e in spans)

    return spans_of_session(test_agent.wait_for_llmobs_spans(complete, timeout=timeout), session_id)


def assert_every_span_has_session(spans: list[dict[str, Any]], session_id: str, kinds: frozenset[str]) -> None:
    summary = [(e.get("name"), kind_of(e), session_id_of(e)) for e in spans]
    assert kinds <= {kind_of(e) for e in spans}, summary
    assert all(session_id_of(e) == session_id for e in spans), summary
    assert all(tags_of(e).get("session_id") == session_id for e in spans), summary


def rum_trace_headers(trace_id: int, parent_id: int | None = None) -> dict[str, str]:
    """What the RUM SDK sends to an ``allowedTracingUrls`` URL: Datadog and W3C trace headers."""
    if parent_id is None:
        parent_id = random.getrandbits(63)  # noqa: S311 - an id, not a secret
    return {
        "x-datadog-trace-id": str(trace_id),
        "x-datadog-parent-id": str(parent_id),
        "x-datadog-origin": "rum",
        "x-datadog-sampling-priority": "1",
        "traceparent": f"00-{trace_id:032x}-{parent_id:016x}-01",
        "tracestate": "dd=s:1;o:rum",
    }
