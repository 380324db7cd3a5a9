"""HTTP/1.1 header rules for forwarding (RFC 9110 §7.6, RFC 9112): pure functions over (name, value) byte pairs."""

from __future__ import annotations

import functools
import hashlib
import socket
from collections.abc import Iterable, Mapping, Sequence

from proxy.baggage import may_carry_session, only_session, with_session
from proxy.http1 import BODY_RECHUNK, BODY_TUNNEL, ResponsePlan
from proxy.trace_context import SESSION_MARK, tags_with_session, tracestate_with_session

RawHeaders = Sequence[tuple[bytes, bytes]]

# RFC 9110 §7.6.1 hop-by-hop fields, the obsolete Proxy-Connection still sent by some clients, and
# HTTP2-Settings, which only means something with an h2c upgrade the proxy never forwards (RFC 7540 §3.2.1).
HOP_BY_HOP = frozenset(
    {b"connection", b"proxy-connection", b"keep-alive", b"te", b"transfer-encoding", b"upgrade", b"http2-settings"}
)
# The proxy frames every message itself; the upstream gets Content-Length or chunked from the proxy.
FRAMING = frozenset({b"content-length", b"transfer-encoding"})
# The proxy answers Expect: 100-continue itself; the upstream gets the body without waiting.
REQUEST_ONLY_DROPPED = frozenset({b"expect"})
TRACE_HEADERS = frozenset(
    {
        b"x-datadog-trace-id",
        b"x-datadog-parent-id",
        b"x-datadog-sampling-priority",
        b"x-datadog-origin",
        b"x-datadog-tags",
        b"traceparent",
        b"tracestate",
    }
)
WEBSOCKET_HANDSHAKE = frozenset(
    {b"sec-websocket-key", b"sec-websocket-version", b"sec-websocket-extensions", b"sec-websocket-protocol"}
)
# What the request head scan keeps, besides the configured session headers.
_INDEXED = frozenset(
    {
        b"host",
        b"content-type",
        b"content-length",
        b"content-encoding",
        b"transfer-encoding",
        b"connection",
        b"upgrade",
        b"expect",
        b"cookie",
        b"baggage",
        b"x-forwarded-for",
        b"x-forwarded-proto",
        b"x-forwarded-host",
        b"x-request-id",
        b"via",
    }
    | TRACE_HEADERS
)
# Fields a client could carry a session in, besides the session header; when passed through (trace propagation
# or baggage propagation off) any session in them other than the validated one is removed.
_SESSION_CARRIERS = frozenset({b"x-datadog-tags", b"tracestate", b"baggage"})
LEGACY_BAGGAGE_SESSION = b"ot-baggage-session.id"
_NOTHING: frozenset[bytes] = frozenset()
# Byte tests on the request path are written `ord(...) in data` or `data.find(...) >= 0`: CPython's `bytes in bytes`
# first tries the needle as an integer and raises and clears a TypeError inside, ~8x the cost of a memchr.
_UNDERSCORE = ord("_")
_HOST = frozenset({b"host"})


def _tokens(values: Iterable[bytes]) -> list[bytes]:
    return [token for value in values for part in value.split(b",") if (token := part.strip().lower())]


class RequestHead:
    """A parsed request head: the raw headers in order, and the few fields the proxy decides on, by lower name.

    The per-request classes are written out rather than dataclasses: mypyc compiles an explicit `__init__`, while a
    dataclass's generated one stays interpreted (a Python call per request)."""

    def __init__(
        self,
        method: bytes,
        target: bytes,
        version: bytes,  # b"1.1" or b"1.0"
        headers: RawHeaders,
        index: dict[bytes, list[bytes]] | None = None,
    ) -> None:
        self.method = method
        self.target = target
        self.version = version
        self.headers = headers
        self.index: dict[bytes, list[bytes]] = {} if index is None else index

    def get(self, name: bytes) -> bytes | None:
        values = self.index.get(name)
        return values[0] if values else None

    def getall(self, name: str, default: list[str]) -> list[str]:
        """The `Headers` protocol the session extractor reads (names lower-case)."""
        values = self.index.get(name.encode("latin-1"))
        return [value.decode("latin-1") for value in values] if values else default

    @property
    def connection_tokens(self) -> list[bytes]:
        return _tokens(self.index.get(b"connection", ()))

    @property
    def transfer_codings(self) -> list[bytes]:
        return _tokens(self.index.get(b"transfer-encoding", ()))

    @property
    def query(self) -> bytes:
        _, _, query = self.target.partition(b"?")
        return query


@functools.cache
def _wanted(extra: frozenset[bytes]) -> frozenset[bytes]:
    return _INDEXED | extra


