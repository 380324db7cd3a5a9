"""An OpenTelemetry agent (OpenInference-instrumented openai, OTLP/HTTP export) gets the RUM session.

The agent has no ddtrace and no session code; ``rum-otel-session`` (hook/otel), loaded by
``opentelemetry-instrument`` as an instrumentor, copies the baggage ``session.id`` the proxy forwards onto
every span: ``session.id`` is what Datadog LLM Observability maps to ``session_id`` for OpenInference. Every
source reaches it because the proxy always writes the validated ID into baggage; only the trace-id test
depends on the proxy's trace propagation (W3C ``traceparent``, its default).
"""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest

from tests.e2e.conftest import run_otel_agent, run_proxy
from tests.e2e.sessions import SOURCES, chat, new_session_id
from tests.support.otlp import OtlpReceiver, OtlpSpan, run_otlp_receiver
from tests.support.testagent import TestAgent

pytestmark = pytest.mark.integration

SPAN_KIND = "openinference.span.kind"


@pytest.fixture(scope="module")
def otlp_receiver() -> Iterator[OtlpReceiver]:
    with run_otlp_receiver() as receiver:
        yield receiver


@pytest.fixture(scope="module")
def proxied_otel_agent(otlp_receiver: OtlpReceiver, fake_llm: str, test_agent: TestAgent) -> Iterator[str]:
    with (
        run_otel_agent(otlp_receiver, fake_llm) as agent,
        run_proxy(agent, tracing=True, test_agent=test_agent) as proxy,
    ):
        yield proxy


def request_spans(receiver: OtlpReceiver, marker: str) -> list[OtlpSpan]:
    """Every span of the trace whose LLM span's input holds ``marker``, once the server span has ended too."""

    def of_request(spans: list[OtlpSpan]) -> list[OtlpSpan]:
        llm = [s for s in spans if s.attributes.get(SPAN_KIND) == "LLM" and marker in str(s.attributes)]
        traces = {s.trace_id for s in llm}
        return [s for s in spans if s.trace_id in traces]

    def complete(spans: list[OtlpSpan]) -> bool:
        mine = of_request(spans)
        return any(s.attributes.get(SPAN_KIND) == "LLM" for s in mine) and any(
            s.attributes.get("http.route") == "/chat" for s in mine
        )

    return of_request(receiver.wait_for(complete))


def assert_every_span_has_session(spans: list[OtlpSpan], session_id: str) -> None:
    summary = [(s.name, s.scope, s.attributes.get("session.id")) for s in spans]
    assert any(s.attributes.get(SPAN_KIND) == "LLM" for s in spans), summary
    assert all(s.attributes.get("session.id") == session_id for s in spans), summary
    assert len({s.trace_id for s in spans}) == 1, summary  # one request, one trace


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("source", SOURCES)
def test_every_span_of_an_otel_agent_carries_the_rum_session(
    proxied_otel_agent: str, otlp_receiver: OtlpReceiver, source: str, stream: bool
) -> None:
    session_id = new_session_id()
    chat(proxied_otel_agent, "/chat", session_id, source, stream=stream)
    assert_every_span_has_session(request_spans(otlp_receiver, session_id), session_id)


def test_otel_agent_spans_continue_the_browsers_trace(proxied_otel_agent: str, otlp_receiver: OtlpReceiver) -> None:
    session_id, trace_id, parent_id = new_session_id(), random.getrandbits(63), random.getrandbits(63)  # noqa: S311
    rum_headers = {
        "x-datadog-trace-id": str(trace_id),
        "x-datadog-parent-id": str(parent_id),
        "x-datadog-origin": "rum",
        "x-datadog-sampling-priority": "1",
        "traceparent": f"00-{trace_id:032x}-{parent_id:016x}-01",
        "tracestate": "dd=s:1;o:rum",
    }
    chat(proxied_otel_agent, "/chat", session_id, "cookie", stream=True, extra_headers=rum_headers)
    spans = request_spans(otlp_receiver, session_id)
    assert_every_span_has_session(spans, session_id)
    assert {s.trace_id & (2**64 - 1) for s in spans} == {trace_id}


def test_without_the_twin_otel_spans_have_no_session(otlp_receiver: OtlpReceiver, fake_llm: str) -> None:
    """The negative control: OpenTelemetry alone does not turn baggage into span attributes."""
    session_id = new_session_id()
    with run_otel_agent(otlp_receiver, fake_llm, twin=False) as agent, run_proxy(agent, tracing=False) as proxy:
        chat(proxy, "/chat", session_id, "baggage")
        spans = request_spans(otlp_receiver, session_id)
    assert any(s.attributes.get(SPAN_KIND) == "LLM" for s in spans)
    assert not any("session.id" in s.attributes for s in spans)
