"""Request bodies reach the upstream byte for byte with their own headers, whatever they contain or claim."""

from __future__ import annotations

import gzip
import hashlib
import itertools
import json
import zlib
from collections.abc import Iterator

import brotli
import pytest
import zstandard

from tests.hardening.conftest import SESSION_ID, ProxyProcess, start_proxy
from tests.hardening.rawhttp import build_request, exchange
from tests.hardening.upstreams import RecordingUpstream

INSPECT_LIMIT = 65_536
NUMBER = itertools.count()
JSON_WITH_ID = json.dumps({"session_id": SESSION_ID, "message": "hello"}).encode()
MULTIPART = (
    b'--XyZ\r\nContent-Disposition: form-data; name="session_id"\r\n\r\n' + SESSION_ID.encode() + b"\r\n"
    b'--XyZ\r\nContent-Disposition: form-data; name="file"; filename="a.bin"\r\n'
    b"Content-Type: application/octet-stream\r\n\r\n" + bytes(range(256)) * 8 + b"\r\n--XyZ--\r\n"
)
OVER_LIMIT = JSON_WITH_ID[:-1] + b', "pad": "' + b"x" * (INSPECT_LIMIT + 10) + b'"}'

# id, Content-Type, Content-Encoding, body, the session the upstream must get (None: none; ... : either)
CASES = [
    ("json", "application/json", None, JSON_WITH_ID, SESSION_ID),
    ("json-gzip", "application/json", "gzip", gzip.compress(JSON_WITH_ID), SESSION_ID),
    ("json-deflate", "application/json", "deflate", zlib.compress(JSON_WITH_ID), SESSION_ID),
    ("json-gzip-uppercase-coding", "application/json", "GZIP", gzip.compress(JSON_WITH_ID), SESSION_ID),
    ("json-br", "application/json", "br", brotli.compress(JSON_WITH_ID), None),
    ("json-zstd", "application/json", "zstd", zstandard.ZstdCompressor().compress(JSON_WITH_ID), None),
    ("json-unknown-coding", "application/json", "x-foo", b"\x00\x01opaque" + JSON_WITH_ID, None),
    ("json-gzip-corrupt", "application/json", "gzip", b"\x1f\x8b\x08\x00garbage" + JSON_WITH_ID, None),
    ("json-gzip-twice", "application/json", "gzip, gzip", gzip.compress(gzip.compress(JSON_WITH_ID)), ...),
    ("text-gzip", "text/plain", "gzip", gzip.compress(b"plain text " * 1000), None),
    ("malformed-json", "application/json", None, b'{"session_id": "' + SESSION_ID.encode() + b'", ', ...),
    ("json-array", "application/json", None, json.dumps([{"session_id": SESSION_ID}]).encode(), None),
    ("json-scalar", "application/json", None, json.dumps(SESSION_ID).encode(), None),
    ("json-non-utf8", "application/json", None, JSON_WITH_ID[:-1] + b', "x": "\xff\xfe\xc0"}', ...),
    ("json-over-inspect-limit", "application/json", None, OVER_LIMIT, None),
    ("multipart", "multipart/form-data; boundary=XyZ", None, MULTIPART, None),
    ("form", "application/x-www-form-urlencoded", None, f"a=1&session_id={SESSION_ID}".encode(), SESSION_ID),
    ("form-non-ascii", "application/x-www-form-urlencoded", None, b"a=\xff\xfe&b=2", None),
    ("binary", "application/octet-stream", None, bytes(range(256)) * 64, None),
    ("no-content-type", None, None, b"\x00\xffraw", None),
]


@pytest.fixture(scope="module")
def proxy(module_upstream: RecordingUpstream) -> Iterator[ProxyProcess]:
    process = start_proxy(module_upstream.url, MAX_INSPECT_BYTES=INSPECT_LIMIT)
    yield process
    process.stop()


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
@pytest.mark.parametrize(
    ("content_type", "encoding", "body", "session"), [pytest.param(*case[1:], id=case[0]) for case in CASES]
)
def test_body_is_forwarded_byte_identical_with_its_own_headers(
    proxy: ProxyProcess,
    upstream: RecordingUpstream,
    content_type: str | None,
    encoding: str | None,
    body: bytes,
    session: object,
    chunked: bool,
) -> None:
    headers = [("Content-Type", content_type)] if content_type else []
    headers += [("Content-Encoding", encoding)] if encoding else []
    target = f"/body/{next(NUMBER)}"
    response = exchange(proxy.port, build_request("POST", target, headers, body, chunked=chunked))
    assert response.status == 200, (response.status, response.body[:300])
    (seen,) = upstream.requests
    assert (seen.body_length, seen.body_sha256) == (len(body), hashlib.sha256(body).hexdigest())
    assert seen.all("content-encoding") == ([encoding] if encoding else [])
    assert seen.all("content-type") == ([content_type] if content_type else [])
    lengths = seen.all("content-length")
    transfer = [value.lower() for value in seen.all("transfer-encoding")]
    assert (lengths == [str(len(body))] and not transfer) or (transfer == ["chunked"] and not lengths), seen.headers
    if not chunked:
        assert lengths == [str(len(body))], "a length-framed body stays length-framed"
    if session is not ...:
        assert seen.all("x-rum-session-id") == ([session] if session else [])
        line = proxy.wait_for_request_line(target)
        assert line["session_source"] == ("body" if session else "none")


def test_a_gzip_bomb_is_forwarded_untouched_and_memory_stays_bounded(
    proxy: ProxyProcess, upstream: RecordingUpstream
) -> None:
    """128 KiB that would inflate to 128 MiB: not inspected (over the limit), not inflated, passed through as is."""
    inflated = 128 * 1024 * 1024
    bomb = zlib.compressobj(9, zlib.DEFLATED, 31)  # gzip container
    head = b'{"session_id": "' + SESSION_ID.encode() + b'", "pad": "'
    compressed = bomb.compress(head) + bomb.compress(b"0" * inflated) + bomb.compress(b'"}') + bomb.flush()
    assert len(compressed) < 256 * 1024
    before = proxy.rss_bytes()
    headers = [("Content-Type", "application/json"), ("Content-Encoding", "gzip")]
    response = exchange(proxy.port, build_request("POST", "/bomb", headers, compressed), timeout=30)
    assert response.status == 200
    (seen,) = upstream.requests
    assert seen.body == compressed
    assert seen.all("x-rum-session-id") == []
    grown = proxy.peak_rss_bytes() - before
    assert grown < 50 * 1024 * 1024, f"proxy peak RSS grew by {grown / 2**20:.0f} MiB"


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH"])
def test_an_empty_length_framed_body_keeps_its_content_length(
    proxy: ProxyProcess, upstream: RecordingUpstream, method: str
) -> None:
    """`Content-Length: 0` on a POST is framing the upstream may require (nginx answers 411 without it)."""
    response = exchange(proxy.port, build_request(method, "/empty-body", [("Content-Type", "application/json")], b""))
    assert response.status == 200
    (seen,) = upstream.requests
    assert (seen.all("content-length"), seen.body_length) == (["0"], 0), seen.headers