def scan_request_head(
    method: bytes, target: bytes, version: bytes, headers: RawHeaders, extra: frozenset[bytes] = frozenset()
) -> RequestHead:
    """Index the fields the proxy decides on (and the `extra` lower-case names) in one pass."""
    index: dict[bytes, list[bytes]] = {}
    wanted = _wanted(extra) if extra else _INDEXED
    for name, value in headers:
        lower = name.lower()
        if lower in wanted:
            index.setdefault(lower, []).append(value)
    return RequestHead(method, target, version, headers, index)


def is_websocket_upgrade(head: RequestHead) -> bool:
    upgrade = head.get(b"upgrade")
    return upgrade is not None and upgrade.strip().lower() == b"websocket" and b"upgrade" in head.connection_tokens


def _normalized(name: bytes) -> bytes:
    return name.lower().replace(b"_", b"-")


class ForwardRules:
    """What the proxy adds and removes on every forwarded request; resolved once from the settings."""

    def __init__(
        self,
        session_header: bytes,
        preserve_host: bool,
        propagate_baggage: bool,
        upstream_host: bytes,  # host[:port] of the upstream, for a client that sent no Host or when not preserved
        replaces_trace_headers: bool,  # trace headers are rewritten by the proxy (else passed through untouched)
        via_token: bytes | None = None,  # the proxy's pseudonym in Via; default: `proxy_pseudonym(upstream_host)`
    ) -> None:
        self.session_header = session_header
        self.via_token = via_token if via_token is not None else proxy_pseudonym(upstream_host)
        self.via_lines = {version: b"via: %s %s" % (version, self.via_token) for version in (b"1.1", b"1.0")}
        self.preserve_host = preserve_host
        self.propagate_baggage = propagate_baggage
        self.upstream_host = upstream_host
        self.replaces_trace_headers = replaces_trace_headers
        dropped = set(HOP_BY_HOP | FRAMING | REQUEST_ONLY_DROPPED)
        # ot-baggage-session.id: ddtrace's legacy baggage (DD_TRACE_PROPAGATION_HTTP_BAGGAGE_ENABLED) makes it the
        # context's session.id baggage item, which the hook reads.
        dropped.update((b"x-forwarded-for", session_header, LEGACY_BAGGAGE_SESSION))
        if replaces_trace_headers:
            dropped.update(TRACE_HEADERS)
        if propagate_baggage:
            dropped.add(b"baggage")
        if not preserve_host:
            dropped.add(b"host")
        self.always_dropped = frozenset(dropped)
        # The fields the proxy owns, whose client copies are removed in `_` spellings too (WSGI servers treat
        # `x_rum_session_id` as `x-rum-session-id`).
        self.owned = frozenset({session_header} | (TRACE_HEADERS if replaces_trace_headers else set()))
        # The `_` spellings dropped (WSGI/CGI servers read `x_datadog_tags` as `x-datadog-tags`): the owned fields
        # and the session carriers that pass through, whose value is not checked in that spelling.
        self.underscore_dropped = self.owned | {b"x-datadog-tags", LEGACY_BAGGAGE_SESSION}
        # Session carriers forwarded from the client (not rewritten by the proxy): any foreign session removed.
        self.passed_carriers = tuple(sorted(_SESSION_CARRIERS - dropped))

    def dropped_names(self, head: RequestHead) -> frozenset[bytes]:
        names = self.always_dropped
        connection = head.index.get(b"connection")
        if not connection:
            return names
        return names | _connection_named(connection)


def _connection_named(connection: Sequence[bytes]) -> frozenset[bytes]:
    # Every field the client named in Connection is hop-by-hop (RFC 9110 §7.6.1) — but Host, which the upstream
    # needs and no hop can own.
    return frozenset(token for token in _tokens(connection) if token != b"host")


def proxy_pseudonym(upstream_host: bytes) -> bytes:
    """The proxy's name in Via (RFC 9110 §7.6.3): the same for every worker of one proxy (one host, one upstream),
    so a request that comes back to any of them is recognised; a hash, so the host name is not disclosed."""
    digest = hashlib.sha256(socket.gethostname().encode() + b"|" + upstream_host).hexdigest()
    return b"rum-llmobs-proxy-" + digest[:12].encode()


def forwards_to_itself(head: RequestHead, via_token: bytes) -> bool:
    """Whether the request already went through this proxy: its Via names the proxy's own pseudonym (a loop, e.g.
    an upstream URL that resolves to the proxy itself). The caller answers 508 Loop Detected."""
    via = head.index.get(b"via")
    return via is not None and any(value.find(via_token) >= 0 for value in via)


