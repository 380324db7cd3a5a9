"""The request head the proxy forwards (issue 17): no client session carrier survives where the proxy cannot rewrite
it (item 6), the proxy's own X-Forwarded-* and an absolute-form target's Host (item 11), a Via of its own and
loop detection (item 12)."""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.headers import ForwardRules, forwards_to_itself, request_authority, scan_request_head, upstream_request_head
from proxy.trace_context import propagate

SID = "2c9b6f1e-8a3d-4f5b-9c7e-1d2f3a4b5c6d"
SPOOF = "0a1b2c3d-4e5f-4a6b-8c7d-8e9f0a1b2c3d"
VIA_TOKEN = b"rum-llmobs-proxy-test"
Pairs = list[tuple[str, str]]


def forward(headers: Pairs, *, target: bytes = b"/chat", version: bytes = b"1.1", **kwargs: Any) -> Pairs:
    rules = {"preserve_host": True, "propagate_baggage": True, "replaces_trace_headers": True}
    rules.update({k: kwargs.pop(k) for k in list(kwargs) if k in rules})
    options: dict[str, Any] = {"session_id": SID, "remote": "10.1.2.3", "trace_headers": {}, "body_framing": None}
    options.update(kwargs)
    raw = [(name.encode("latin-1"), value.encode("latin-1")) for name, value in headers]
    head = scan_request_head(b"GET", target, version, raw)
    forward_rules = ForwardRules(
        session_header=b"x-rum-session-id", upstream_host=b"upstream:8000", via_token=VIA_TOKEN, **rules
    )
    out = upstream_request_head(head, forward_rules, target=b"/chat", scheme=b"http", **options)
    assert out.startswith(b"GET /chat HTTP/1.1\r\n") and out.endswith(b"\r\n\r\n")
    lines = out.decode("latin-1").split("\r\n")[1:-2]
    return [(name, value) for name, _, value in (line.partition(": ") for line in lines)]


def getall(pairs: Pairs, name: str) -> list[str]:
    return [value for key, value in pairs if key.lower() == name.lower()]


# ---- issue 17 item 6: no client session carrier survives where the proxy cannot rewrite it


def test_passed_through_trace_headers_lose_a_client_session_tag() -> None:
    """RUM_PROXY_PROPAGATE_TRACE=false: trace headers pass through, but never with the client's session tag."""
    out = forward(
        [
            ("x-datadog-trace-id", "42"),
            ("x-datadog-tags", f"_dd.p.dm=-4,_dd.p.llmobs_sid={SPOOF}"),
            ("X_Datadog_Tags", f"_dd.p.llmobs_sid={SPOOF}"),
            ("tracestate", f"dd=s:1;t.llmobs_sid:{SPOOF},rojo=1"),
        ],
        replaces_trace_headers=False,
        session_id=None,
    )
    assert getall(out, "x-datadog-trace-id") == ["42"]
    assert getall(out, "x-datadog-tags") == ["_dd.p.dm=-4"]
    assert getall(out, "tracestate") == ["dd=s:1,rojo=1"]


@pytest.mark.parametrize("propagate", [True, False], ids=["propagation-on", "propagation-off"])
def test_legacy_baggage_never_carries_a_client_session(propagate: bool) -> None:
    """ddtrace's legacy baggage (ot-baggage-*) makes `ot-baggage-session.id` the context's session.id item."""
    headers = [("ot-baggage-session.id", SPOOF), ("OT_Baggage_Session.id", SPOOF), ("ot-baggage-user.id", "u1")]
    out = forward(headers, replaces_trace_headers=propagate, propagate_baggage=propagate, session_id=None)
    assert [(k, v) for k, v in out if "baggage" in k.lower()] == [("ot-baggage-user.id", "u1")]


def test_passed_through_trace_headers_without_a_session_are_untouched() -> None:
    headers = [("x-datadog-tags", "_dd.p.dm=-4"), ("tracestate", "dd=s:1, rojo=1"), ("baggage", "user.id=1 , x=2")]
    out = forward(headers, replaces_trace_headers=False, propagate_baggage=False, session_id=None)
    assert [(k, v) for k, v in out if k in {"x-datadog-tags", "tracestate", "baggage"}] == headers


