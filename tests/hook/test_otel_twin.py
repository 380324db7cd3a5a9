"""rum_otel_session, the OpenTelemetry twin of the hook, against the real OpenTelemetry SDK in-process."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import rum_otel_session
from opentelemetry import baggage
from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

SESSION = "0f8fad5b-d9cb-469f-a165-70867728950e"


@pytest.fixture
def exporter() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    provider, exported = TracerProvider(), InMemorySpanExporter()
    assert rum_otel_session.install(provider)
    provider.add_span_processor(SimpleSpanProcessor(exported))
    yield provider, exported
    provider.shutdown()


def start_and_end(provider: TracerProvider, context: Context, **attributes: str) -> ReadableSpan:
    span = provider.get_tracer("test").start_span("op", context=context, attributes=attributes or None)
    span.end()
    return span  # type: ignore[return-value]


@pytest.mark.parametrize(
    ("member", "expected"),
    [
        (SESSION, SESSION),
        (SESSION.upper(), SESSION),
        (SESSION + "x", None),
        ("not-a-uuid", None),
        ("", None),
    ],
)
def test_baggage_session_becomes_the_session_of_every_span(
    exporter: tuple[TracerProvider, InMemorySpanExporter], member: str, expected: str | None
) -> None:
    provider, _ = exporter
    span = start_and_end(provider, baggage.set_baggage("session.id", member))
    assert (span.attributes or {}).get("session.id") == expected
    assert "gen_ai.conversation.id" not in (span.attributes or {})  # not a GenAI span


def test_genai_spans_also_get_the_conversation_id(exporter: tuple[TracerProvider, InMemorySpanExporter]) -> None:
    provider, _ = exporter
    span = start_and_end(provider, baggage.set_baggage("session.id", SESSION), **{"gen_ai.operation.name": "chat"})
    assert span.attributes is not None
    assert span.attributes["gen_ai.conversation.id"] == SESSION
    assert span.attributes["session.id"] == SESSION


def test_a_session_the_application_sets_wins(exporter: tuple[TracerProvider, InMemorySpanExporter]) -> None:
    provider, _ = exporter
    own = {"session.id": "conversation-1", "gen_ai.conversation.id": "conversation-1"}
    span = start_and_end(provider, baggage.set_baggage("session.id", SESSION), **own)
    assert span.attributes is not None
    assert dict(span.attributes) == own


def test_no_baggage_no_attribute(exporter: tuple[TracerProvider, InMemorySpanExporter]) -> None:
    provider, _ = exporter
    assert "session.id" not in (start_and_end(provider, Context()).attributes or {})


def test_install_is_idempotent_and_needs_an_sdk_provider() -> None:
    provider = TracerProvider()
    assert rum_otel_session.install(provider) and rum_otel_session.install(provider)
    processors = provider._active_span_processor._span_processors
    assert sum(isinstance(p, rum_otel_session.RumSessionSpanProcessor) for p in processors) == 1
    assert rum_otel_session.install(object()) is False  # type: ignore[arg-type]


def test_the_instrumentor_installs_on_the_provider_it_is_given() -> None:
    provider = TracerProvider()
    instrumentor = rum_otel_session.RumSessionInstrumentor()
    instrumentor.instrument(tracer_provider=provider)
    try:
        processors = provider._active_span_processor._span_processors
        assert any(isinstance(p, rum_otel_session.RumSessionSpanProcessor) for p in processors)
    finally:
        instrumentor.uninstrument()
