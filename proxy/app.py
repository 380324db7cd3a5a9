"""The one place that assembles the proxy application from validated settings."""

from __future__ import annotations

from aiohttp import ClientSession, web

from config.settings import Settings
from proxy.forward import Forwarder
from proxy.keys import FORWARDER, LIFECYCLE, METRICS, SETTINGS, UPSTREAM_SESSION, WEBSOCKETS, Lifecycle
from proxy.metrics import Metrics
from proxy.tracing import Tracing
from proxy.upstream import upstream_session
from proxy.websocket import WebSocketBridge


def create_app(settings: Settings, *, tracing_enabled: bool | None = None) -> web.Application:
    """The proxy application. `tracing_enabled` defaults to ddtrace's own switch (DD_TRACE_ENABLED)."""
    if tracing_enabled is None:
        from ddtrace.trace import tracer

        tracing_enabled = tracer.enabled
    # Bodies are streamed or bounded by max_inspect_bytes, never read whole by aiohttp.
    app = web.Application(client_max_size=settings.max_inspect_bytes + 1)
    metrics = Metrics()

    def session() -> ClientSession:
        return app[UPSTREAM_SESSION]  # created by the upstream_session cleanup context at startup

    websockets = WebSocketBridge(session, metrics, settings.ws_max_message_bytes)
    forwarder = Forwarder(
        settings,
        session_getter=session,
        metrics=metrics,
        tracing=Tracing(tracing_enabled),
        websockets=websockets,
    )
    app[SETTINGS] = settings
    app[METRICS] = metrics
    app[LIFECYCLE] = Lifecycle()
    app[WEBSOCKETS] = websockets
    app[FORWARDER] = forwarder
    app.cleanup_ctx.append(upstream_session)
    app.on_shutdown.append(_on_shutdown)
    app.router.add_route("*", "/{path:.*}", forwarder.handle)
    return app


async def _on_shutdown(app: web.Application) -> None:
    """Stop being ready and close long-lived WebSockets with 1001; HTTP streams get the grace period."""
    app[LIFECYCLE].draining = True
    await app[WEBSOCKETS].close_all()
