"""Make the RUM session ID forwarded by rum-llmobs-proxy the session of an OpenTelemetry agent's spans.

The OpenTelemetry twin of ``rum_llmobs_hook``. The proxy forwards ``baggage: session.id=<id>``; an
instrumented server (FastAPI, Flask, Django, aiohttp, … with the default ``tracecontext,baggage``
propagators) puts that baggage in the request's context. A span processor then copies the validated ID
onto every span started in that context as ``session.id`` (OpenInference, and what
``BaggageSpanProcessor`` would write) and, on GenAI spans, as ``gen_ai.conversation.id`` (GenAI semantic
conventions): the two attributes Datadog LLM Observability maps to ``session_id``.

Loaded with no code change by ``opentelemetry-instrument``: this module is an ``opentelemetry_instrumentor``
entry point named ``rum_session`` (``OTEL_PYTHON_DISABLED_INSTRUMENTATIONS=rum_session`` turns it off).
With the SDK set up in code, call ``install()``. Never raises into the application.
"""

from __future__ import annotations

import logging
import re
import weakref
from collections.abc import Collection
from typing import Any, Final

from opentelemetry import baggage, trace
from opentelemetry.context import Context

# opentelemetry-instrumentation ships no type information mypy resolves for this class.
from opentelemetry.instrumentation.instrumentor import BaseInstrumentor  # type: ignore[attr-defined]
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor, TracerProvider

__version__ = "0.1.0"
__all__ = ["RumSessionInstrumentor", "RumSessionSpanProcessor", "install", "normalize_session_id"]

logger = logging.getLogger("rum_otel_session")

BAGGAGE_SESSION_KEY: Final = "session.id"
OPENINFERENCE_SESSION_ID: Final = "session.id"
GENAI_CONVERSATION_ID: Final = "gen_ai.conversation.id"
_GENAI_PREFIX: Final = "gen_ai."
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


def normalize_session_id(value: object) -> str | None:
    """Return the lowercase canonical UUID, or None: exactly the proxy's validation."""
    if isinstance(value, str) and _UUID.fullmatch(value):
        return value.lower()
    return None


def session_attributes(session_id: str, attributes: Any) -> dict[str, str]:
    """The attributes to add to a span that starts with ``attributes``: what it already has wins."""
    keys = set(attributes or ())
    added = {} if OPENINFERENCE_SESSION_ID in keys else {OPENINFERENCE_SESSION_ID: session_id}
    if GENAI_CONVERSATION_ID not in keys and any(str(k).startswith(_GENAI_PREFIX) for k in keys):
        added[GENAI_CONVERSATION_ID] = session_id
    return added


class RumSessionSpanProcessor(SpanProcessor):
    """Copies the request's baggage ``session.id`` (validated) onto each span as it starts."""

    def __init__(self) -> None:
        self._error_logged = False

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        try:
            session_id = normalize_session_id(baggage.get_baggage(BAGGAGE_SESSION_KEY, parent_context))
            if session_id is not None and (added := session_attributes(session_id, span.attributes)):
                span.set_attributes(added)
        except Exception:
            if not self._error_logged:
                self._error_logged = True
                logger.warning("rum_otel_session: error in on_start; session IDs may be missing", exc_info=True)

    def on_end(self, span: ReadableSpan) -> None:
        pass

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


_installed: weakref.WeakSet[TracerProvider] = weakref.WeakSet()  # not ids: a freed provider's id is reused


def install(tracer_provider: TracerProvider | None = None) -> bool:
    """Add the processor to ``tracer_provider`` (default: the global one). Idempotent; never raises."""
    try:
        provider = tracer_provider or trace.get_tracer_provider()
        if not isinstance(provider, TracerProvider):
            logger.warning("rum_otel_session: no OpenTelemetry SDK TracerProvider is set; not installed")
            return False
        if provider not in _installed:
            provider.add_span_processor(RumSessionSpanProcessor())
            _installed.add(provider)
        return True
    except Exception:
        logger.warning("rum_otel_session: could not install; inactive", exc_info=True)
        return False


class RumSessionInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """The ``opentelemetry-instrument`` entry point: runs after the SDK is configured."""

    def instrumentation_dependencies(self) -> Collection[str]:
        return ()

    def _instrument(self, **kwargs: Any) -> None:
        install(kwargs.get("tracer_provider"))

    def _uninstrument(self, **kwargs: Any) -> None:
        pass
