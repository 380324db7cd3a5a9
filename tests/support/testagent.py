"""Datadog's test agent (ddapm-test-agent) as the Datadog Agent, and decoding of the LLMObs span events it got."""

from __future__ import annotations

import base64
import contextlib
import gzip
import json
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack

from tests.support.processes import VENV_PYTHON, free_port, running

LLMOBS_STRUCT_KEY = "_llmobs"


@dataclass
class TestAgent:
    url: str

    __test__ = False  # not a pytest class

    def get_json(self, path: str) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=10) as response:
            return json.loads(response.read() or b"null")

    def requests(self) -> list[dict[str, Any]]:
        return list(self.get_json("/test/session/requests"))

    def clear(self) -> None:
        self.get_json("/test/session/clear")

    def llmobs_span_events(self) -> list[dict[str, Any]]:
        """Every LLMObs span event received, from APM traces (meta_struct) and from the EVP proxy."""
        # ddtrace 4.16 was observed to send each event both in the trace's meta_struct and to the EVP proxy.
        events: dict[str, dict[str, Any]] = {}
        for request in self.requests():
            for event in decode_llmobs_request(request):
                events.setdefault(_span_key(event), event)
        return list(events.values())

    def apm_spans(self) -> list[dict[str, Any]]:
        """Every APM span received (v0.4 and v0.5 trace payloads), as dicts with v0.4's field names."""
        spans: list[dict[str, Any]] = []
        for request in self.requests():
            url = str(request.get("url", ""))
            if "/v0.4/traces" in url:
                traces = msgpack.unpackb(_body(request), raw=False, strict_map_key=False)
                spans += [span for trace in traces or [] for span in trace]
            elif "/v0.5/traces" in url:
                strings, traces = msgpack.unpackb(_body(request), raw=False, strict_map_key=False)
                spans += [_v05_span(strings, span) for trace in traces or [] for span in trace]
        return spans

    def wait_for_llmobs_spans(
        self,
        predicate: Callable[[list[dict[str, Any]]], bool],
        timeout: float = 30.0,
    ) -> list[dict[str, Any]]:
        """Bounded poll until ``predicate(events)`` holds; return the events (the last seen on timeout)."""
        return _poll(self.llmobs_span_events, predicate, timeout)

    def wait_for_apm_spans(
        self,
        predicate: Callable[[list[dict[str, Any]]], bool],
        timeout: float = 30.0,
    ) -> list[dict[str, Any]]:
        """Bounded poll until ``predicate(spans)`` holds; return the APM spans (the last seen on timeout)."""
        return _poll(self.apm_spans, predicate, timeout)


def _poll(
    fetch: Callable[[], list[dict[str, Any]]], predicate: Callable[[list[dict[str, Any]]], bool], timeout: float
) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    items = fetch()
    while not predicate(items) and time.monotonic() < deadline:
        time.sleep(0.1)  # poll interval while another process flushes
        items = fetch()
    return items


_V05_FIELDS = ("service", "name", "resource", "trace_id", "span_id", "parent_id", "start", "duration", "error")


def _v05_span(strings: list[str], span: list[Any]) -> dict[str, Any]:
    """A v0.5 span (an array whose strings are indexes into the payload's string table) as a v0.4 dict."""
    decoded: dict[str, Any] = dict(zip(_V05_FIELDS, span, strict=False))
    for key in ("service", "name", "resource"):
        decoded[key] = strings[decoded[key]]
    decoded["meta"] = {strings[k]: strings[v] for k, v in span[9].items()}
    decoded["metrics"] = {strings[k]: v for k, v in span[10].items()}
    decoded["type"] = strings[span[11]]
    return decoded


def span_id_of(event: dict[str, Any]) -> int:
    """LLMObs span id: events riding APM traces carry none of their own; the APM span's id is the same number."""
    return int(event.get("span_id") or (event.get("_apm_span") or {}).get("span_id") or 0)


def _span_key(event: dict[str, Any]) -> str:
    return str(span_id_of(event))


def _body(request: dict[str, Any]) -> bytes:
    raw = base64.b64decode(request.get("body") or "")
    headers = {k.lower(): v for k, v in (request.get("headers") or {}).items()}
    if headers.get("content-encoding") == "gzip" or raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    return raw


def decode_llmobs_request(request: dict[str, Any]) -> list[dict[str, Any]]:
    url = str(request.get("url", ""))
    # v0.5 (a string-table format) cannot carry meta_struct, so LLMObs events never ride it.
    if "/v0.4/traces" in url:
        return _events_from_traces(msgpack.unpackb(_body(request), raw=False, strict_map_key=False))
    if "/evp_proxy/" in url and "llmobs" in url:
        payload = json.loads(_body(request))
        batches = payload if isinstance(payload, list) else [payload]
        return [span for batch in batches for span in batch.get("spans", [])]
    return []


def _events_from_traces(traces: Any) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    for trace in traces or []:
        for span in trace:
            struct = (span.get("meta_struct") or {}).get(LLMOBS_STRUCT_KEY)
            if struct is None:
                continue
            event = msgpack.unpackb(struct, raw=False, strict_map_key=False) if isinstance(struct, bytes) else struct
            event.setdefault("_apm_span", {k: span.get(k) for k in ("name", "resource", "trace_id", "span_id")})
            events.append(event)
    return events


def session_id_of(event: dict[str, Any]) -> str | None:
    session_id = event.get("session_id")
    if session_id is None:
        for tag in event.get("tags") or []:
            if isinstance(tag, str) and tag.startswith("session_id:"):
                return tag.split(":", 1)[1]
    return str(session_id) if session_id is not None else None


def tags_of(event: dict[str, Any]) -> dict[str, str]:
    tags = event.get("tags") or []
    if isinstance(tags, dict):
        return {str(k): str(v) for k, v in tags.items()}
    return dict(tag.split(":", 1) for tag in tags if isinstance(tag, str) and ":" in tag)


@contextlib.contextmanager
def run_test_agent() -> Iterator[TestAgent]:
    port = free_port()
    argv = [
        str(VENV_PYTHON.parent / "ddapm-test-agent"),
        "--host", "127.0.0.1",
        "--port", str(port),
        # Fixed defaults (4317/4318) would clash between parallel test agents.
        "--otlp-http-port", str(free_port()),
        "--otlp-grpc-port", str(free_port()),
        "--disable-llmobs-data-forwarding",
    ]  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory(prefix="test-agent-") as cwd:
        argv += ["--snapshot-dir", cwd]
        with running("ddapm-test-agent", argv, ready_url=url + "/test/session/requests", cwd=Path(cwd), timeout=60):
            yield TestAgent(url)