def request_authority(target: bytes) -> bytes | None:
    """The host[:port] of an absolute-form request target (RFC 9112 §3.2.2), None for any other form."""
    if target[:1] == b"/" or target.find(b"://") < 0:
        return None
    scheme, _, rest = target.partition(b"://")
    if scheme.lower() not in (b"http", b"https"):
        return None
    end = len(rest)
    for delimiter in b"/?#":
        at = rest.find(bytes((delimiter,)))
        if 0 <= at < end:
            end = at
    authority = rest[:end].rpartition(b"@")[2]  # userinfo is never part of Host (RFC 9110 §4.2.4)
    return authority or None


def upstream_request_head(
    head: RequestHead,
    rules: ForwardRules,
    *,
    target: bytes,
    session_id: str | None,
    remote: str | None,
    scheme: bytes,
    trace_headers: Mapping[bytes, bytes],
    body_framing: bytes | None,
    websocket: bool = False,
) -> bytes:
    """The serialized request head to send upstream: hop-by-hop removed first, then the proxy's own fields added.

    The upstream sees in the session header only an ID the proxy validated, or nothing. `body_framing` is the
    framing header line the proxy sends the body with (e.g. b"content-length: 12"), or None for no body.
    """
    index = head.index
    connection = index.get(b"connection")
    named = _connection_named(connection) if connection else _NOTHING
    dropped = rules.always_dropped | named if named else rules.always_dropped
    if websocket:
        dropped -= WEBSOCKET_HANDSHAKE  # the upstream answers the client's handshake itself
    authority = request_authority(head.target) if head.target[:1] != b"/" else None
    if authority is not None and rules.preserve_host:
        dropped |= _HOST  # RFC 9112 §3.2.2: an absolute-form target's authority replaces the client's Host
    sid = session_id.encode("ascii") if session_id is not None else None
    scrub = bool(rules.passed_carriers) and _carries_foreign_session(index, rules.passed_carriers)
    underscore = rules.underscore_dropped
    lines = [b"%s %s HTTP/1.1" % (head.method, target)]
    for name, value in head.headers:
        lower = name.lower()
        if lower in dropped or (_UNDERSCORE in lower and _normalized(lower) in underscore):
            continue
        if scrub and lower in _SESSION_CARRIERS:
            kept = _without_foreign_session(lower, value, sid)
            if kept is None:
                continue
            value = kept
        lines.append(name + b": " + value)

    host = authority if authority is not None else head.get(b"host")
    if not rules.preserve_host or host is None:
        lines.append(b"host: " + rules.upstream_host)
    elif authority is not None:
        lines.append(b"host: " + authority)
    # The client's X-Forwarded-* count unless the client named them in Connection (its hop-by-hop copies); the
    # proxy's own are added either way.
    forwarded_for = b", ".join(index.get(b"x-forwarded-for", ())) if b"x-forwarded-for" not in named else b""
    if remote:
        peer = remote.encode("ascii")
        forwarded_for = forwarded_for + b", " + peer if forwarded_for else peer
    if forwarded_for:
        lines.append(b"x-forwarded-for: " + forwarded_for)
    # A proxy in front of us (the ingress) knows the original scheme and host better than we do.
    if b"x-forwarded-proto" not in index or b"x-forwarded-proto" in named:
        lines.append(b"x-forwarded-proto: " + scheme)
    if host is not None and (b"x-forwarded-host" not in index or b"x-forwarded-host" in named):
        lines.append(b"x-forwarded-host: " + host)
    lines.append(rules.via_lines.get(head.version) or rules.via_lines[b"1.1"])
    for name, value in trace_headers.items():
        lines.append(name + b": " + value)
    if sid is not None:
        lines.append(rules.session_header + b": " + sid)
    if rules.propagate_baggage:
        baggage = with_session(index.get(b"baggage", ()) if b"baggage" not in named else (), sid)
        if baggage is not None:
            lines.append(b"baggage: " + baggage)
    if websocket:
        lines.append(b"connection: upgrade")
        lines.append(b"upgrade: websocket")
    elif body_framing is not None:
        lines.append(body_framing)
    lines.append(b"\r\n")
    return b"\r\n".join(lines)


def _carries_foreign_session(index: Mapping[bytes, Sequence[bytes]], carriers: Sequence[bytes]) -> bool:
    """Whether a session carrier passed through from the client may hold a session (cheap substring tests)."""
    for name in carriers:
        for value in index.get(name, ()):
            if value.find(SESSION_MARK) >= 0 or (name == b"baggage" and may_carry_session(value)):
                return True
    return False