@pytest.mark.parametrize(
    "baggage",
    [
        f"session%2Eid={SPOOF},user.id=u1",
        f"user.id=u1,this is not baggage,session.id={SPOOF}",
        f"user.id=u1,session.id={SPOOF},\xe9=\xe9",
    ],
    ids=["percent-encoded-key", "malformed", "not-ascii"],
)
@pytest.mark.parametrize("propagate_baggage", [True, False], ids=["rewritten", "passed"])
def test_baggage_never_keeps_a_client_session(baggage: str, propagate_baggage: bool) -> None:
    out = forward([("baggage", baggage)], propagate_baggage=propagate_baggage, session_id=None)
    assert SPOOF not in "".join(getall(out, "baggage"))
    assert "user.id=u1" in "".join(getall(out, "baggage"))


_KEYS = [
    "_dd.p.llmobs_sid",
    " _dd.p.llmobs_sid",
    "t.llmobs_sid",
    "dd=t.llmobs_sid",
    "dd",
    "session.id",
    "session%2Eid",
    "%73ession.id",
    "session.id%20",
    "_dd.p.tid",
    "user.id",
]
_VALUES = [
    SPOOF,
    SID,
    SID.upper(),
    SID + ";p=1",
    SPOOF + ";p=1",
    "junk",
    "",
    "42",
    "t.llmobs_sid:" + SPOOF,
    "s:1;t.llmobs_sid:" + SPOOF,
]
_member = st.one_of(
    st.builds(
        lambda k, s, v: k + s + v, st.sampled_from(_KEYS), st.sampled_from(["=", ":", " = "]), st.sampled_from(_VALUES)
    ),
    st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=8),
    st.just("a" * 600),
)
_value = st.builds(lambda ms, sep: sep.join(ms), st.lists(_member, max_size=5), st.sampled_from([",", ", ", ";"]))
_name = st.sampled_from(
    [
        "x-datadog-tags",
        "X_Datadog_Tags",
        "tracestate",
        "baggage",
        "Baggage",
        "x-datadog-trace-id",
        "x-datadog-parent-id",
        "traceparent",
        "x-rum-session-id",
        "X_RUM_Session_Id",
        "Connection",
        "Via",
    ]
)


def _baggage_readings(member: str) -> list[tuple[str, str]]:
    """(key, value) as ddtrace, OpenTelemetry and the hook each read a baggage list-member."""
    readings = []
    if "=" in member:
        key, value = member.split("=", 1)
        readings.append((unquote(key.strip()), unquote(value.strip())))  # ddtrace: properties stay in the value
    name_value = member.split(";", 1)[0]
    if "=" in name_value:
        key, value = name_value.split("=", 1)
        readings.append((unquote(key).strip(), unquote(value).strip()))  # OpenTelemetry
        readings.append((unquote(key.strip()), unquote(value.strip())))  # the hook
    return readings


def sessions_seen(pairs: Pairs) -> list[str]:
    """Every session ID a reader of the forwarded request could take: the session header, the llmobs session tag
    in x-datadog-tags and in tracestate's dd member, and baggage's session.id."""
    seen = []
    for name, value in pairs:
        field = name.lower().replace("_", "-")
        if field == "x-rum-session-id":
            seen.append(value)
        elif field == "x-datadog-tags":
            seen += [v.strip() for k, _, v in (m.partition("=") for m in value.split(",")) if "llmobs_sid" in k]
        elif field == "tracestate":
            for member in value.split(","):
                vendor, sep, rest = member.strip().partition("=")
                if sep and vendor.strip() == "dd":
                    fields = (f.partition(":") for f in rest.split(";"))
                    seen += [v.strip() for k, _, v in fields if "llmobs_sid" in k]
        elif field == "baggage":
            for member in value.split(","):
                seen += [v for k, v in _baggage_readings(member) if k == "session.id"]
    return seen


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(_name, _value), max_size=8),
    st.sampled_from([None, SID]),
    st.booleans(),
    st.booleans(),
)
def test_no_forwarded_header_carries_a_session_but_the_validated_one(
    headers: Pairs, session_id: str | None, propagate_trace: bool, propagate_baggage: bool
) -> None:
    raw = [(name.encode(), value.encode()) for name, value in headers]
    head = scan_request_head(b"GET", b"/chat", b"1.1", raw)
    trace_headers = propagate(head.index, session_id).headers if propagate_trace else {}
    out = forward(
        headers,
        session_id=session_id,
        trace_headers=trace_headers,
        replaces_trace_headers=propagate_trace,
        propagate_baggage=propagate_baggage,
    )
    assert set(sessions_seen(out)) <= ({session_id} if session_id else set()), out


