"""Hostile session IDs and header games: an invalid ID is never forwarded, the request always is."""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Iterator
from urllib.parse import quote, unquote

import pytest

from tests.hardening.conftest import OTHER_ID, SESSION_ID, ProxyFactory, ProxyProcess, start_proxy
from tests.hardening.rawhttp import Response, build_request, exchange
from tests.hardening.upstreams import RecordingUpstream, Seen
from tests.support.testagent import TestAgent

# Values that must never reach the upstream as a session ID. Each is sent wherever HTTP lets it travel.
HOSTILE = {
    "crlf": SESSION_ID + "\r\nX-Injected: 1",
    "lf": SESSION_ID + "\nX-Injected: 1",
    "nul": SESSION_ID[:-1] + "\x00",
    "overlong": SESSION_ID + "0" * 4000,
    "not-a-uuid": "not-a-session-id",
    "braced": "{" + SESSION_ID + "}",
    "urn": "urn:uuid:" + SESSION_ID,
    "no-dashes": SESSION_ID.replace("-", ""),
    "empty": "",
}
NUMBER = itertools.count()
HEADER_SAFE = ("overlong", "not-a-uuid", "braced", "urn", "no-dashes", "empty")  # no CR/LF/NUL: valid HTTP
COOKIE_SAFE = ("overlong", "not-a-uuid", "no-dashes")  # within the RUM SDK's cookie grammar


@pytest.fixture(scope="module")
def proxy(module_upstream: RecordingUpstream, test_agent: TestAgent) -> Iterator[ProxyProcess]:
    """Default settings with tracing on, so Datadog propagation (`_dd.p.llmobs_sid`) is exercised too."""
    process = start_proxy(
        module_upstream.url, extra_env={"DD_TRACE_ENABLED": "true", "DD_TRACE_AGENT_URL": test_agent.url}
    )
    yield process
    process.stop()


def rum_cookie(session_id: str) -> str:
    now = int(time.time() * 1000)
    return f"_dd_s=rum=1&id={session_id}&created={now}&expire={now + 900_000}"


def carrying(source: str, value: object, target: str) -> bytes:
    """A request whose only session ID candidate is `value`, in `source`."""
    if source == "body":
        body = json.dumps({"session_id": value, "message": "hi"}).encode()
        return build_request("POST", target, [("Content-Type", "application/json")], body)
    if source == "query":
        return build_request("GET", f"{target}?session_id={quote(str(value), safe='')}")
    if source == "header":
        return build_request("GET", target, [("x-rum-session-id", str(value))])
    if source == "baggage":
        return build_request("GET", target, [("baggage", f"session.id={quote(str(value), safe='')},user.id=u1")])
    if source == "cookie":
        return build_request("GET", target, [("Cookie", rum_cookie(str(value)))])
    raise ValueError(source)


def forwarded_session(seen: Seen) -> dict[str, object]:
    """Every place the upstream could read a session ID from."""
    baggage = ",".join(seen.all("baggage"))
    members = dict(member.split(";")[0].strip().partition("=")[::2] for member in baggage.split(",") if member)
    tags = dict(tag.partition("=")[::2] for tag in ",".join(seen.all("x-datadog-tags")).split(",") if tag)
    return {
        "header": [value for _, value in seen.spelled_like("x-rum-session-id")],
        "baggage": members.get("session.id"),
        "dd_tags": tags.get("_dd.p.llmobs_sid"),
    }


def send(proxy: ProxyProcess, upstream: RecordingUpstream, request: bytes) -> tuple[Response, Seen]:
    response = exchange(proxy.port, request)
    assert response.status == 200, (response.status, response.body[:300])
    (seen,) = upstream.requests
    return response, seen


