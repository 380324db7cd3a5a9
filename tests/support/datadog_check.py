"""The Datadog Agent's own OpenMetrics check (datadog-checks-base) run against a real proxy, and traffic that makes
every series appear: what the Agent would submit for a pod `inject` wrote, measured instead of guessed.

The check is the one the Agent runs for an `openmetrics` Autodiscovery annotation with `openmetrics_endpoint` set
(`OpenMetricsBaseCheckV2`, as `datadog_checks.openmetrics.OpenMetricsCheck.__new__` picks it), configured with the
instance `inject` writes. Its submissions land in datadog-checks-base's stub aggregator, as in integrations-core's
own tests. What the check cannot show is what the Agent's tagger adds (`AGENT_TAGS`).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import yaml
from datadog_checks.base import OpenMetricsBaseCheckV2
from datadog_checks.base.stubs import aggregator

from tests.hardening.proxyproc import ProxyProcess
from tests.hardening.rawhttp import Connection, Response, build_request, exchange, websocket_connect, ws_send
from tests.hardening.upstreams import LoopThread, RawAnswer, RawUpstream
from tests.support.processes import REPO

SIDECAR = "rum-llmobs-proxy"
EXAMPLE_DEPLOYMENT = REPO / "deploy" / "kubernetes" / "example" / "deployment.yaml"
SESSION_ID = "9f3c2a4e-5b6d-4c7e-8f90-a1b2c3d4e5f6"
GUARD = 10.0
IMAGE = "registry.example.com/rum-llmobs-proxy:0.1.0"
POD_NAME = "llm-agent-7d9c5b6f4-x2k8q"  # what the Agent puts for %%kube_pod_name%%

# Tag keys the Agent's tagger adds to every metric of a check it scheduled from a pod annotation, at the default
# DD_CHECKS_TAG_CARDINALITY=low (https://docs.datadoghq.com/containers/kubernetes/tag/): the unified service tags
# from the pod's `tags.datadoghq.com/...` labels (env, and the sidecar's own service and version, which `inject`
# sets) and the namespace. pod_name is orchestrator cardinality: the tagger leaves it out at the default, so the
# annotation adds it itself (tags: pod_name:%%kube_pod_name%%) and the check's own output shows it.
AGENT_TAGS = {
    "env": "tags.datadoghq.com/env",
    "service": f"tags.datadoghq.com/{SIDECAR}.service",
    "version": f"tags.datadoghq.com/{SIDECAR}.version",
    "kube_namespace": None,  # always known to the tagger
}
# Tag keys Datadog reserves (https://docs.datadoghq.com/getting_started/tagging/): a metric tag with one collides.
RESERVED_TAG_KEYS = frozenset({"host", "device", "source", "service", "env", "version"})

# The traffic: one request per session source, each of which the proxy must count under that source.
SOURCES = ("body", "query", "header", "baggage", "cookie", "none", "invalid")
WS_ACCEPT = base64.b64encode(
    hashlib.sha1(b"dGhlIHNhbXBsZSBub25jZQ==258EAFA5-E914-47DA-95CA-C5AB0DC11B85", usedforsecurity=False).digest()
).decode()


# ---- what `inject` writes ------------------------------------------------------------------------------------------
def injected_pod_template(manifest: Path = EXAMPLE_DEPLOYMENT) -> dict[str, Any]:
    """The example Deployment's pod template after the real `rum-llmobs-proxy inject` command (this checkout's)."""
    command = [sys.executable, "-m", "proxy", "inject", "--image", IMAGE, str(manifest)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False, cwd=REPO)
    assert result.returncode == 0, result.stderr
    for document in yaml.safe_load_all(result.stdout):
        if document and document.get("kind") == "Deployment":
            return dict(document["spec"]["template"])
    raise AssertionError(f"no Deployment in inject's output:\n{result.stdout[:2000]}")


def openmetrics_annotation(template: dict[str, Any]) -> dict[str, Any]:
    """The `openmetrics` check configuration of the sidecar's Autodiscovery annotation (init_config, instances)."""
    annotations = template["metadata"]["annotations"]
    checks = json.loads(annotations[f"ad.datadoghq.com/{SIDECAR}.checks"])
    return dict(checks["openmetrics"])