# ---- issue 17 item 11: the proxy's own X-Forwarded-* and the Host of an absolute-form target


def test_connection_cannot_take_away_the_proxys_forwarded_fields() -> None:
    """A client may make its own X-Forwarded-* hop-by-hop; the proxy's additions are not the client's fields."""
    out = forward(
        [
            ("Host", "agent.example.com"),
            ("Connection", "X-Forwarded-For, X-Forwarded-Proto, X-Forwarded-Host"),
            ("X-Forwarded-For", "6.6.6.6"),
            ("X-Forwarded-Proto", "gopher"),
            ("X-Forwarded-Host", "evil.example"),
        ]
    )
    assert getall(out, "x-forwarded-for") == ["10.1.2.3"]
    assert getall(out, "x-forwarded-proto") == ["http"]
    assert getall(out, "x-forwarded-host") == ["agent.example.com"]


@pytest.mark.parametrize(
    ("target", "authority"),
    [
        (b"/chat", None),
        (b"*", None),
        (b"http://agent.example.com:8000/chat?x=1", b"agent.example.com:8000"),
        (b"HTTP://agent.example.com", b"agent.example.com"),
        (b"http://user:pw@agent.example.com/x", b"agent.example.com"),
        (b"http://[::1]:8000?q", b"[::1]:8000"),
        (b"http:///nohost", None),
        (b"ftp://agent.example.com/x", None),
    ],
)
def test_request_authority(target: bytes, authority: bytes | None) -> None:
    assert request_authority(target) == authority


def test_an_absolute_form_target_names_the_host() -> None:
    """RFC 9112 §3.2.2: the authority of an absolute-form target replaces the client's Host."""
    target = b"http://agent.example.com:8000/chat?x=1"
    out = forward([("Host", "evil.example"), ("Host", "again.example")], target=target)
    assert getall(out, "host") == ["agent.example.com:8000"]
    assert getall(out, "x-forwarded-host") == ["agent.example.com:8000"]
    assert getall(forward([("Host", "evil.example")], target=target, preserve_host=False), "host") == ["upstream:8000"]


# ---- issue 17 item 12: a Via of the proxy's own, and a request that comes back to it


def test_the_proxy_adds_itself_to_via() -> None:
    out = forward([("Via", "1.1 ingress, 1.0 cache"), ("Via", "2 edge")])
    assert getall(out, "via") == ["1.1 ingress, 1.0 cache", "2 edge", "1.1 rum-llmobs-proxy-test"]
    assert getall(forward([], version=b"1.0"), "via") == ["1.0 rum-llmobs-proxy-test"]


@pytest.mark.parametrize(
    ("via", "loop"),
    [
        ([], False),
        ([b"1.1 ingress"], False),
        ([b"1.1 rum-llmobs-proxy-other"], False),
        ([b"1.1 rum-llmobs-proxy-test"], True),
        ([b"1.1 ingress", b"1.1 a, 1.1 rum-llmobs-proxy-test (rum)"], True),
    ],
)
def test_a_request_that_already_went_through_the_proxy_is_a_loop(via: list[bytes], loop: bool) -> None:
    head = scan_request_head(b"GET", b"/", b"1.1", [(b"Via", value) for value in via])
    assert forwards_to_itself(head, b"rum-llmobs-proxy-test") is loop


def test_every_forwarded_request_is_recognised_when_it_comes_back() -> None:
    sent = forward([("Via", "1.1 ingress")])
    head = scan_request_head(b"GET", b"/", b"1.1", [(k.encode(), v.encode()) for k, v in sent])
    assert forwards_to_itself(head, VIA_TOKEN)
    assert not forwards_to_itself(head, ForwardRules(b"x", True, True, b"other:1", True).via_token)