CASES = (
    [pytest.param("body", value, id=f"body-{name}") for name, value in HOSTILE.items()]
    + [
        pytest.param("body", value, id=f"body-{name}")
        for name, value in {
            "number": 12345,
            "object": {"id": SESSION_ID},
            "list": [SESSION_ID],
            "null": None,
            "true": True,
            "false": False,
        }.items()
    ]
    + [pytest.param("query", value, id=f"query-{name}") for name, value in HOSTILE.items()]
    + [pytest.param("header", HOSTILE[name], id=f"header-{name}") for name in HEADER_SAFE]
    + [pytest.param("baggage", value, id=f"baggage-{name}") for name, value in HOSTILE.items()]
    + [pytest.param("cookie", HOSTILE[name], id=f"cookie-{name}") for name in COOKIE_SAFE]
)


@pytest.mark.parametrize(("source", "value"), CASES)
def test_an_invalid_session_id_is_never_forwarded_but_the_request_is(
    proxy: ProxyProcess, upstream: RecordingUpstream, source: str, value: object
) -> None:
    target = f"/invalid/{source}/{next(NUMBER)}"
    _, seen = send(proxy, upstream, carrying(source, value, target))
    assert forwarded_session(seen) == {"header": [], "baggage": None, "dd_tags": None}
    assert seen.all("x-injected") == []
    if source == "baggage":
        assert "user.id=u1" in ",".join(seen.all("baggage")), "other baggage members are kept"
    line = proxy.wait_for_request_line(target.split("?")[0])
    assert (line["status"], line["session_source"], line.get("session_id")) == (200, "none", None)


@pytest.mark.parametrize("source", ["body", "query", "header", "baggage", "cookie"])
def test_a_valid_session_id_is_forwarded_three_ways(
    proxy: ProxyProcess, upstream: RecordingUpstream, source: str
) -> None:
    """The control for the test above: the same carriers with a valid (upper-case) ID do forward it."""
    target = f"/valid/{source}"
    _, seen = send(proxy, upstream, carrying(source, SESSION_ID.upper() if source != "cookie" else SESSION_ID, target))
    assert forwarded_session(seen) == {"header": [SESSION_ID], "baggage": SESSION_ID, "dd_tags": SESSION_ID}
    line = proxy.wait_for_request_line(target)
    assert (line["session_source"], line["session_id"], line["level"]) == (source, SESSION_ID, "info")


FORGED = "{forged}"
COPIES = [
    pytest.param([("X-RUM-Session-Id", FORGED)], id="mixed-case"),
    pytest.param([("x-rum-session-id", FORGED), ("x-rum-session-id", "junk")], id="twice"),
    pytest.param([("X_RUM_SESSION_ID", FORGED)], id="underscores"),
    pytest.param([("x_rum-session_id", FORGED)], id="mixed-separators"),
    pytest.param([("Connection", "x-rum-session-id")], id="connection-names-it"),
    pytest.param(
        [("Connection", "keep-alive, X-Rum-Session-Id"), ("X-Rum-Session-Id", FORGED)], id="connection-and-copy"
    ),
]


def forge(copies: list[tuple[str, str]], value: str) -> list[tuple[str, str]]:
    return [(name, value if field == FORGED else field) for name, field in copies]


@pytest.mark.parametrize("copies", COPIES)
def test_client_copies_of_the_session_header_never_reach_the_upstream(
    proxy: ProxyProcess, upstream: RecordingUpstream, copies: list[tuple[str, str]]
) -> None:
    """The body's ID wins (first in precedence); whatever the client put in the header is replaced by it."""
    body = json.dumps({"session_id": SESSION_ID}).encode()
    headers = [("Content-Type", "application/json"), *forge(copies, OTHER_ID)]
    _, seen = send(proxy, upstream, build_request("POST", "/copies", headers, body))
    assert [value for _, value in seen.spelled_like("x-rum-session-id")] == [SESSION_ID], seen.headers


@pytest.mark.parametrize("copies", COPIES)
def test_client_copies_are_dropped_when_no_valid_id_is_found(
    proxy: ProxyProcess, upstream: RecordingUpstream, copies: list[tuple[str, str]]
) -> None:
    _, seen = send(proxy, upstream, build_request("GET", "/copies-no-id", forge(copies, "forged-by-the-client")))
    assert seen.spelled_like("x-rum-session-id") == [], seen.headers


