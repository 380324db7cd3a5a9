"""Prometheus/OpenMetrics metrics for operators, one registry per application."""

from __future__ import annotations

import os
from bisect import bisect_left
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import choose_encoder

SESSION_SOURCES = ("body", "query", "header", "baggage", "cookie", "none")
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
PUBLISH_SECONDS = 1.0  # how often a worker of RUM_PROXY_WORKERS adds its counts to the shared metrics


class Metrics:
    """The proxy's metrics. `exposed` is what /metrics renders, when not this registry: the supervisor of
    RUM_PROXY_WORKERS renders the workers' values summed by prometheus-client's multiprocess collector.

    Finished requests are counted in plain integers and added to the Prometheus metrics by `publish()`, the way
    Envoy flushes its per-thread stats: a prometheus-client increment and observation cost ~1 µs of interpreted
    code and two locks per request, 3–4 % of the proxy's CPU. `render()` publishes first, so a scrape sees every
    request answered before it; a worker of RUM_PROXY_WORKERS publishes every `PUBLISH_SECONDS` and on exit.
    """

    def __init__(self, exposed: CollectorRegistry | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._exposed = exposed or self.registry
        self.requests = Counter(
            "rum_proxy_requests",
            "Requests answered, by HTTP status and by where the session ID was found.",
            ("status", "session_source"),
            registry=self.registry,
        )
        self.invalid_session_ids = Counter(
            "rum_proxy_invalid_session_ids",
            "Values that looked like a session ID but were not a valid one (ignored, never forwarded).",
            ("session_source",),  # not `source`: a tag key Datadog reserves (the log/integration source)
            registry=self.registry,
        )
        self.upstream_errors = Counter(
            "rum_proxy_upstream_errors",
            "Upstream failures: connect, timeout, protocol, truncated.",
            ("kind",),
            registry=self.registry,
        )
        self.bad_requests = Counter(
            "rum_proxy_bad_requests",
            "Malformed requests refused before anything was forwarded, by reason.",
            ("reason",),
            registry=self.registry,
        )
        self.request_duration = Histogram(
            "rum_proxy_request_duration_seconds",
            "Time from request start to the end of the response (streams included).",
            registry=self.registry,
            buckets=DURATION_BUCKETS,
        )
        self.open_streams = Gauge(
            "rum_proxy_open_streams",
            "Requests being forwarded right now.",
            registry=self.registry,
            multiprocess_mode="livesum",
        )
        self.open_websockets = Gauge(
            "rum_proxy_open_websockets",
            "WebSockets being bridged right now.",
            registry=self.registry,
            multiprocess_mode="livesum",
        )
        # Label children resolved once: a label lookup per request would cost more than the increment.
        self._invalid = {source: self.invalid_session_ids.labels(source) for source in SESSION_SOURCES}
        self._requests: dict[tuple[int, str], Counter] = {}
        # Not yet published: requests by (status, source); durations by bucket (the last one is +Inf), and their sum.
        self._counted: dict[tuple[int, str], int] = {}
        self._durations = [0] * (len(DURATION_BUCKETS) + 1)
        self._duration_sum = 0.0
        # A bucket count is added with prometheus-client's own per-bucket values (`observe` adds one at a time and
        # has no count argument). Checked once: were they ever to change shape, every request is observed directly.
        histogram = self.request_duration
        self._bulk = len(getattr(histogram, "_buckets", ())) == len(self._durations) and hasattr(histogram, "_sum")

    def count_request(self, status: int, session_source: str, duration: float) -> None:
        key = (status, session_source)
        self._counted[key] = self._counted.get(key, 0) + 1
        if self._bulk:
            self._durations[bisect_left(DURATION_BUCKETS, duration)] += 1  # the first bucket with duration <= le
            self._duration_sum += duration
        else:
            self.request_duration.observe(duration)

    def publish(self) -> None:
        """Add the requests counted since the last call to the Prometheus metrics."""
        counted, self._counted = self._counted, {}
        for (status, session_source), count in counted.items():
            child = self._requests.get((status, session_source))
            if child is None:
                child = self._requests[(status, session_source)] = self.requests.labels(str(status), session_source)
            child.inc(count)
        if any(self._durations):  # only counted in bulk mode
            histogram = self.request_duration
            for bucket, count in zip(histogram._buckets, self._durations, strict=True):
                if count:
                    bucket.inc(count)
            histogram._sum.inc(self._duration_sum)
            self._durations = [0] * len(self._durations)
            self._duration_sum = 0.0

    def track_open_streams(self, count: Callable[[], float]) -> bool:
        """Read the open-streams gauge from `count` at scrape time instead of moving it twice per request.
        Not possible in prometheus-client's multiprocess mode (RUM_PROXY_WORKERS > 1): returns False there."""
        if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
            return False
        self.open_streams.set_function(count)
        return True

    def count_invalid(self, source: str) -> None:
        self._invalid[source].inc()

    def render(self, accept: str | None) -> tuple[bytes, str]:
        self.publish()
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self._exposed), content_type
