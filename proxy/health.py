"""The admin server: liveness, readiness and metrics, on a port of its own so no agent path is shadowed."""

from __future__ import annotations

from aiohttp import web

from proxy.keys import LIFECYCLE, METRICS, Lifecycle
from proxy.metrics import Metrics

ADMIN_LIFECYCLE = web.AppKey("admin_lifecycle", Lifecycle)
ADMIN_METRICS = web.AppKey("admin_metrics", Metrics)


async def healthz(_: web.Request) -> web.Response:
    """Alive: the event loop answers. No I/O, never depends on the upstream."""
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Ready to take traffic; 503 once draining. Independent of the upstream so that a native sidecar's
    startupProbe can pass before the agent container starts."""
    if request.app[ADMIN_LIFECYCLE].draining:
        return web.json_response({"status": "draining"}, status=503)
    return web.json_response({"status": "ready"})


async def metrics(request: web.Request) -> web.Response:
    body, content_type = request.app[ADMIN_METRICS].render(request.headers.get("Accept"))
    response = web.Response(body=body)
    response.headers["Content-Type"] = content_type
    return response


def create_admin_app(proxy_app: web.Application) -> web.Application:
    admin = web.Application()
    admin[ADMIN_LIFECYCLE] = proxy_app[LIFECYCLE]
    admin[ADMIN_METRICS] = proxy_app[METRICS]
    admin.router.add_get("/healthz", healthz)
    admin.router.add_get("/readyz", readyz)
    admin.router.add_get("/metrics", metrics)
    return admin
