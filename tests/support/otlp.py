"""A local OTLP/HTTP trace receiver: decodes the protobuf ExportTraceServiceRequest bodies it is sent."""

from __future__ import annotations

import contextlib
import gzip
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue


@dataclass(frozen=True)
class OtlpSpan:
    name: str
    trace_id: int
    span_id: int
    parent_span_id: int | None
    scope: str
    service: str
    attributes: dict[str, Any]


@dataclass
class OtlpReceiver:
    url: str
    _spans: list[OtlpSpan] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def spans(self) -> list[OtlpSpan]:
        with self._lock:
            return list(self._spans)

    def add(self, spans: list[OtlpSpan]) -> None:
        with self._lock:
            self._spans += spans

    def wait_for(self, predicate: Callable[[list[OtlpSpan]], bool], timeout: float = 20.0) -> list[OtlpSpan]:
        """Bounded poll until ``predicate(spans)`` holds; return the spans (the last seen on timeout)."""
        deadline = time.monotonic() + timeout
        spans = self.spans()
        while not predicate(spans) and time.monotonic() < deadline:
            time.sleep(0.05)  # poll interval while another process exports
            spans = self.spans()
        return spans


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_value(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: _value(kv.value) for kv in value.kvlist_value.values}
    return getattr(value, kind) if kind else None


def decode_traces(body: bytes) -> list[OtlpSpan]:
    request = ExportTraceServiceRequest.FromString(body)
    spans: list[OtlpSpan] = []
    for resource_spans in request.resource_spans:
        resource = {kv.key: _value(kv.value) for kv in resource_spans.resource.attributes}
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                spans.append(
                    OtlpSpan(
                        name=span.name,
                        trace_id=int.from_bytes(span.trace_id, "big"),
                        span_id=int.from_bytes(span.span_id, "big"),
                        parent_span_id=int.from_bytes(span.parent_span_id, "big") if span.parent_span_id else None,
                        scope=scope_spans.scope.name,
                        service=str(resource.get("service.name", "")),
                        attributes={kv.key: _value(kv.value) for kv in span.attributes},
                    )
                )
    return spans


@contextlib.contextmanager
def run_otlp_receiver() -> Iterator[OtlpReceiver]:
    """OTLP/HTTP (protobuf) on a free loopback port; the exporter's endpoint is ``receiver.url``."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    receiver = OtlpReceiver(f"http://127.0.0.1:{server.server_address[1]}")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            if self.headers.get("Content-Encoding") == "gzip":
                body = gzip.decompress(body)
            if self.path != "/v1/traces":
                self.send_error(404)
                return
            receiver.add(decode_traces(body))
            payload = ExportTraceServiceResponse().SerializeToString()
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's signature
            pass

    server.RequestHandlerClass = Handler
    thread = threading.Thread(target=server.serve_forever, name="otlp-receiver", daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
