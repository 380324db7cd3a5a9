"""The admin server: health, readiness, metrics, spoken as HTTP/1.1 to real clients on a real port."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from proxy.app import Lifecycle
from proxy.health import MAX_HEAD_BYTES, AdminServer
from proxy.metrics import Metrics
from tests.proxy.conftest import SESSION_ID


@pytest.fixture
async def admin(proxy: Any) -> AsyncIterator[str]:
    """The admin server of the test proxy, listening on a free loopback port; yields its base URL."""
    server = AdminServer(proxy.proxy.lifecycle, proxy.proxy.metrics)
    await server.start("127.0.0.1", 0)
    try:
        yield f"http://{server.addresses[0]}"
    finally:
        await server.close()


async def raw_exchange(url: str, data: bytes) -> bytes:
    """Send ``data`` on one connection and read until the server closes it."""
    host, _, port = url.removeprefix("http://").partition(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(data)
    try:
        return await asyncio.wait_for(reader.read(), timeout=10)
    finally:
        writer.close()


async def test_health_ready_and_draining(admin: str, proxy: Any) -> None:
    async with aiohttp.ClientSession() as client:
        async with client.get(f"{admin}/healthz") as health:
            assert (health.status, await health.json()) == (200, {"status": "ok"})
            assert health.headers["Content-Type"] == "application/json; charset=utf-8"
        async with client.get(f"{admin}/readyz") as ready:
            assert (ready.status, await ready.json()) == (200, {"status": "ready"})
        proxy.proxy.lifecycle.starting = True  # RUM_PROXY_WORKERS: not every worker listens yet
        async with client.get(f"{admin}/readyz") as starting:
            assert (starting.status, (await starting.json())["status"]) == (503, "starting")
        proxy.proxy.lifecycle.starting = False
        proxy.proxy.lifecycle.draining = True
        async with client.get(f"{admin}/readyz") as draining:
            assert (draining.status, (await draining.json())["status"]) == (503, "draining")
        async with client.get(f"{admin}/healthz") as health:
            assert health.status == 200  # liveness never depends on draining or the upstream


async def test_admin_paths_are_not_served_on_the_proxy_port(proxy: Any, upstream: Any) -> None:
    await proxy.get("/healthz")
    assert upstream.last["raw_path"] == "/healthz"  # the agent's own /healthz is not shadowed


async def test_metrics_count_requests_sources_and_errors(admin: str, proxy: Any) -> None:
    await proxy.post("/chat", json={"session_id": SESSION_ID})
    await proxy.get("/chat", params={"session_id": "junk"})
    async with aiohttp.ClientSession() as client, client.get(f"{admin}/metrics") as resp:
        assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = await resp.text()
    assert 'rum_proxy_requests_total{session_source="body",status="200"} 1.0' in text
    assert 'rum_proxy_requests_total{session_source="none",status="200"} 1.0' in text
    assert 'rum_proxy_invalid_session_ids_total{session_source="query"} 1.0' in text
    assert "rum_proxy_request_duration_seconds_count 2.0" in text
    assert "rum_proxy_open_streams 0.0" in text


async def test_metrics_speak_openmetrics_when_asked(admin: str) -> None:
    accept = {"Accept": "application/openmetrics-text; version=1.0.0"}
    async with aiohttp.ClientSession() as client, client.get(f"{admin}/metrics", headers=accept) as resp:
        assert resp.headers["Content-Type"].startswith("application/openmetrics-text")
        assert (await resp.text()).rstrip().endswith("# EOF")


async def test_keep_alive_pipelining_head_and_query_strings(admin: str) -> None:
    """Probes and scrapers reuse connections: pipelined requests are answered in order on one connection; HEAD
    has the headers without the body; a query string does not change the path."""
    answer = await raw_exchange(
        admin,
        b"GET /readyz?probe=1 HTTP/1.1\r\nHost: a\r\n\r\n"
        b"HEAD /healthz HTTP/1.1\r\nHost: a\r\n\r\n"
        b"GET /healthz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    responses = answer.split(b"HTTP/1.1 ")[1:]
    assert [r.split(b"\r\n", 1)[0] for r in responses] == [b"200 OK"] * 3
    assert responses[0].endswith(b'{"status": "ready"}')
    assert b"Content-Length: 16" in responses[1] and responses[1].endswith(b"\r\n\r\n")  # HEAD: no body
    assert responses[2].endswith(b'{"status": "ok"}') and b"Connection: close" in responses[2]


async def test_unknown_paths_methods_and_malformed_requests(admin: str) -> None:
    async with aiohttp.ClientSession() as client:
        async with client.get(f"{admin}/chat") as missing:
            assert missing.status == 404
        async with client.post(f"{admin}/readyz", data=b"x") as post:
            assert (post.status, post.headers["Allow"]) == (405, "GET, HEAD")
    assert (await raw_exchange(admin, b"GET /healthz HTTP/1.1\r\nHost a\r\n\r\n")).startswith(
        b"HTTP/1.1 400 Bad Request\r\n"
    )
    huge = b"GET /healthz HTTP/1.1\r\nX-Filler: " + b"a" * MAX_HEAD_BYTES  # a head that never ends
    assert (await raw_exchange(admin, huge)).startswith(b"HTTP/1.1 431 ")


async def test_a_taken_admin_port_is_an_error_and_close_ends_open_connections() -> None:
    first = AdminServer(Lifecycle(), Metrics())
    await first.start("127.0.0.1", 0)
    try:
        port = int(first.addresses[0].rpartition(":")[2])
        with pytest.raises(OSError):
            await AdminServer(Lifecycle(), Metrics()).start("127.0.0.1", port)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n")
        assert (await reader.readuntil(b'{"status": "ok"}')).startswith(b"HTTP/1.1 200 OK")
    finally:
        await first.close()
    assert await asyncio.wait_for(reader.read(), timeout=10) == b""  # the idle keep-alive connection was closed
    writer.close()


def test_published_request_counts_and_durations_match_prometheus_own_observations() -> None:
    """Requests are counted in plain integers and published at scrape: the exposition must be exactly what
    prometheus-client's own Counter.inc and Histogram.observe would have produced, bucket boundaries included."""
    durations = [0.0, 0.001, 0.005, 0.0050001, 0.01, 0.3, 1.0, 2.0, 299.9, 300.0, 301.0, 7200.0]
    ours = Metrics()
    reference = Metrics()
    for index, duration in enumerate(durations):
        status, source = (200, "body") if index % 3 else (502, "none")
        ours.count_request(status, source, duration)
        reference.requests.labels(str(status), source).inc()
        reference.request_duration.observe(duration)
    assert ours._bulk, "prometheus-client's histogram changed shape: every request would be observed directly"

    def samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        text = metrics.render(None)[0].decode()
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            if family.name in ("rum_proxy_requests", "rum_proxy_request_duration_seconds")
            for s in family.samples
            if not s.name.endswith("_created")
        }

    published = samples(ours)
    assert published == samples(reference)
    assert published[("rum_proxy_request_duration_seconds_bucket", (("le", "0.005"),))] == 3
    ours.count_request(200, "body", 0.002)  # counted after a scrape: in the next one, once
    again = samples(ours)
    assert again[("rum_proxy_requests_total", (("session_source", "body"), ("status", "200")))] == 9
    assert again[("rum_proxy_request_duration_seconds_count", ())] == len(durations) + 1
