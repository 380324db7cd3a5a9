"""Make the RUM session ID forwarded by rum-llmobs-proxy the LLM Observability session of a request's spans.

How: a ddtrace span processor runs before LLMObs activates each LLMObs span. When the trace has no
session yet (``_dd.p.llmobs_sid``, set by an upstream tracer or by the application's first explicit
``session_id``), it stores the validated ID from the request there; LLMObs then gives it to that span
and, as the trace-level default, to every later LLMObs span of the trace (integrations included).
The request's ID comes from the proxy header (``RUM_PROXY_SESSION_HEADER``, default
``x-rum-session-id``), else W3C baggage ``session.id``. Instrumented frameworks hand the headers to
``HTTPPropagator.extract``, which is wrapped; aiohttp servers and ``http.server`` handlers, which
ddtrace does not instrument, are wrapped to keep the request's ID in a context variable and to
continue the request's distributed trace (the RUM SDK's, continued by the proxy), as ddtrace's own
server integrations do.

Every ddtrace API used here is private: the version is checked at install and every hook swallows its
own exceptions, so the host application never sees one.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import logging
import os
import re
import sys
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from types import ModuleType
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import unquote

if TYPE_CHECKING:
    from ddtrace._trace.span import Span

__version__ = "0.1.0"
__all__ = [
    "RequestSession",
    "install",
    "is_installed",
    "normalize_session_id",
    "parse_baggage",
    "request_session",
    "resolve_session_id",
]

logger = logging.getLogger("rum_llmobs_hook")

SUPPORTED_DDTRACE: Final = ((4, 13), (5, 0))  # [min, max)
PROPAGATED_SESSION_KEY: Final = "_dd.p.llmobs_sid"
# Context _meta key for the ID read from the proxy header by the extract wrapper. Not ``_dd.p.``:
# it is neither tagged on spans nor propagated downstream.
HEADER_META_KEY: Final = "_rum_llmobs_hook.sid"
DEFAULT_SESSION_HEADER: Final = "x-rum-session-id"
ENV_SESSION_HEADER: Final = "RUM_PROXY_SESSION_HEADER"
ENV_ENABLED: Final = "RUM_LLMOBS_HOOK_ENABLED"
ENV_BAGGAGE_TAGS: Final = "RUM_LLMOBS_HOOK_BAGGAGE_TAGS"
BAGGAGE_SESSION_KEY: Final = "session.id"
BAGGAGE_TAG_KEYS: Final = ("user.id", "account.id")

_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110 field-name
_TAG_VALUE = re.compile(r"[\x21-\x7e]{1,256}")  # visible ASCII, no spaces/controls
_BAGGAGE_MAX_BYTES: Final = 8192  # ddtrace's DD_TRACE_BAGGAGE_MAX_BYTES
_BAGGAGE_MAX_ITEMS: Final = 64
_TRUE: Final = frozenset({"1", "true", "yes", "on"})
_NOT_ACTIVATED: Final = object()  # no trace context was activated for the request


@dataclass(frozen=True, slots=True)
class RequestSession:
    """What the hook learnt from one request's headers (already validated)."""

    session_id: str | None
    tags: Mapping[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class _State:
    installed: bool = False
    header: str = DEFAULT_SESSION_HEADER
    baggage_tags: bool = False
    error_logged: bool = False
    # The sitecustomize files sitecustomize.py has run (each at most once per process, see there).
    sitecustomize_ran: set[str] = field(default_factory=set)
    llmobs: Any = None  # ddtrace.llmobs.LLMObs, resolved once at install
    tracer: Any = None  # ddtrace.trace.tracer, resolved once at install
    propagator: Any = None  # ddtrace.propagation.http.HTTPPropagator, resolved once at install


_state = _State()
_request: contextvars.ContextVar[RequestSession | None] = contextvars.ContextVar(
    "rum_llmobs_hook_request", default=None
)
# What to restore after an http.server request whose trace context parse_request activated.
_http_server_trace: contextvars.ContextVar[object] = contextvars.ContextVar("rum_llmobs_hook_trace")


# --- pure core -----------------------------------------------------------------------------------


def normalize_session_id(value: object) -> str | None:
    """Return the lowercase canonical UUID, or None: exactly the proxy's validation."""
    if isinstance(value, str) and _UUID.fullmatch(value):
        return value.lower()
    return None


def parse_baggage(header: str | None) -> dict[str, str]:
    """Parse a W3C baggage header (list-members ``key=value;props``, values percent-encoded)."""
    items: dict[str, str] = {}
    if not header or len(header) > _BAGGAGE_MAX_BYTES:
        return items
    for member in header.split(",")[:_BAGGAGE_MAX_ITEMS]:
        key, sep, value = member.split(";", 1)[0].partition("=")
        key = key.strip()
        if sep and _TOKEN.fullmatch(key):
            items.setdefault(unquote(key), unquote(value.strip()))
    return items


def baggage_tags(baggage: Mapping[str, str]) -> dict[str, str]:
    """The opt-in ``user.id``/``account.id`` tags, restricted to short visible-ASCII values."""
    return {k: v for k in BAGGAGE_TAG_KEYS if isinstance(v := baggage.get(k), str) and _TAG_VALUE.fullmatch(v)}


def request_session(
    get_header: Callable[[str], str | None], header: str, with_tags: bool = False
) -> RequestSession | None:
    """Session and tags for one request: the proxy header wins over baggage ``session.id``."""
    baggage = parse_baggage(get_header("baggage"))
    session_id = normalize_session_id(get_header(header)) or normalize_session_id(baggage.get(BAGGAGE_SESSION_KEY))
    tags = baggage_tags(baggage) if with_tags else {}
    if session_id is None and not tags:
        return None
    return RequestSession(session_id, tags)


def resolve_session_id(propagated: object, *candidates: object) -> str | None:
    """The ID to store as the trace's session: None when the trace already has one (it wins)."""
    if propagated:
        return None
    for candidate in candidates:
        if (session_id := normalize_session_id(candidate)) is not None:
            return session_id
    return None


def parse_version(version: str) -> tuple[int, int] | None:
    match = re.match(r"(\d+)\.(\d+)", version)
    return (int(match.group(1)), int(match.group(2))) if match else None


def is_supported(version: str) -> bool:
    parsed = parse_version(version)
    return parsed is not None and SUPPORTED_DDTRACE[0] <= parsed < SUPPORTED_DDTRACE[1]


def _env_flag(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    return default if raw is None else raw.strip().lower() in _TRUE


# --- ddtrace glue --------------------------------------------------------------------------------


def _log_error_once(where: str) -> None:
    if not _state.error_logged:
        _state.error_logged = True
        logger.warning("rum_llmobs_hook: error in %s; session IDs may be missing", where, exc_info=True)


def _llmobs_enabled() -> bool:
    llmobs = _state.llmobs
    return llmobs is not None and bool(llmobs.enabled)


def _safe_request_session(get_header: Callable[[str], str | None]) -> RequestSession | None:
    try:
        if _llmobs_enabled():
            return request_session(get_header, _state.header, _state.baggage_tags)
    except Exception:
        _log_error_once("request header parsing")
    return None


def _continue_trace(get_header: Callable[[str], str | None], names: Iterable[str]) -> object:
    """Activate the request's incoming trace context (trace headers or baggage), as ddtrace's server
    integrations do; return what to hand back to ``_restore_trace`` after the request."""
    try:
        tracer, propagator = _state.tracer, _state.propagator
        if tracer is None or tracer.current_trace_context() is not None:
            return _NOT_ACTIVATED  # something already continued a trace here
        headers = {name.lower(): value for name in names if (value := get_header(name)) is not None}
        context = propagator.extract(headers)
        if context is None or not (context.trace_id or context._baggage):
            return _NOT_ACTIVATED
        previous = tracer.context_provider.active()
        tracer.context_provider.activate(context)
        return previous
    except Exception:
        _log_error_once("trace continuation")
        return _NOT_ACTIVATED


def _restore_trace(previous: object) -> None:
    """Deactivate the request's context, so a kept-alive connection never carries it to the next request."""
    if previous is _NOT_ACTIVATED:
        return
    try:
        _state.tracer.context_provider.activate(previous)
    except Exception:
        _log_error_once("trace continuation")


@contextlib.contextmanager
def _request_scope(get_header: Callable[[str], str | None], names: Iterable[str]) -> Iterator[None]:
    """A request handled in this context: its session ID and its incoming trace context, both undone after it."""
    token = _request.set(_safe_request_session(get_header))
    previous = _continue_trace(get_header, names)
    try:
        yield
    finally:
        _restore_trace(previous)
        _request.reset(token)


def _on_span_start(span: Span) -> None:
    """Runs before LLMObs activates the span (SpanProcessor.on_span_start precedes trace.span_start)."""
    try:
        if span.span_type != "llm" or not _llmobs_enabled():
            return
        context = span.context
        meta = context._meta
        request = _request.get()
        if not meta.get(PROPAGATED_SESSION_KEY):  # the trace's session, once set, wins: nothing else to read
            session_id = resolve_session_id(
                None,
                meta.get(HEADER_META_KEY),
                request.session_id if request else None,
                context.get_baggage_item(BAGGAGE_SESSION_KEY),
            )
            if session_id is not None:
                meta[PROPAGATED_SESSION_KEY] = session_id
        if _state.baggage_tags:
            tags = request.tags if request else baggage_tags(context.get_all_baggage_items())
            if tags:
                from ddtrace.llmobs._utils import _annotate_llmobs_span_data

                _annotate_llmobs_span_data(span, tags=dict(tags))
    except Exception:
        _log_error_once("on_span_start")


def _wrap_extract(extract: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(extract)
    def wrapper(headers: Any, *args: Any, **kwargs: Any) -> Any:
        context = extract(headers, *args, **kwargs)
        try:
            if _llmobs_enabled():
                lowered = {str(k).lower(): v for k, v in headers.items()} if headers else {}
                request = request_session(lowered.get, _state.header, _state.baggage_tags)
                # The context carries the ID with the trace (also into ddtrace-propagated threads), but it
                # is dropped when nothing was propagated (header only): the context var covers that case.
                # Always overwritten, so a reused worker thread never keeps a previous request's value.
                _request.set(request)
                if request is not None and request.session_id is not None and context is not None:
                    context._meta[HEADER_META_KEY] = request.session_id
        except Exception:
            _log_error_once("HTTPPropagator.extract")
        return context

    wrapper.__rum_llmobs_hook__ = True  # type: ignore[attr-defined]
    return wrapper


def _patch_aiohttp(module: ModuleType) -> None:
    """aiohttp servers are not instrumented by ddtrace-run: keep each request's ID in a context var."""
    try:
        app_class = module.Application
        original: Callable[[Any, Any], Awaitable[Any]] = app_class._handle
        if getattr(original, "__rum_llmobs_hook__", False):
            return

        @functools.wraps(original)
        async def _handle(self: Any, request: Any) -> Any:
            with _request_scope(request.headers.get, request.headers.keys()):
                return await original(self, request)

        _handle.__rum_llmobs_hook__ = True  # type: ignore[attr-defined]
        app_class._handle = _handle
    except Exception:
        _log_error_once("aiohttp patch")


def _patch_http_server(module: ModuleType) -> None:
    """http.server is not instrumented by ddtrace: keep each request's ID in a context var."""
    try:
        handler_class = module.BaseHTTPRequestHandler
        parse_original: Callable[[Any], bool] = handler_class.parse_request
        handle_original: Callable[[Any], None] = handler_class.handle_one_request
        if getattr(parse_original, "__rum_llmobs_hook__", False):
            return

        @functools.wraps(parse_original)
        def parse_request(self: Any) -> bool:
            ok = parse_original(self)
            # Always overwrite, so a keep-alive connection never sees the previous request's ID.
            _request.set(_safe_request_session(self.headers.get) if ok else None)
            if ok:
                _http_server_trace.set(_continue_trace(self.headers.get, self.headers.keys()))
            return ok

        @functools.wraps(handle_original)
        def handle_one_request(self: Any) -> None:
            token = _request.set(None)
            trace_token = _http_server_trace.set(_NOT_ACTIVATED)
            try:
                handle_original(self)
            finally:
                _restore_trace(_http_server_trace.get())
                _http_server_trace.reset(trace_token)
                _request.reset(token)

        parse_request.__rum_llmobs_hook__ = True  # type: ignore[attr-defined]
        handler_class.parse_request = parse_request
        handler_class.handle_one_request = handle_one_request
    except Exception:
        _log_error_once("http.server patch")


def _patch_asgi(module: ModuleType) -> None:
    """ddtrace's ASGI middleware extracts nothing for a WebSocket when DD_TRACE_WEBSOCKET_MESSAGES_ENABLED=false
    (no handshake span): keep the upgrade request's ID in a context var for the connection then."""
    try:
        middleware = module.TraceMiddleware
        original: Callable[..., Awaitable[Any]] = middleware.__call__
        if getattr(original, "__rum_llmobs_hook__", False):
            return

        @functools.wraps(original)
        async def __call__(self: Any, scope: Any, receive: Any, send: Any) -> Any:
            headers = _untraced_websocket_headers(self, scope)
            if headers is None:
                return await original(self, scope, receive, send)
            with _request_scope(headers.get, headers.keys()):
                return await original(self, scope, receive, send)

        __call__.__rum_llmobs_hook__ = True  # type: ignore[attr-defined]
        middleware.__call__ = __call__
    except Exception:
        _log_error_once("asgi patch")


def _untraced_websocket_headers(middleware: Any, scope: Any) -> dict[str, str] | None:
    """The upgrade request's headers of a WebSocket that ddtrace does not trace, else None."""
    try:
        if scope.get("type") != "websocket" or middleware.integration_config.trace_asgi_websocket_messages:
            return None
        headers: dict[str, str] = {}
        for name, value in scope.get("headers") or ():
            headers.setdefault(name.decode("latin-1").lower(), value.decode("latin-1"))
        return headers
    except Exception:
        _log_error_once("asgi patch")
        return None


def _when_imported(name: str, patch: Callable[[ModuleType], None]) -> None:
    if name in sys.modules:
        patch(sys.modules[name])
        return
    from ddtrace.internal.module import ModuleWatchdog

    ModuleWatchdog.register_module_hook(name, patch)


def is_installed() -> bool:
    return _state.installed


def install() -> bool:
    """Activate the hook in this process. Idempotent; never raises; returns whether it is active."""
    if _state.installed:
        return True
    try:
        if not _env_flag(ENV_ENABLED, True):
            logger.info("rum_llmobs_hook: disabled by %s", ENV_ENABLED)
            return False
        import ddtrace

        version = getattr(ddtrace, "__version__", "unknown")
        if not is_supported(version):
            logger.warning(
                "rum_llmobs_hook: ddtrace %s is not supported (need >=%d.%d,<%d.%d); hook not installed",
                version,
                *SUPPORTED_DDTRACE[0],
                *SUPPORTED_DDTRACE[1],
            )
            return False
        from ddtrace._trace.processor import SpanProcessor
        from ddtrace.llmobs import LLMObs
        from ddtrace.llmobs._constants import PROPAGATED_SESSION_ID_KEY
        from ddtrace.propagation.http import HTTPPropagator
        from ddtrace.trace import tracer

        if PROPAGATED_SESSION_ID_KEY != PROPAGATED_SESSION_KEY:
            logger.warning("rum_llmobs_hook: unexpected ddtrace LLMObs session key; hook not installed")
            return False
        header = os.environ.get(ENV_SESSION_HEADER, DEFAULT_SESSION_HEADER).strip().lower()
        if not _TOKEN.fullmatch(header):
            logger.warning("rum_llmobs_hook: invalid %s; using %s", ENV_SESSION_HEADER, DEFAULT_SESSION_HEADER)
            header = DEFAULT_SESSION_HEADER
        _state.header = header
        _state.baggage_tags = _env_flag(ENV_BAGGAGE_TAGS, False)
        _state.llmobs = LLMObs
        _state.tracer = tracer
        _state.propagator = HTTPPropagator

        class _SessionProcessor(SpanProcessor):
            def on_span_start(self, span: Span) -> None:
                _on_span_start(span)

            def on_span_finish(self, span: Span) -> None:
                pass

        if not getattr(HTTPPropagator.extract, "__rum_llmobs_hook__", False):
            HTTPPropagator.extract = staticmethod(_wrap_extract(HTTPPropagator.extract))  # type: ignore[method-assign]
        _SessionProcessor().register()
        _when_imported("aiohttp.web_app", _patch_aiohttp)
        _when_imported("http.server", _patch_http_server)
        _when_imported("ddtrace.contrib.internal.asgi.middleware", _patch_asgi)
        _state.installed = True
        logger.debug("rum_llmobs_hook %s installed (ddtrace %s, header %s)", __version__, version, header)
        return True
    except Exception:
        logger.warning("rum_llmobs_hook: could not install; hook inactive", exc_info=True)
        return False
