"""Rewrite request and response headers for forwarding (RFC 9110 §7.6); pure functions over multidicts."""

from __future__ import annotations

from collections.abc import Mapping

from multidict import CIMultiDict, CIMultiDictProxy, istr

from proxy.baggage import SESSION_KEY, with_member

# RFC 9110 §7.6.1 hop-by-hop fields, plus the obsolete Proxy-Connection still sent by some clients.
HOP_BY_HOP = frozenset(
    istr(name) for name in ("connection", "proxy-connection", "keep-alive", "te", "transfer-encoding", "upgrade")
)
# The proxy answered any Expect: 100-continue itself; the upstream gets the body without waiting.
REQUEST_ONLY_DROPPED = frozenset({istr("expect")})
WEBSOCKET_HANDSHAKE = frozenset(
    istr(name)
    for name in (
        "sec-websocket-key",
        "sec-websocket-version",
        "sec-websocket-extensions",
        "sec-websocket-protocol",
    )
)
X_FORWARDED_FOR = istr("x-forwarded-for")
X_FORWARDED_PROTO = istr("x-forwarded-proto")
X_FORWARDED_HOST = istr("x-forwarded-host")
HOST = istr("host")
BAGGAGE = istr("baggage")

HeadersIn = CIMultiDict[str] | CIMultiDictProxy[str]


def strip_hop_by_hop(headers: CIMultiDict[str]) -> None:
    """Remove every field named in Connection, then the hop-by-hop fields themselves, in place."""
    for value in headers.getall("connection", ()):
        for name in value.split(","):
            name = name.strip()
            if name:
                headers.popall(name, None)
    for name in HOP_BY_HOP:
        headers.popall(name, None)


def _normalized(name: str) -> str:
    return name.lower().replace("_", "-")


def drop_spellings(headers: CIMultiDict[str], name: str) -> None:
    """Remove `name` in any case and with `_` for `-` (servers such as gunicorn treat them alike)."""
    target = _normalized(name)
    for key in [key for key in headers if _normalized(key) == target]:
        headers.popall(key, None)


def upstream_request_headers(
    incoming: HeadersIn,
    *,
    session_header: str,
    session_id: str | None,
    remote: str | None,
    scheme: str,
    preserve_host: bool,
    propagate_baggage: bool,
    trace_headers: Mapping[str, str] | None = None,
    websocket: bool = False,
) -> CIMultiDict[str]:
    """Headers to send upstream: hop-by-hop removed first, then the proxy's own fields added.

    The upstream sees in `session_header` only an ID the proxy validated, or nothing.
    """
    headers = CIMultiDict(incoming)
    strip_hop_by_hop(headers)
    for name in REQUEST_ONLY_DROPPED:
        headers.popall(name, None)
    if websocket:
        for name in WEBSOCKET_HANDSHAKE:
            headers.popall(name, None)
    drop_spellings(headers, session_header)

    host = incoming.get(HOST)
    if not preserve_host:
        headers.popall(HOST, None)
    forwarded_for = ", ".join(headers.popall(X_FORWARDED_FOR, ()))
    if remote:
        forwarded_for = f"{forwarded_for}, {remote}" if forwarded_for else remote
    if forwarded_for:
        headers[X_FORWARDED_FOR] = forwarded_for
    # A proxy in front of us (the ingress) knows the original scheme and host better than we do.
    headers.setdefault(X_FORWARDED_PROTO, scheme)
    if host:
        headers.setdefault(X_FORWARDED_HOST, host)

    if trace_headers:
        for trace_name, value in trace_headers.items():
            if trace_name.lower() != "baggage":  # the proxy owns the baggage rewrite below
                headers[trace_name] = value
    if session_id is not None:
        headers[session_header] = session_id
    if propagate_baggage:
        _rewrite_baggage(headers, session_id)
    return headers


def _rewrite_baggage(headers: CIMultiDict[str], session_id: str | None) -> None:
    current = headers.getall(BAGGAGE, [])
    if session_id is None and not any(SESSION_KEY in value for value in current):
        return  # nothing to add and no client-sent session.id to drop: forward untouched
    rewritten = with_member(current, SESSION_KEY, session_id)
    headers.popall(BAGGAGE, None)
    if rewritten is not None:
        headers[BAGGAGE] = rewritten


def downstream_response_headers(upstream: HeadersIn) -> CIMultiDict[str]:
    """Headers to return to the client: the upstream's, without hop-by-hop fields."""
    headers = CIMultiDict(upstream)
    strip_hop_by_hop(headers)
    return headers
