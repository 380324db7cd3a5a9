"""The admin server: health, readiness, metrics."""

from __future__ import annotations

from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from proxy.health import create_admin_app
from proxy.metrics import Metrics
from tests.proxy.conftest import SESSION_ID


async def test_health_ready_and_draining(aiohttp_client: Any, proxy: Any) -> None:
    admin = await aiohttp_client(create_admin_app(proxy.proxy.lifecycle, proxy.proxy.metrics))
    assert (await admin.get("/healthz")).status == 200
    assert (await admin.get("/readyz")).status == 200
    proxy.proxy.lifecycle.starting = True  # RUM_PROXY_WORKERS: not every worker listens yet
    starting = await admin.get("/readyz")
    assert (starting.status, (await starting.json())["status"]) == (503, "starting")
    proxy.proxy.lifecycle.starting = False
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
    assert 'rum_proxy_invalid_session_ids_total{session_source="query"} 1.0' in text
    assert "rum_proxy_request_duration_seconds_count 2.0" in text
    assert "rum_proxy_open_streams 0.0" in text


async def test_metrics_speak_openmetrics_when_asked(aiohttp_client: Any, proxy: Any) -> None:
    admin = await aiohttp_client(create_admin_app(proxy.proxy.lifecycle, proxy.proxy.metrics))
    resp = await admin.get("/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert resp.headers["Content-Type"].startswith("application/openmetrics-text")
    assert (await resp.text()).rstrip().endswith("# EOF")


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
