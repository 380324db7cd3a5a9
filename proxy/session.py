"""Find the RUM session ID in a request's parts and decide whether it is a valid one."""

from __future__ import annotations

import re
import zlib
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol
from urllib.parse import parse_qsl

import orjson

from config.settings import SessionSource
from proxy.baggage import SESSION_KEY, baggage_value
from proxy.cookies import rum_session_from_cookies

__all__ = [
    "SessionSource",
    "Extraction",
    "SessionExtractor",
    "validate_session_id",
    "body_kind",
    "inspectable_body",
    "INSPECTABLE_CODINGS",
]

_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


def validate_session_id(value: object) -> str | None:
    """A RUM session ID is a UUID in canonical 8-4-4-4-12 form; return it lower-cased, or None if invalid."""
    if isinstance(value, str) and len(value) == 36 and _UUID.fullmatch(value):
        return value.lower()
    return None


class Headers(Protocol):
    def getall(self, key: str, default: list[str]) -> list[str]: ...


class Query(Protocol):
    def get(self, key: str) -> str | None: ...


class RequestParts:
    """What extraction looks at; `body` is None when the body was not inspected.

    Made once per request: a plain class, whose `__init__` mypyc compiles (a dataclass's stays interpreted)."""

    def __init__(
        self,
        headers: Headers,
        query: Query,
        body: bytes | None,
        body_kind: str | None,  # "json", "form" or None
        now_ms: int,
    ) -> None:
        self.headers = headers
        self.query = query
        self.body = body
        self.body_kind = body_kind
        self.now_ms = now_ms


class Extraction:
    """Where the session ID was found, and the sources whose value was not a valid ID (ignored, counted)."""

    def __init__(
        self,
        session_id: str | None,
        source: SessionSource | None,
        rejected: tuple[SessionSource, ...] = (),
    ) -> None:
        self.session_id = session_id
        self.source = source
        self.rejected = rejected

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Extraction):
            return NotImplemented
        return (self.session_id, self.source, self.rejected) == (other.session_id, other.source, other.rejected)

    def __hash__(self) -> int:
        return hash((self.session_id, self.source, self.rejected))

    def __repr__(self) -> str:
        return f"Extraction({self.session_id!r}, {self.source!r}, {self.rejected!r})"


NOT_FOUND = Extraction(None, None)


def body_kind(content_type: str | None) -> str | None:
    """Which inspectable body a Content-Type announces: "json", "form", or None (streamed uninspected)."""
    if not content_type:
        return None
    media_type = content_type.split(";", 1)[0].strip().lower()
    if media_type == "application/json" or media_type.endswith("+json"):
        return "json"
    if media_type == "application/x-www-form-urlencoded":
        return "form"
    return None


_JSON_SPACE = b" \t\n\r"
_MEMBER_START = b"{,"  # what precedes a key: the object's start or the previous member's end
# The Content-Encodings a body may arrive in and still be read for the ID (bounded decompression).
INSPECTABLE_CODINGS = frozenset({b"", b"identity", b"gzip", b"x-gzip", b"deflate"})


def inspectable_body(body: bytes, content_encoding: bytes | None, limit: int) -> bytes | None:
    """The body as the extractor reads it: decompressed for gzip and deflate, never beyond `limit` bytes.

    None when it cannot be read safely (an unknown coding, a corrupt stream, or more than `limit` once
    decompressed: a small "zip bomb" never costs more than `limit` bytes of memory).
    """
    coding = content_encoding.strip().lower() if content_encoding else b""
    if coding not in INSPECTABLE_CODINGS:
        return None
    if coding in (b"", b"identity"):
        return body
    if coding in (b"gzip", b"x-gzip"):
        wbits = 16 + zlib.MAX_WBITS
    elif coding == b"deflate":
        # RFC 9110 §8.4.1.2: zlib-wrapped; some clients send raw deflate, which the zlib header check tells apart.
        wbits = zlib.MAX_WBITS if len(body) >= 2 and (body[0] * 256 + body[1]) % 31 == 0 else -zlib.MAX_WBITS
    decoder = zlib.decompressobj(wbits)
    try:
        plain = decoder.decompress(body, limit + 1)
    except zlib.error:
        return None
    if len(plain) > limit or not decoder.eof:
        return None
    return plain


def json_field(body: bytes, path: tuple[str, ...]) -> object | None:
    """The value at a dotted path in a JSON object body, or None when absent or the body is not JSON."""
    try:
        document: object = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    return field_at(document, path)


def field_at(node: object, path: tuple[str, ...]) -> object | None:
    """The value at a dotted path in a parsed JSON document (duplicate keys: the last one, as orjson keeps)."""
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