def _without_foreign_session(lower: bytes, value: bytes, sid: bytes | None) -> bytes | None:
    """A passed-through carrier with any session but the validated one removed (None: nothing left)."""
    if lower == b"baggage":
        return only_session((value,), sid)
    if lower == b"x-datadog-tags":
        return tags_with_session(value, None)
    return tracestate_with_session((value,), None)


def rewrite_baggage(values: Sequence[bytes], session_id: str | None) -> bytes | None:
    """The baggage to forward: `session.id` set to the validated ID, or removed when there is none (see
    `proxy.baggage.with_session`)."""
    return with_session(values, session_id.encode("ascii") if session_id is not None else None)


class ResponseFraming:
    """How a response body is delimited: "none", "length", "chunked" or "eof" (until the upstream closes), and the
    transfer codings applied before chunked (`gzip` of `Transfer-Encoding: gzip, chunked`), kept for the client."""

    def __init__(self, kind: str, content_length: int | None = None, codings: bytes = b"") -> None:
        self.kind = kind
        self.content_length = content_length
        self.codings = codings


def response_framing(status: int, request_method: bytes, headers: RawHeaders) -> ResponseFraming:
    """RFC 9112 §6.3: which body an upstream response carries. Raises ValueError for framing no client could
    follow (a bad Content-Length; a transfer coding that does not end in chunked is read until close)."""
    if request_method == b"HEAD" or status < 200 or status in (204, 304):
        return ResponseFraming("none")
    length: bytes | None = None
    codings: list[bytes] = []
    for name, value in headers:
        lower = name.lower()
        if lower == b"transfer-encoding":
            codings.extend(_tokens((value,)))
        elif lower == b"content-length":
            length = value
    if codings:
        if codings[-1] != b"chunked":
            # RFC 9112 §6.3 rule 4: read until the connection closes; the codings still apply to what is read
            return ResponseFraming("eof", codings=b", ".join(codings))
        # llhttp already refused Transfer-Encoding with Content-Length
        return ResponseFraming("chunked", codings=b", ".join(codings[:-1]))
    if length is not None:
        if not length.strip().isdigit():
            raise ValueError("bad Content-Length")
        return ResponseFraming("length", int(length))
    return ResponseFraming("eof")


def downstream_response_head(
    status: int, reason: bytes, headers: RawHeaders, *, framing: ResponseFraming, plan: ResponsePlan | None = None
) -> bytes:
    """The response head to return to the client: the upstream's fields without hop-by-hop ones, framed as the
    plan says (proxy.http1.plan_response); an interim (1xx) head has no plan.

    A body the upstream delimited by chunks or by closing goes to an HTTP/1.1 client chunked, so the client
    connection can stay open; transfer codings before chunked are kept (`Transfer-Encoding: gzip, chunked`).
    """
    keep_length = framing.kind in ("length", "none")  # HEAD and 304 keep the representation's length
    lines = [b"HTTP/1.1 %d %s" % (status, reason)]
    connection: list[bytes] = []
    for name, value in headers:
        lower = name.lower()
        if lower in HOP_BY_HOP:
            if lower == b"connection":
                connection.append(value)
            continue
        if lower == b"content-length" and not keep_length:
            continue
        lines.append(name + b": " + value)
    if connection and _names_fields(connection) and (named := set(_tokens(connection)) - HOP_BY_HOP):
        # The fields the upstream's Connection named are hop-by-hop too (RFC 9110 §7.6.1), wherever they came.
        lines[1:] = [line for line in lines[1:] if line.partition(b":")[0].lower() not in named]
    if plan is not None:
        if plan.body == BODY_TUNNEL:  # the WebSocket handshake answer keeps its upgrade fields
            lines.append(b"connection: upgrade")
            lines.append(b"upgrade: websocket")
        elif plan.body == BODY_RECHUNK:
            lines.append(b"transfer-encoding: " + framing.codings + b", chunked" if framing.codings else _CHUNKED)
        if plan.connection is not None:
            lines.append(b"connection: " + plan.connection)
    lines.append(b"\r\n")
    return b"\r\n".join(lines)


_CHUNKED = b"transfer-encoding: chunked"
_PLAIN_CONNECTION = frozenset({b"keep-alive", b"close", b"Keep-Alive", b"Close"})


def _names_fields(connection: list[bytes]) -> bool:
    """Whether a Connection field may name other fields: not the one `keep-alive` or `close` nearly every upstream
    sends (a shortcut past splitting it into tokens on every response)."""
    return len(connection) != 1 or connection[0].strip() not in _PLAIN_CONNECTION
