"""RUM_PROXY_WORKERS: processes sharing the port, one /metrics summing them all."""

from __future__ import annotations

import json
import signal
import time

from tests.hardening.conftest import SESSION_ID, ProxyFactory
from tests.hardening.proxyproc import GUARD
from tests.hardening.rawhttp import build_request, exchange
from tests.hardening.upstreams import RecordingUpstream

REQUESTS = 60


def test_workers_answer_every_request_and_the_supervisor_counts_them_all(
    running_proxy: ProxyFactory, upstream: RecordingUpstream
) -> None:
    proxy = running_proxy(upstream.url, WORKERS=2)
    body = json.dumps({"message": "hi", "session_id": SESSION_ID}).encode()
    for index in range(REQUESTS):  # one connection each: SO_REUSEPORT spreads them over the workers
        request = build_request("POST", f"/workers/{index}", [("Content-Type", "application/json")], body)
        assert exchange(proxy.port, request).status == 200
    reached = [seen for seen in upstream.requests if seen.target.startswith("/workers/")]
    assert len(reached) == REQUESTS
    assert {seen.header("x-rum-session-id") for seen in reached} == {SESSION_ID}

    # Each worker adds its counts to the shared metrics within a second (PUBLISH_SECONDS): a bounded poll.
    deadline = time.monotonic() + GUARD
    while (counted := proxy.metric_sum("rum_proxy_requests_total", session_source="body")) < REQUESTS:
        assert time.monotonic() < deadline, f"/metrics counted {counted} of {REQUESTS} requests"
        time.sleep(0.05)  # interval of a bounded poll of another process's state
    assert counted == REQUESTS
    assert proxy.metric_sum("rum_proxy_request_duration_seconds_count") == REQUESTS
    assert proxy.metric_sum("rum_proxy_request_duration_seconds_bucket", le="+Inf") == REQUESTS

    proxy.popen.send_signal(signal.SIGTERM)
    assert proxy.popen.wait(timeout=GUARD) == 0
