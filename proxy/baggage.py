"""Read and rewrite the W3C `baggage` header (https://www.w3.org/TR/baggage/)."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import quote, unquote

SESSION_KEY = "session.id"
MAX_MEMBERS = 64  # W3C baggage §3.3.3 limits
MAX_BYTES = 8192

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


def with_member(headers: Iterable[str], key: str, value: str | None) -> str | None:
    """The baggage header to forward: every `key` member replaced by `key=value` (or removed when value is None).

    Other members are kept verbatim. A malformed header is returned unchanged (joined), never rewritten.
    When adding the member would break the W3C limits, the header is forwarded without it.
    Returns None when no baggage remains.
    """
    headers = tuple(headers)
    try:
        members = parse_baggage(headers)
    except (MalformedBaggage, UnicodeDecodeError):
        return ",".join(headers) or None
    kept = [member.raw for member in members if member.key != key]
    if value is not None:
        candidate = [*kept, f"{key}={quote(value, safe='')}"]
        serialized = ",".join(candidate)
        if len(candidate) <= MAX_MEMBERS and len(serialized.encode()) <= MAX_BYTES:
            return serialized
    return ",".join(kept) or None