def test_a_valid_looking_header_is_not_forwarded_when_the_header_source_is_off(
    running_proxy: ProxyFactory, upstream: RecordingUpstream
) -> None:
    proxy = running_proxy(upstream.url, SOURCES="body,cookie")
    _, seen = send(proxy, upstream, build_request("GET", "/source-off", [("x-rum-session-id", OTHER_ID)]))
    assert seen.spelled_like("x-rum-session-id") == [], seen.headers


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param(
            [
                ("Connection", "Upgrade, HTTP2-Settings"),
                ("Upgrade", "h2c"),
                ("HTTP2-Settings", "AAMAAABkAARAAAAAAAIAAAAA"),
            ],
            id="rfc7540-upgrade",
        ),
        pytest.param([("Upgrade", "h2c"), ("HTTP2-Settings", "AAMAAABkAARAAAAAAAIAAAAA")], id="without-connection"),
        pytest.param([("Connection", "upgrade"), ("Upgrade", "h2c")], id="without-settings"),
    ],
)
def test_h2c_upgrades_are_forwarded_as_plain_requests(
    proxy: ProxyProcess, upstream: RecordingUpstream, headers: list[tuple[str, str]]
) -> None:
    response, seen = send(proxy, upstream, build_request("GET", "/h2c", headers))
    assert response.status == 200 and response.json()["target"] == "/h2c"
    names = {name.lower() for name, _ in seen.headers}
    assert not names & {"upgrade", "http2-settings", "connection"}, seen.headers


@pytest.mark.parametrize("named", ["host", "Host, keep-alive", "x-forwarded-for, host"])
def test_connection_cannot_take_away_the_host(proxy: ProxyProcess, upstream: RecordingUpstream, named: str) -> None:
    """A field named in Connection is hop-by-hop, but an HTTP/1.1 request always carries exactly one Host."""
    _, seen = send(proxy, upstream, build_request("GET", "/connection-host", [("Connection", named)]))
    assert len(seen.all("host")) == 1, seen.headers


# ---- issue 17 item 6: a client's session carriers never survive, whatever the proxy can or cannot rewrite

SPOOFED = OTHER_ID  # a valid-looking ID the client puts where the proxy does not look for one
PAD = "_dd.p.pad=" + "a" * 500  # with the session tag added, past the tracers' 512-byte x-datadog-tags limit
DD_PAD = "t.pad:" + "b" * 240  # with the session field added, past the 256-byte tracestate dd member limit
DATADOG = [("x-datadog-trace-id", "42"), ("x-datadog-parent-id", "7")]
W3C = [("traceparent", "00-0000000000000000000000000000002a-0000000000000007-01")]
CARRIERS = {
    "tags-no-id": [*DATADOG, ("x-datadog-tags", f"_dd.p.dm=-4,_dd.p.llmobs_sid={SPOOFED}")],
    "tags-junk-no-id": [*DATADOG, ("x-datadog-tags", "_dd.p.llmobs_sid=forged-by-the-client")],
    "tags-underscore": [*DATADOG, ("x_datadog_tags", f"_dd.p.llmobs_sid={SPOOFED}")],
    "padded-tags": [*DATADOG, ("x-datadog-tags", f"_dd.p.llmobs_sid={SPOOFED},{PAD}")],
    "padded-tracestate": [*W3C, ("tracestate", f"dd={DD_PAD};t.llmobs_sid:{SPOOFED},rojo=1")],
    "malformed-baggage": [("baggage", f"user.id=u1,this is not baggage,session.id={SPOOFED}")],
    "encoded-baggage-key": [("baggage", f"user.id=u1,session%2Eid={SPOOFED}")],
    "not-ascii-baggage": [("baggage", f"user.id=u1,session.id={SPOOFED},k=caf\xe9")],
    "legacy-baggage": [("ot-baggage-session.id", SPOOFED), ("ot-baggage-user.id", "u1")],
}
CONFIGURATIONS = {
    "defaults": {},
    "propagation-off": {"PROPAGATE_TRACE": "false"},
    "baggage-off": {"PROPAGATE_BAGGAGE": "false"},
    "apm-span": {"APM_SPAN": "true"},
}


