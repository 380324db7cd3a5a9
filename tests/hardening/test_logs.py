"""One request line per request with the promised fields; bodies, query strings and cookies are never logged."""

from __future__ import annotations

import json

from tests.hardening.conftest import SESSION_ID, ProxyFactory, assert_no_traceback
from tests.hardening.rawhttp import build_request, exchange
from tests.hardening.upstreams import RecordingUpstream, closed_port

SECRET_QUERY = "query-secret-7c1d"
SECRET_BODY = "body-secret-52aa"
SECRET_COOKIE = "cookie-secret-e0f3"


def test_one_info_line_per_request_and_no_secrets(running_proxy: ProxyFactory, upstream: RecordingUpstream) -> None:
    proxy = running_proxy(upstream.url, LOG_LEVEL="debug")  # even at debug level
    body = json.dumps({"session_id": SESSION_ID, "message": SECRET_BODY}).encode()
    headers = [("Content-Type", "application/json"), ("Cookie", f"sid={SECRET_COOKIE}; theme=dark")]
    request = build_request("POST", f"/chat/send?token={SECRET_QUERY}&a=1", headers, body)
    assert exchange(proxy.port, request).status == 200
    assert exchange(proxy.port, build_request("GET", f"/plain?x={SECRET_QUERY}")).status == 200

    line = proxy.wait_for_request_line("/chat/send")
    assert len(proxy.request_lines("/chat/send")) == 1
    assert line["level"] == "info"
    assert (line["method"], line["path"], line["status"]) == ("POST", "/chat/send", 200)
    assert (line["session_source"], line["session_id"]) == ("body", SESSION_ID)
    assert isinstance(line["duration_ms"], int | float) and line["duration_ms"] >= 0
    assert "error" not in line
    plain = proxy.wait_for_request_line("/plain")
    assert (plain["session_source"], plain["session_id"]) == ("none", None)

    assert proxy.terminate() == 0
    output = proxy.output()
    for secret in (SECRET_QUERY, SECRET_BODY, SECRET_COOKIE):
        assert secret not in output, f"{secret} was logged"
    assert_no_traceback(proxy)


def test_every_error_answer_is_one_warning_request_line(running_proxy: ProxyFactory) -> None:
    proxy = running_proxy(f"http://127.0.0.1:{closed_port()}")
    for number in range(3):
        assert exchange(proxy.port, build_request("GET", f"/down/{number}")).status == 502
    for number in range(3):
        line = proxy.wait_for_request_line(f"/down/{number}")
        assert len(proxy.request_lines(f"/down/{number}")) == 1
        assert (line["level"], line["status"], line["error"]) == ("warning", 502, "upstream_unavailable")
    assert_no_traceback(proxy)
