"""Property tests of the pure parsers: cookies, baggage, the JSON body field lookup and header rewriting.

Unlike the rest of the battery these call the pure core directly (proxy/cookies.py, proxy/baggage.py,
proxy/session.py, proxy/headers.py). `forward_headers` is the one adapter to change if headers.py's signature does.
`make fuzz` runs them with many more examples (RUM_HARDENING_FUZZ_EXAMPLES).
"""

from __future__ import annotations

import re
import time
from urllib.parse import quote

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict

from config.settings import SessionSource
from proxy.baggage import MAX_BYTES, MAX_MEMBERS, parse_baggage, with_session
from proxy.cookies import cookie_values, rum_session_from_cookies
from proxy.headers import (
    HOP_BY_HOP,
    ForwardRules,
    ResponseFraming,
    downstream_response_head,
    scan_request_head,
    upstream_request_head,
)
from proxy.http1 import BODY_PASS, ResponsePlan
from proxy.session import RequestParts, SessionExtractor, json_field, validate_session_id
from tests.hardening.conftest import FUZZ_DERANDOMIZE, FUZZ_EXAMPLES

SESSION_HEADER = "x-rum-session-id"
fuzz = settings(
    max_examples=FUZZ_EXAMPLES,
    derandomize=FUZZ_DERANDOMIZE,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

TCHAR = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
tokens = st.text(TCHAR, min_size=1, max_size=12)
field_values = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=30)
session_ids = st.uuids().map(str)

KEEP_PASS = ResponsePlan(BODY_PASS, True, None)


RULES = ForwardRules(
    session_header=SESSION_HEADER.encode(),
    preserve_host=True,
    propagate_baggage=True,
    upstream_host=b"upstream.test:8000",
    replaces_trace_headers=False,
)


def parse_head(head: bytes) -> list[tuple[str, str]]:
    lines = head.decode("latin-1").split("\r\n")[1:]
    return [(name, value) for name, _, value in (line.partition(": ") for line in lines if line)]


def forward_headers(pairs: list[tuple[str, str]], session_id: str | None) -> list[tuple[str, str]]:
    """The headers the proxy sends upstream for a client GET with `pairs` (the adapter over headers.py)."""
    raw = [(name.encode("latin-1"), value.encode("latin-1")) for name, value in pairs]
    head = scan_request_head(b"GET", b"/", b"1.1", raw)
    serialized = upstream_request_head(
        head,
        RULES,
        target=b"/",
        session_id=session_id,
        remote="127.0.0.1",
        scheme=b"http",
        trace_headers={},
        body_framing=None,
    )
    return parse_head(serialized)


