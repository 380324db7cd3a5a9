"""An OpenTelemetry agent (OTLP/HTTP export, no ddtrace) gets the RUM session on every span, GenAI spans included.

The agent has no session code; ``rum-otel-session`` (hook/otel), loaded by ``opentelemetry-instrument`` as an
instrumentor, copies the baggage ``session.id`` the proxy forwards onto every span: ``session.id`` for
OpenInference, plus ``gen_ai.conversation.id`` on GenAI semantic-convention spans, the attributes Datadog LLM
Observability maps to ``session_id``. Two agents: OpenInference's openai instrumentation, and OpenTelemetry's
GenAI one (opentelemetry-instrumentation-openai-v2). Every source reaches the session because the proxy always
writes the validated ID into baggage; only the trace-id test depends on the proxy's trace propagation (W3C
``traceparent``, its default).
"""

from __future__ import annotations

import importlib.util
import random
from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.conftest import run_otel_agent, run_proxy
from tests.e2e.sessions import SOURCES, chat, new_session_id, rum_trace_headers
from tests.support.otlp import OtlpReceiver, OtlpSpan, run_otlp_receiver
from tests.support.processes import REPO
from tests.support.testagent import TestAgent

pytestmark = pytest.mark.integration

SPAN_KIND = "openinference.span.kind"
OPERATION = "gen_ai.operation.name"
INSTRUMENTATIONS = ("openinference", "genai")


def _load_fake_llm() -> Any:
    spec = importlib.util.spec_from_file_location("fake_llm_server_e2e", REPO / "examples" / "fake_llm" / "server.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


fake_llm_server = _load_fake_llm()


@pytest.fixture(scope="module")
def otlp_receiver() -> Iterator[OtlpReceiver]:
    with run_otlp_receiver() as receiver:
        yield receiver


@pytest.fixture(scope="module", params=INSTRUMENTATIONS)
def proxied_otel_agent(
    request: pytest.FixtureRequest, otlp_receiver: OtlpReceiver, fake_llm: str, test_agent: TestAgent
) -> Iterator[str]:
    with (
        run_otel_agent(otlp_receiver, fake_llm, instrumentation=request.param) as agent,
        run_proxy(agent, tracing=True, test_agent=test_agent) as proxy,
    ):
        yield proxy


def is_genai(span: OtlpSpan) -> bool:
    """An LLM span of either convention: OpenInference's span kind, or the GenAI operation name."""
    return span.attributes.get(SPAN_KIND) == "LLM" or OPERATION in span.attributes


def request_spans(receiver: OtlpReceiver, session_id: str) -> list[OtlpSpan]:
    """Every span of the request whose message held ``session_id``, once its server span has ended too.

    Its LLM span is found without looking at any session attribute: OpenInference records the message; the
    GenAI instrumentation records the response id, which the fake LLM derives from the answer.
    """
    answer_id = fake_llm_server.completion_id(f"You said: How long is shipping? ({session_id})")

    def of_request(spans: list[OtlpSpan]) -> list[OtlpSpan]:
        llm = [
            s
            for s in spans
            if is_genai(s) and (session_id in str(s.attributes) or s.attributes.get("gen_ai.response.id") == answer_id)
        ]
        traces = {s.trace_id for s in llm}
        return [s for s in spans if s.trace_id in traces]

    def complete(spans: list[OtlpSpan]) -> bool:
        mine = of_request(spans)
        return any(is_genai(s) for s in mine) and any(s.attributes.get("http.route") == "/chat" for s in mine)

    return of_request(receiver.wait_for(complete))


def assert_every_span_has_session(spans: list[OtlpSpan], session_id: str) -> None:
    summary = [
        (s.name, s.scope, s.attributes.get("session.id"), s.attributes.get("gen_ai.conversation.id")) for s in spans
    ]
    genai = [s for s in spans if is_genai(s)]
    assert genai, summary
    assert all(s.attributes.get("session.id") == session_id for s in spans), summary
    # GenAI semantic conventions: the conversation id on every GenAI span (OpenInference spans have none).
    assert all(s.attributes.get("gen_ai.conversation.id") == session_id for s in genai if OPERATION in s.attributes)
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
    rum_headers = rum_trace_headers(trace_id, parent_id)
    chat(proxied_otel_agent, "/chat", session_id, "cookie", stream=True, extra_headers=rum_headers)
    spans = request_spans(otlp_receiver, session_id)
    assert_every_span_has_session(spans, session_id)
    assert {s.trace_id & (2**64 - 1) for s in spans} == {trace_id}


@pytest.mark.parametrize("instrumentation", INSTRUMENTATIONS)
def test_without_the_twin_otel_spans_have_no_session(
    otlp_receiver: OtlpReceiver, fake_llm: str, instrumentation: str
) -> None:
    """The negative control: OpenTelemetry alone does not turn baggage into span attributes."""
    session_id = new_session_id()
    with (
        run_otel_agent(otlp_receiver, fake_llm, instrumentation=instrumentation, twin=False) as agent,
        run_proxy(agent, tracing=False) as proxy,
    ):
        chat(proxy, "/chat", session_id, "baggage")
        spans = request_spans(otlp_receiver, session_id)
    assert any(is_genai(s) for s in spans)
    assert not any("session.id" in s.attributes or "gen_ai.conversation.id" in s.attributes for s in spans)
