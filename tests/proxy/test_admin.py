"""The admin server: health, readiness, metrics."""

from __future__ import annotations

from typing import Any

from proxy.health import create_admin_app
from tests.proxy.conftest import SESSION_ID


async def test_health_ready_and_draining(aiohttp_client: Any, proxy: Any) -> None:
    admin = await aiohttp_client(create_admin_app(proxy.proxy.lifecycle, proxy.proxy.metrics))
    assert (await admin.get("/healthz")).status == 200
    assert (await admin.get("/readyz")).status == 200
    proxy.proxy.lifecycle.draining = True
    ready = await admin.get("/readyz")
    assert ready.status == 503
    assert (await ready.json())["status"] == "draining"
    assert (await admin.get("/healthz")).status == 200  # liveness never depends on draining or the upstream


async def test_admin_paths_are_not_served_on_the_proxy_port(proxy: Any, upstream: Any) -> None:
    await proxy.get("/healthz")
    assert upstream.last["raw_path"] == "/healthz"  # the agent's own /healthz is not shadowed


async def test_metrics_count_requests_sources_and_errors(aiohttp_client: Any, proxy: Any) -> None:
    await proxy.post("/chat", json={"session_id": SESSION_ID})
    await proxy.get("/chat", params={"session_id": "junk"})
    admin = await aiohttp_client(create_admin_app(proxy.proxy.lifecycle, proxy.proxy.metrics))
    text = await (await admin.get("/metrics")).text()
    assert 'rum_proxy_requests_total{session_source="body",status="200"} 1.0' in text
    assert 'rum_proxy_requests_total{session_source="none",status="200"} 1.0' in text
    assert 'rum_proxy_invalid_session_ids_total{source="query"} 1.0' in text
    assert "rum_proxy_request_duration_seconds_count 2.0" in text
    assert "rum_proxy_open_streams 0.0" in text


async def test_metrics_speak_openmetrics_when_asked(aiohttp_client: Any, proxy: Any) -> None:
    admin = await aiohttp_client(create_admin_app(proxy.proxy.lifecycle, proxy.proxy.metrics))
    resp = await admin.get("/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert resp.headers["Content-Type"].startswith("application/openmetrics-text")
    assert (await resp.text()).rstrip().endswith("# EOF")