def sessions_seen(seen: Seen) -> set[str]:
    """Every session a reader of the forwarded request could take (ddtrace, dd-trace-js, OpenTelemetry, the hook):
    the session header in any spelling, any llmobs session tag or tracestate field, any reading of session.id."""
    found = {value for _, value in seen.spelled_like("x-rum-session-id") + seen.spelled_like("ot-baggage-session.id")}
    for _, value in seen.spelled_like("x-datadog-tags"):
        found |= {v.strip() for k, _, v in (m.partition("=") for m in value.split(",")) if "llmobs_sid" in k}
    for value in seen.all("tracestate"):
        for member in value.split(","):
            vendor, sep, rest = member.strip().partition("=")
            if sep and vendor.strip() == "dd":
                found |= {v.strip() for k, _, v in (f.partition(":") for f in rest.split(";")) if "llmobs_sid" in k}
    for value in seen.all("baggage"):
        for member in value.split(","):
            for reading in (member, member.split(";", 1)[0]):
                key, sep, rest = reading.partition("=")
                if sep and unquote(key).strip() == "session.id":
                    found.add(unquote(rest).strip())
    return found


@pytest.mark.parametrize("configuration", CONFIGURATIONS.values(), ids=CONFIGURATIONS.keys())
def test_no_client_session_carrier_reaches_the_upstream(
    running_proxy: ProxyFactory, upstream: RecordingUpstream, test_agent: TestAgent, configuration: dict[str, str]
) -> None:
    """The README's threat model: the upstream reads a session only where the proxy put its validated ID."""
    extra_env = {"DD_TRACE_ENABLED": "true", "DD_TRACE_AGENT_URL": test_agent.url}
    proxy = running_proxy(upstream.url, extra_env=extra_env, **configuration)
    leaks = []
    for name, carriers in CARRIERS.items():
        for session_id in (None, SESSION_ID):
            upstream.reset()
            headers = [*carriers, *([("Cookie", rum_cookie(session_id))] if session_id else [])]
            _, seen = send(proxy, upstream, build_request("GET", f"/carriers/{name}", headers))
            if sessions_seen(seen) - {session_id}:
                leaks.append((name, session_id, seen.headers))
            kept = ",".join(seen.all("baggage") + seen.all("ot-baggage-user.id"))
            assert "u1" in kept or "baggage" not in name, "other members are kept"
    assert leaks == []


# ---- issue 17 item 11: Connection cannot take away the proxy's X-Forwarded-*; an absolute-form target's Host


def test_connection_cannot_take_away_the_proxys_forwarded_fields(
    proxy: ProxyProcess, upstream: RecordingUpstream
) -> None:
    headers = [
        ("Connection", "X-Forwarded-For, X-Forwarded-Proto, X-Forwarded-Host"),
        ("X-Forwarded-For", "6.6.6.6"),
        ("X-Forwarded-Proto", "gopher"),
        ("X-Forwarded-Host", "evil.example"),
    ]
    _, seen = send(proxy, upstream, build_request("GET", "/forwarded", headers))
    assert seen.all("x-forwarded-for") == ["127.0.0.1"], seen.headers
    assert seen.all("x-forwarded-proto") == ["http"], seen.headers
    assert seen.all("x-forwarded-host") == ["proxy.test"], seen.headers


def test_an_absolute_form_target_names_the_host(proxy: ProxyProcess, upstream: RecordingUpstream) -> None:
    """RFC 9112 §3.2.2: the target's authority is the request's host, whatever Host the client sent."""
    request = build_request("GET", "http://agent.example:8000/absolute?x=1", host="evil.example")
    _, seen = send(proxy, upstream, request)
    assert (seen.target, seen.all("host")) == ("/absolute?x=1", ["agent.example:8000"]), seen.headers
    assert seen.all("x-forwarded-host") == ["agent.example:8000"]