def resolve_template_variables(instance: dict[str, Any], host: str, port: int) -> dict[str, Any]:
    """The instance as the Agent runs it: Autodiscovery template variables replaced with this pod's values, and the
    admin port the annotation names replaced with the local proxy's (`inject` chose it for the pod)."""
    text = json.dumps(instance).replace("%%host%%", host).replace("%%kube_pod_name%%", POD_NAME)
    resolved = json.loads(text)
    endpoint: str = resolved["openmetrics_endpoint"]
    scheme, _, rest = endpoint.partition("://")
    authority, _, path = rest.partition("/")
    resolved["openmetrics_endpoint"] = f"{scheme}://{authority.rpartition(':')[0]}:{port}/{path}"
    assert "%%" not in json.dumps(resolved), f"an unresolved template variable: {resolved}"
    return dict(resolved)


# ---- what the check submits --------------------------------------------------------------------------------------
@dataclass
class Series:
    """One metric name as the check submitted it: its Datadog type and every tag key with the values seen."""

    name: str
    type: str
    tags: dict[str, set[str]] = field(default_factory=dict)
    samples: list[tuple[dict[str, str], float]] = field(default_factory=list)

    def add(self, tags: list[str], value: float) -> None:
        pairs = dict(tag.partition(":")[::2] for tag in tags)
        for key, tag_value in pairs.items():
            self.tags.setdefault(key, set()).add(tag_value)
        self.samples.append((pairs, value))

    def merge(self, other: Series) -> None:
        assert (self.name, self.type) == (other.name, other.type), (self, other)
        for key, values in other.tags.items():
            self.tags.setdefault(key, set()).update(values)
        self.samples += other.samples


def run_check(init_config: dict[str, Any], instance: dict[str, Any]) -> dict[str, Series]:
    """One run of the Agent's OpenMetrics check; every metric it submitted, by name."""
    aggregator.reset()  # type: ignore[no-untyped-call]
    check = OpenMetricsBaseCheckV2("openmetrics", init_config, [instance])  # type: ignore[no-untyped-call]
    error = check.run()
    assert error == "", f"the check failed: {error}"
    submitted: dict[str, Series] = {}
    for name, stubs in aggregator._metrics.items():
        for stub in stubs:
            kind = aggregator.METRIC_ENUM_MAP_REV[stub.type]
            series = submitted.setdefault(name, Series(name, kind))
            assert series.type == kind, f"{name} submitted as {series.type} and {kind}"
            series.add(list(stub.tags), float(stub.value))
    for name, buckets in aggregator._histogram_buckets.items():
        series = submitted.setdefault(name, Series(name, "distribution"))  # buckets become one distribution
        for bucket in buckets:
            series.add(list(bucket.tags), float(bucket.value))
    for name, checks in aggregator._service_checks.items():
        series = submitted.setdefault(name, Series(name, "service_check"))
        for service_check in checks:
            series.add(list(service_check.tags), float(service_check.status))
    aggregator.reset()  # type: ignore[no-untyped-call]
    return submitted


