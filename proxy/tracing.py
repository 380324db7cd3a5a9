"""The proxy's own ddtrace span: continue the browser's trace and carry the session into the agent's trace.

The RUM SDK injects Datadog and W3C trace headers. The proxy continues that trace, tags its span with the
session, and puts the ID in the trace context as `_dd.p.llmobs_sid`, which ddtrace (>= 4.13) propagates in
`x-datadog-tags` and uses as the default LLMObs session_id of every LLMObs span of the trace.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # ddtrace is imported only when the span is on: it costs ~30 MB and starts threads
    from ddtrace.trace import Span

LLMOBS_SESSION_TAG = "_dd.p.llmobs_sid"
SPAN_NAME = "rum_proxy.request"


class Tracing:
    """Starts, propagates and finishes the proxy span; every method is a no-op when disabled."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled

    def start(self, headers: Mapping[str, str], method: str, path: str) -> Span | None:
        if not self.enabled:
            return None
        from ddtrace.propagation.http import HTTPPropagator
        from ddtrace.trace import tracer

        parent = HTTPPropagator.extract(headers)  # type: ignore[no-untyped-call]
        span = tracer.start_span(
            SPAN_NAME,
            child_of=parent if parent.trace_id is not None else None,
            resource=f"{method} {path}",
            span_type="web",
            activate=False,  # many requests share one thread and context: the span is passed, never global
        )
        span.set_tag("span.kind", "server")
        span.set_tag("component", "rum-llmobs-proxy")
        span.set_tag("http.method", method)
        return span

    @staticmethod
    def propagate(span: Span | None, session_id: str | None, source: str | None) -> dict[str, str]:
        """Tag the span and return the trace headers to forward (empty when tracing is off)."""
        if span is None:
            return {}
        if session_id is not None:
            span.set_tag("rum.session_id", session_id)
            span.set_tag("rum.session_source", source)
            span.context._meta[LLMOBS_SESSION_TAG] = session_id
        else:
            # A session tag that came with the client's trace context is never forwarded (README, threat model).
            span.context._meta.pop(LLMOBS_SESSION_TAG, None)
        from ddtrace.propagation.http import HTTPPropagator

        headers: dict[str, str] = {}
        HTTPPropagator.inject(span, headers)
        # ddtrace injects the baggage it extracted from the client, session.id included; the proxy forwards the
        # client's baggage itself (rewritten or checked), once.
        headers.pop("baggage", None)
        return headers

    @staticmethod
    def log_ids(span: Span) -> dict[str, str]:
        """dd.trace_id / dd.span_id as ddtrace writes them into log lines (128-bit trace ids in hex)."""
        trace_id = span.trace_id
        rendered = f"{trace_id:032x}" if trace_id >> 64 else str(trace_id)
        return {"dd.trace_id": rendered, "dd.span_id": str(span.span_id)}

    @staticmethod
    def finish(span: Span | None, status: int, error: str | None = None) -> None:
        if span is None:
            return
        span.set_tag("http.status_code", str(status))
        if error is not None:
            span.error = 1
            span.set_tag("error.message", error)
        span.finish()
