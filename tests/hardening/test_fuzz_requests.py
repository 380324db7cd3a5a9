"""Generated raw requests against a running proxy: each is forwarded exactly as framed, or refused with a 4xx.

`make fuzz` runs many more examples (RUM_HARDENING_FUZZ_EXAMPLES)."""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.hardening.conftest import FUZZ_DERANDOMIZE, FUZZ_EXAMPLES, ProxyProcess, start_proxy
from tests.hardening.rawhttp import Connection, chunk_encode
from tests.hardening.upstreams import RecordingUpstream

NUMBER = itertools.count()
TCHAR = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
PCHAR = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~!$&'()*+,;=:@"
LEFT_TO_THE_PROXY = {"host", "content-length", "transfer-encoding", "upgrade", "x-fuzz-id"}

methods = st.one_of(
    st.sampled_from(["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD", "PROPFIND"]),
    st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZ", min_size=1, max_size=10),
)
segments = st.lists(
    st.one_of(st.text(PCHAR, max_size=12), st.integers(0, 255).map(lambda byte: f"%{byte:02X}")), max_size=6
)
targets = st.tuples(segments, st.one_of(st.none(), st.text(PCHAR + "/?", max_size=30))).map(
    lambda parts: "/" + "/".join(parts[0]) + ("" if parts[1] is None else "?" + parts[1])
)
header_values = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40).map(str.strip)
headers = st.lists(
    st.tuples(
        st.one_of(
            st.text(TCHAR, min_size=1, max_size=16),
            st.sampled_from(["Content-Type", "Content-Encoding", "Cookie", "baggage", "x-rum-session-id", "Expect"]),
        ).filter(lambda name: name.lower() not in LEFT_TO_THE_PROXY),
        header_values,
    ),
    max_size=8,
)
framings = st.sampled_from(["none", "length", "chunked"])


@pytest.fixture(scope="module")
def proxy(module_upstream: RecordingUpstream) -> Iterator[ProxyProcess]:
    process = start_proxy(module_upstream.url, MAX_INSPECT_BYTES=4096)
    yield process
    process.stop()


@settings(
    max_examples=FUZZ_EXAMPLES,
    derandomize=FUZZ_DERANDOMIZE,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(methods, targets, headers, st.binary(max_size=3000), framings, st.integers(1, 700))
def test_generated_requests_are_forwarded_as_framed_or_refused(
    proxy: ProxyProcess,
    upstream: RecordingUpstream,
    method: str,
    target: str,
    fields: list[tuple[str, str]],
    body: bytes,
    framing: str,
    chunk_size: int,
) -> None:
    fuzz_id = str(next(NUMBER))
    lines = [f"{method} {target} HTTP/1.1", "Host: proxy.test", f"X-Fuzz-Id: {fuzz_id}"]
    lines += [f"{name}: {value}" for name, value in fields]
    if framing == "none":
        body = b""
    elif framing == "length":
        lines.append(f"Content-Length: {len(body)}")
    else:
        lines.append("Transfer-Encoding: chunked")
    payload = chunk_encode(body, chunk_size) if framing == "chunked" else body
    with Connection(proxy.port) as conn:
        conn.send(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + payload)
        response = conn.read_response(method=method)
    assert response.status is not None, f"no answer ({response.ending})"
    seen = [request for request in upstream.requests if request.header("x-fuzz-id") == fuzz_id]
    if response.status >= 400:
        assert response.status < 500, (response.status, response.body[:300])
        assert seen == [], "a refused request reached the upstream"
        return
    assert response.status == 200, (response.status, response.body[:300])
    (request,) = seen
    assert (request.method, request.target) == (method, target)
    assert (request.body_length, request.body_sha256) == (len(body), hashlib.sha256(body).hexdigest())
    if framing == "length" and body:  # (an empty one: test_bodies.py says which methods keep `Content-Length: 0`)
        assert request.all("content-length") == [str(len(body))]
    assert proxy.alive
