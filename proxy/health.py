"""The admin server: liveness, readiness and metrics, on a port of its own so no agent path is shadowed."""

from __future__ import annotations

from aiohttp import web

from proxy.app import Lifecycle
from proxy.keys import LIFECYCLE, METRICS
from proxy.metrics import Metrics


async def healthz(_: web.Request) -> web.Response:
    """Alive: the event loop answers. No I/O, never depends on the upstream."""
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Ready to take traffic; 503 once draining. Independent of the upstream so that a native sidecar's
    startupProbe can pass before the agent container starts."""
    lifecycle = request.app[LIFECYCLE]
    if lifecycle.draining:
        return web.json_response({"status": "draining"}, status=503)
    if lifecycle.starting:
        return web.json_response({"status": "starting"}, status=503)
    return web.json_response({"status": "ready"})


async def metrics(request: web.Request) -> web.Response:
    body, content_type = request.app[METRICS].render(request.headers.get("Accept"))
    response = web.Response(body=body)
    response.headers["Content-Type"] = content_type
    return response


def create_admin_app(lifecycle: Lifecycle, registry: Metrics) -> web.Application:
    admin = web.Application()
    admin[LIFECYCLE] = lifecycle
    admin[METRICS] = registry
    admin.router.add_get("/healthz", healthz)
    admin.router.add_get("/readyz", readyz)
    admin.router.add_get("/metrics", metrics)
    return admin