# ---- an agent stand-in and traffic of every kind -----------------------------------------------------------------
def _answer(target: str) -> RawAnswer:
    """The agent stand-in: a 200 for every request, except /broken (a response no HTTP parser accepts, so the proxy
    answers 502 and counts an upstream protocol error), /stream (a head and one chunk, then nothing: a stream that
    stays open) and /ws (a WebSocket upgrade accepted, then nothing: a WebSocket that stays open)."""
    if target.startswith("/broken"):
        return RawAnswer(b"HTTP/1.1 2OO NOT A STATUS\r\n\r\n", "close")
    if target.startswith("/stream"):
        head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
        event = b"data: first\n\n"
        return RawAnswer(head + b"%x\r\n%s\r\n" % (len(event), event), "hang")
    if target.startswith("/ws"):
        upgrade = f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {WS_ACCEPT}\r\n\r\n"
        return RawAnswer(b"HTTP/1.1 101 Switching Protocols\r\n" + upgrade.encode(), "hang")
    return RawAnswer(b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{"ok":true}')


@contextlib.contextmanager
def agent_stand_in() -> Iterator[RawUpstream]:
    loop = LoopThread()
    upstream = RawUpstream(loop, _answer).start()
    try:
        yield upstream
    finally:
        upstream.close()
        loop.stop()


def rum_cookie(session_id: str) -> str:
    now = int(time.time() * 1000)
    return f"_dd_s_v2=aid=0e8a54d2-51a5-4f0b-a1fe-64bd8b1d8e1f&id={session_id}&created={now}&expire={now + 900_000}"


def request_from(source: str, target: str) -> bytes:
    """A browser-like request whose session ID travels in `source` (`none`: no ID; `invalid`: not a UUID)."""
    if source == "body":
        body = json.dumps({"session_id": SESSION_ID, "message": "hi"}).encode()
        return build_request("POST", target, [("Content-Type", "application/json")], body)
    if source == "query":
        return build_request("GET", f"{target}?session_id={SESSION_ID}")
    if source == "header":
        return build_request("GET", target, [("x-rum-session-id", SESSION_ID)])
    if source == "baggage":
        return build_request("GET", target, [("baggage", f"session.id={quote(SESSION_ID)},user.id=u1")])
    if source == "cookie":
        return build_request("GET", target, [("Cookie", rum_cookie(SESSION_ID))])
    if source == "none":
        return build_request("GET", target)
    if source == "invalid":
        return build_request("GET", f"{target}?session_id=not-a-session-id")
    raise ValueError(source)


def send(proxy: ProxyProcess, request: bytes, status: int) -> Response:
    response = exchange(proxy.port, request)
    assert response.status == status, (response.status, response.body[:300])
    return response


MALFORMED = b"GET /chat HTTP/1.1\r\nHost: proxy.test\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"


def drive_every_kind(proxy: ProxyProcess, rounds: int = 1) -> dict[str, int]:
    """Requests of every session source, a malformed request and an upstream failure, `rounds` times; the number
    of each sent (keys: the sources, `malformed`, `broken`)."""
    sent = dict.fromkeys((*SOURCES, "malformed", "broken"), 0)
    for _ in range(rounds):
        for source in SOURCES:
            send(proxy, request_from(source, f"/chat/{source}"), 200)
            sent[source] += 1
        send(proxy, MALFORMED, 400)
        sent["malformed"] += 1
        send(proxy, build_request("GET", "/broken"), 502)
        sent["broken"] += 1
    return sent


@contextlib.contextmanager
def open_stream_and_websocket(proxy: ProxyProcess) -> Iterator[None]:
    """One response stream and one WebSocket held open through the proxy until the block ends."""
    with contextlib.ExitStack() as stack:
        stream = stack.enter_context(Connection(proxy.port, timeout=GUARD))
        stream.send(request_from("cookie", "/stream"))
        assert stream.read_head().status == 200
        ws, response = websocket_connect(proxy.port, "/ws?session_id=" + SESSION_ID)
        stack.callback(ws.close)
        assert response.status == 101, response
        ws_send(ws, b"hello")
        yield


def wait_for_counts(proxy: ProxyProcess, sent: dict[str, int], timeout: float = GUARD) -> None:
    """Bounded poll of /metrics until every request `drive_every_kind` sent is counted under its session source (a
    worker of RUM_PROXY_WORKERS publishes its counts every second, so a scrape right after may not see them yet).
    The malformed request is left out: whether the proxy counts a parser's 400 as a request is not asked here."""
    wanted = {source: sent[source] for source in SOURCES if source not in ("none", "invalid")}
    wanted["none"] = sent["none"] + sent["invalid"] + sent["broken"]
    deadline = time.monotonic() + timeout
    while True:
        samples = proxy.metrics()
        counted = {
            source: sum(
                value
                for (name, labels), value in samples.items()
                if name == "rum_proxy_requests_total"
                and ("session_source", source) in labels
                and (source != "none" or ("status", "400") not in labels)
            )
            for source in wanted
        }
        if all(counted[source] >= number for source, number in wanted.items()):
            return
        assert time.monotonic() < deadline, f"counted {counted} of {wanted} after {timeout}s"
        time.sleep(0.05)  # interval of a bounded poll of another process's published counters


# ---- Datadog metric queries, as far as the dashboard and monitors use them -----------------------------------------
TERM = re.compile(
    r"(?:(?P<aggregation>sum|avg|min|max|count|p50|p75|p90|p95|p99):)?(?P<metric>[a-z][a-z0-9_.]*)"
    r"\{(?P<filter>[^}]*)\}(?:\s*by\s*\{(?P<by>[^}]*)\})?(?P<function>\.as_count\(\)|\.as_rate\(\))?"
)


@dataclass
class Term:
    """One `aggregation:metric{filters} by {tags}.function` part of a query."""

    aggregation: str | None
    metric: str
    filters: list[str]
    by: list[str]
    function: str | None


def terms(query: str) -> list[Term]:
    found = [
        Term(
            m["aggregation"],
            m["metric"],
            [item.strip() for item in m["filter"].split(",") if item.strip()],
            [item.strip() for item in (m["by"] or "").split(",") if item.strip()],
            m["function"],
        )
        for m in TERM.finditer(query)
    ]
    braces = sum(1 + bool(term.by) for term in found)
    assert braces == query.count("{"), f"a part of {query!r} is not a metric query this test understands"
    assert found, query
    return found
