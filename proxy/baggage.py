"""Read and rewrite the W3C `baggage` header (https://www.w3.org/TR/baggage/)."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from urllib.parse import unquote, unquote_to_bytes

SESSION_KEY = "session.id"
SESSION_KEY_BYTES = b"session.id"
MAX_MEMBERS = 64  # W3C baggage §3.3.3 limits
MAX_BYTES = 8192
# `ord(...) in data`, not `b"..." in data`: CPython's bytes-in-bytes test raises and clears a TypeError inside first.
_PERCENT = ord("%")
_SEMICOLON = ord(";")

_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
# baggage-octet: printable US-ASCII except DQUOTE, comma, semicolon, backslash; plus percent-encoding.
_VALUE = re.compile(r"^[\x21\x23-\x2b\x2d-\x3a\x3c-\x5b\x5d-\x7e]*$")


class MalformedBaggage(ValueError):
    """The header does not follow the W3C baggage grammar."""


@dataclass(frozen=True, slots=True)
class Member:
    key: str
    value: str  # percent-decoded
    raw: str  # the member as it came, properties included, re-emitted verbatim


def parse_baggage(headers: Iterable[str]) -> list[Member]:
    """Members of one or more baggage headers (several headers combine as one comma-separated list)."""
    members = []
    for header in headers:
        for item in header.split(","):
            raw = item.strip(" \t")
            if not raw:
                continue
            key_value = raw.split(";", 1)[0]
            key, sep, value = key_value.partition("=")
            key, value = key.strip(" \t"), value.strip(" \t")
            if not sep or not _TOKEN.match(key) or not _VALUE.match(value):
                raise MalformedBaggage(raw)
            members.append(Member(key, unquote(value, errors="strict"), raw))
    return members


def baggage_value(headers: Iterable[str], key: str) -> str | None:
    """The decoded value of member `key`, or None when absent or the header is malformed."""
    try:
        members = parse_baggage(headers)
    except (MalformedBaggage, UnicodeDecodeError):
        return None
    for member in members:
        if member.key == key:
            return member.value
    return None


def _session_value(member: bytes) -> bytes | None:
    """The value of a list-member that some reader takes for `session.id`, or None for any other member.

    Readers differ: ddtrace percent-decodes the key and keeps properties in the value, OpenTelemetry strips it
    after decoding, the hook takes the key before `;`. A member is a session carrier if any of them would see one.
    """
    key, _, rest = member.partition(b"=")
    key = key.partition(b";")[0]
    if _PERCENT in key:
        key = unquote_to_bytes(key)
    if key.strip() != SESSION_KEY_BYTES:
        return None
    value = rest.partition(b";")[0].strip()
    return unquote_to_bytes(value) if _PERCENT in value else value


def may_carry_session(value: bytes) -> bool:
    """Whether a baggage value may hold `session.id` (a cheap test: a key can be percent-encoded)."""
    return _PERCENT in value or value.find(SESSION_KEY_BYTES) >= 0


def with_session(values: Sequence[bytes], session_id: bytes | None) -> bytes | None:
    """The baggage to forward when the proxy propagates the session: every member a reader could take for
    `session.id` removed, then `session.id=<session_id>` added when there is one and the W3C limits allow it.

    Other members are kept verbatim, even in a header that is not valid baggage. None when nothing remains.
    A header with nothing to remove or add goes through as it came.
    """
    if not values:
        return SESSION_KEY_BYTES + b"=" + session_id if session_id is not None else None
    if session_id is None and not any(may_carry_session(value) for value in values):
        return b",".join(values)
    kept = [raw for value in values for member in value.split(b",") if (raw := member.strip(b" \t"))]
    kept = [member for member in kept if _session_value(member) is None]
    if session_id is not None:  # a validated UUID needs no percent-encoding
        candidate = [*kept, SESSION_KEY_BYTES + b"=" + session_id]
        serialized = b",".join(candidate)
        if len(candidate) <= MAX_MEMBERS and len(serialized) <= MAX_BYTES:
            return serialized
    return b",".join(kept) or None


def only_session(values: Sequence[bytes], session_id: bytes | None) -> bytes | None:
    """Baggage the proxy passes through (RUM_PROXY_PROPAGATE_BAGGAGE=false): as it came, but for the members
    a reader could take for a `session.id` other than the validated one, which are removed."""
    joined = b",".join(values)
    if not may_carry_session(joined):
        return joined or None
    kept = []
    for member in joined.split(b","):
        value = _session_value(member)
        if value is None or value == session_id and _SEMICOLON not in member:  # as every reader reads it
            kept.append(member)
    return b",".join(kept) if any(member.strip(b" \t") for member in kept) else None