class SessionExtractor:
    """Looks through the configured sources in order of precedence; the first valid ID wins."""

    def __init__(
        self,
        sources: Sequence[SessionSource],
        *,
        body_fields: Sequence[str],
        query_params: Sequence[str],
        header_names: Sequence[str],
    ) -> None:
        self.sources = tuple(sources)
        self.inspects_body = SessionSource.BODY in self.sources
        self._json_paths = tuple(tuple(field.split(".")) for field in body_fields)
        # A top-level field as the very last member of the body's object, e.g. `…,"session_id":"<uuid>"}`. In a
        # valid JSON document that text can only be the object's last member (the final `}` closes the top-level
        # object, a UUID holds no quote or backslash, and `{` or `,` before the key makes it a key), so the
        # value is the one a parser would return for that key: the last duplicate. Invalid JSON that ends this
        # way still yields the ID; the agent refuses such a body anyway, and the ID is validated as usual.
        simple = [path[0] for path in self._json_paths if len(path) == 1 and re.fullmatch(r"[A-Za-z0-9_.-]+", path[0])]
        # Found from the end: the key's last occurrence (rfind), then the rest of the member matched from there.
        self._last_key = (
            b'"' + simple[0].encode() + b'"' if simple and len(simple) == len(self._json_paths) == 1 else b""
        )
        self._last_member = re.compile(rb'"\s*:\s*"([0-9a-fA-F-]{36})"\s*}\s*\Z')
        self._form_fields = tuple(body_fields)
        self._query_params = tuple(query_params)
        self._header_names = tuple(header_names)
        self._readers: dict[SessionSource, Callable[[RequestParts], Iterable[object]]] = {
            SessionSource.BODY: self._from_body,
            SessionSource.QUERY: self._from_query,
            SessionSource.HEADER: self._from_headers,
            SessionSource.BAGGAGE: self._from_baggage,
            SessionSource.COOKIE: self._from_cookie,
        }

    def extract(self, parts: RequestParts) -> Extraction:
        rejected: list[SessionSource] = []
        for source in self.sources:
            for raw in self._readers[source](parts):
                session_id = validate_session_id(raw)
                if session_id is not None:
                    return Extraction(session_id, source, tuple(rejected))
                if source not in rejected:
                    rejected.append(source)
        return Extraction(None, None, tuple(rejected)) if rejected else NOT_FOUND

    def _from_body(self, parts: RequestParts) -> Iterable[object]:
        body = parts.body
        if not body:
            return ()
        if parts.body_kind == "json":
            # The Datadog guide's frontend appends the ID as the last member: found from the end of the body
            # without parsing it (exact for any valid JSON document, see _last_member).
            if self._last_key:
                last = self._last_member_value(body)
                if last is not None:
                    return (last,)
            # Otherwise parsed once, whatever the number of paths; orjson gets escaped, nested and duplicate
            # keys right (a duplicate key: the last one wins, as in the fast path).
            try:
                document: object = orjson.loads(body)
            except orjson.JSONDecodeError:
                return ()
            return (value for path in self._json_paths if (value := field_at(document, path)) is not None)
        if parts.body_kind == "form":
            try:
                fields = parse_qsl(body.decode("ascii"), keep_blank_values=True, errors="strict")
            except (UnicodeDecodeError, ValueError):
                return ()
            return (value for name in self._form_fields for key, value in fields if key == name)
        return ()

    def _last_member_value(self, body: bytes) -> str | None:
        """The ID when the body ends with `{` or `,`, the key, `:`, a UUID string and the final `}`."""
        key = self._last_key
        at = body.rfind(key, max(0, len(body) - 256))
        if at < 0:
            return None
        match = self._last_member.match(body, at + len(key) - 1)
        if match is None:
            return None
        before = at - 1
        while before >= 0 and body[before] in _JSON_SPACE:
            before -= 1
        return match.group(1).decode("ascii") if before >= 0 and body[before] in _MEMBER_START else None

    def _from_query(self, parts: RequestParts) -> Iterable[object]:
        return (value for name in self._query_params if (value := parts.query.get(name)) is not None)

    def _from_headers(self, parts: RequestParts) -> Iterable[object]:
        return (value for name in self._header_names for value in parts.headers.getall(name, []))

    def _from_baggage(self, parts: RequestParts) -> Iterable[object]:
        headers = parts.headers.getall("baggage", [])
        if not headers:
            return ()
        value = baggage_value(headers, SESSION_KEY)
        return () if value is None else (value,)

    def _from_cookie(self, parts: RequestParts) -> Iterable[object]:
        headers = parts.headers.getall("cookie", [])
        if not headers:
            return ()
        value = rum_session_from_cookies(headers, parts.now_ms)
        return () if value is None else (value,)