def returned_headers(pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The headers the proxy returns to the client for an upstream 200 with `pairs` and a 2-byte body."""
    raw = [(name.encode("latin-1"), value.encode("latin-1")) for name, value in pairs]
    head = downstream_response_head(200, b"OK", raw, framing=ResponseFraming("length", 2), plan=KEEP_PASS)
    return parse_head(head)


# --- cookies ---------------------------------------------------------------------------------------------------
other_cookies = st.lists(
    st.tuples(tokens.filter(lambda name: not name.startswith("_dd_s")), st.text("abcdefXYZ0123-_.", max_size=20)),
    max_size=5,
)


@fuzz
@given(st.lists(st.text(max_size=200), max_size=3))
def test_any_cookie_header_yields_none_or_a_cookie_grammar_value(headers: list[str]) -> None:
    found = rum_session_from_cookies(headers, int(time.time() * 1000))
    assert found is None or re.fullmatch(r"[a-z0-9-]+", found)


@fuzz
@given(
    session_ids,
    st.sampled_from(["_dd_s", "_dd_s_v2"]),
    st.permutations(["rum=1", "aid=0d7f6ad5-6f5e-4a5b-9c8d-7e6f5a4b3c2d", "c=0", "ID", "created", "expire"]),
    other_cookies,
    other_cookies,
)
def test_a_live_rum_cookie_is_found_among_others(
    session_id: str, name: str, order: list[str], before: list[tuple[str, str]], after: list[tuple[str, str]]
) -> None:
    now = int(time.time() * 1000)
    values = {"ID": f"id={session_id}", "created": f"created={now - 1000}", "expire": f"expire={now + 60_000}"}
    state = "&".join(values.get(entry, entry) for entry in order)
    pairs = [*before, (name, state), *after]
    header = "; ".join(f"{key}={value}" for key, value in pairs)
    assert rum_session_from_cookies([header], now) == session_id


@fuzz
@given(session_ids, st.sampled_from(["isExpired=1", "rum=0", "expire=1", "created=1"]))
def test_an_ended_or_untracked_session_is_never_found(session_id: str, ending: str) -> None:
    now = int(time.time() * 1000)
    assert rum_session_from_cookies([f"_dd_s=id={session_id}&{ending}"], now) is None


@fuzz
@given(st.dictionaries(tokens, st.text("abcdefXYZ0123-_.=", max_size=20), min_size=1, max_size=6), st.data())
def test_cookie_values_reads_each_cookie(cookies: dict[str, str], data: st.DataObject) -> None:
    name = data.draw(st.sampled_from(sorted(cookies)))
    header = "; ".join(f"{key}={value}" for key, value in cookies.items())
    assert cookie_values([header], name) == cookies[name]


# --- baggage ---------------------------------------------------------------------------------------------------
baggage_keys = tokens.filter(lambda key: key != "session.id")
baggage_values = st.text(max_size=20).map(lambda value: quote(value, safe=""))
members = st.lists(st.tuples(baggage_keys, baggage_values), max_size=70, unique_by=lambda pair: pair[0])


def with_member(headers: list[str], key: str, session_id: str | None) -> str | None:
    """The baggage the proxy forwards for `headers` (the adapter over proxy.baggage.with_session)."""
    assert key == "session.id"
    rewritten = with_session([h.encode() for h in headers], session_id.encode() if session_id else None)
    return rewritten.decode() if rewritten is not None else None


@fuzz
@given(members, session_ids, st.booleans())
def test_with_member_sets_exactly_one_session_and_keeps_the_rest(
    pairs: list[tuple[str, str]], session_id: str, had_one: bool
) -> None:
    raw = [f"{key}={value}" for key, value in pairs]
    if had_one:
        raw.insert(len(raw) // 2, "session.id=forged")
    rewritten = with_member([",".join(raw)] if raw else [], "session.id", session_id)
    parsed = parse_baggage([rewritten]) if rewritten else []
    kept = [member.raw for member in parsed if member.key != "session.id"]
    assert kept == [entry for entry in raw if not entry.startswith("session.id=")]
    sessions = [member.value for member in parsed if member.key == "session.id"]
    fits = len(pairs) + 1 <= MAX_MEMBERS and len(",".join([*kept, f"session.id={session_id}"])) <= MAX_BYTES
    assert sessions == ([session_id] if fits else [])


@fuzz
@given(st.lists(st.text(max_size=100), max_size=3), st.one_of(st.none(), session_ids))
def test_with_member_never_raises_and_never_adds_line_breaks(headers: list[str], session_id: str | None) -> None:
    rewritten = with_member(headers, "session.id", session_id)
    if rewritten is not None and not any("\r" in h or "\n" in h for h in headers):
        assert "\r" not in rewritten and "\n" not in rewritten


# --- JSON body field lookup ------------------------------------------------------------------------------------
json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=10),
)
json_docs = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
session_values = st.one_of(session_ids, session_ids.map(str.upper), json_docs, st.just("not-a-uuid"))


def extractor(*fields: str) -> SessionExtractor:
    return SessionExtractor(
        (SessionSource.BODY,), body_fields=fields or ("session_id",), query_params=(), header_names=()
    )


def from_body(body: bytes, *fields: str) -> str | None:
    parts = RequestParts(headers=CIMultiDict(), query={}, body=body, body_kind="json", now_ms=0)
    return extractor(*fields).extract(parts).session_id


@fuzz
@given(json_docs, st.lists(st.text(max_size=8), min_size=1, max_size=3), session_values)
def test_json_field_finds_a_value_placed_at_any_path(doc: object, path: list[str], value: object) -> None:
    nested: dict[str, object] = {path[-1]: value}
    for key in reversed(path[:-1]):
        nested = {key: nested}
    root = nested if path[0] == "other" else {"other": doc, **nested}
    assert json_field(orjson.dumps(root), tuple(path)) == value


@fuzz
@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_raise_and_never_yield_an_invalid_id(body: bytes) -> None:
    found = from_body(body)
    assert found is None or validate_session_id(found) == found


@fuzz
@given(
    st.lists(st.tuples(st.sampled_from(["session_id", "message", "meta", "x"]), session_values), max_size=5),
    st.booleans(),
)
def test_the_body_lookup_agrees_with_a_json_parser(entries: list[tuple[str, object]], escape_keys: bool) -> None:
    """Duplicate keys (the last one wins, as in every JSON parser the agent may use) and \\u-escaped keys."""
    text = b"{" + b",".join(orjson.dumps(key) + b":" + orjson.dumps(value) for key, value in entries) + b"}"
    if escape_keys:
        text = text.replace(b'"session_id"', b'"\\u0073ession_\\u0069d"')
    expected = validate_session_id(orjson.loads(text).get("session_id"))
    assert from_body(text) == expected


# --- header rewriting ------------------------------------------------------------------------------------------
HOP = {name.decode() for name in HOP_BY_HOP}
PROXY_OWNED = {
    "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "via", "baggage", "expect", "host", SESSION_HEADER
}  # fmt: skip
header_names = st.one_of(
    tokens,
    st.sampled_from(["Connection", "Keep-Alive", "TE", "Upgrade", "Proxy-Connection", "HTTP2-Settings", "Host"]),
    st.sampled_from(["x-rum-session-id", "X-RUM-SESSION-ID", "x_rum_session_id", "X_Rum-Session_Id"]),
)


def connection_named(pairs: list[tuple[str, str]]) -> set[str]:
    return {
        token.strip().lower() for name, value in pairs if name.lower() == "connection" for token in value.split(",")
    }


@fuzz
@given(st.lists(st.tuples(header_names, field_values), max_size=12), st.one_of(st.none(), session_ids))
def test_forwarded_headers_carry_only_the_proxys_session_and_no_hop_by_hop_field(
    pairs: list[tuple[str, str]], session_id: str | None
) -> None:
    pairs = [("Host", "proxy.test"), *[(name, value) for name, value in pairs if name.lower() != "host"]]
    forwarded = forward_headers(pairs, session_id)
    names = [name.lower() for name, _ in forwarded]
    assert not set(names) & HOP
    assert not (connection_named(pairs) - PROXY_OWNED) & set(names), "a field named in Connection was forwarded"
    sessions = [value for name, value in forwarded if name.lower().replace("_", "-") == SESSION_HEADER]
    assert sessions == ([session_id] if session_id else [])
    assert names.count("host") == 1, "an HTTP/1.1 request always carries exactly one Host"
    dropped = HOP | connection_named(pairs) | PROXY_OWNED | {"content-length", "transfer-encoding"}
    expected = [
        (name.lower(), value)
        for name, value in pairs
        if name.lower() not in dropped and name.lower().replace("_", "-") != SESSION_HEADER
    ]
    assert [(name.lower(), value) for name, value in forwarded if name.lower() not in PROXY_OWNED] == expected


@fuzz
@given(st.lists(st.tuples(header_names.filter(lambda n: n.lower() != "content-length"), field_values), max_size=12))
def test_response_headers_lose_only_hop_by_hop_fields(pairs: list[tuple[str, str]]) -> None:
    returned = [(name, value) for name, value in returned_headers(pairs) if name.lower() != "content-length"]
    hop = HOP | connection_named(pairs)
    assert returned == [(name, value) for name, value in pairs if name.lower() not in hop]
