"""Parse the Cookie header and the Datadog RUM browser SDK's session cookie (`_dd_s_v2`, `_dd_s`)."""

from __future__ import annotations

import re
from collections.abc import Iterable

# SDK v7 renamed the cookie; `_dd_s` of v5/v6 may linger after an upgrade, so the newer one is read first.
RUM_SESSION_COOKIES = ("_dd_s_v2", "_dd_s")

# The SDK's own entry grammar (browser-sdk sessionState.ts); other entries are ignored as the SDK does.
_ENTRY = re.compile(r"^([a-zA-Z]+)=([a-z0-9-]+)$")
SESSION_TIME_OUT_MS = 4 * 60 * 60 * 1000  # a session never outlives created + 4 h


def cookie_values(cookie_headers: Iterable[str], name: str) -> str | None:
    """The first value of cookie `name` in Cookie header(s) (RFC 6265 §5.4 `name=value; name=value`)."""
    for header in cookie_headers:
        for pair in header.split(";"):
            key, sep, value = pair.partition("=")
            if sep and key.strip() == name:
                value = value.strip()
                if len(value) >= 2 and value[0] == value[-1] == '"':
                    value = value[1:-1]
                return value
    return None


def parse_session_state(value: str) -> dict[str, str]:
    """Entries of a RUM session cookie value, e.g. `rum=2&id=<uuid>&created=<ms>&expire=<ms>`."""
    state: dict[str, str] = {}
    for entry in value.split("&"):
        match = _ENTRY.match(entry)
        if match:
            state[match.group(1)] = match.group(2)
    return state


def active_session_id(state: dict[str, str], now_ms: int) -> str | None:
    """The session ID of a live, tracked session, or None when the cookie holds no such session.

    `isExpired=1` means no session; `rum=0` (v5/v6) means the session is not tracked by RUM;
    a session ends at min(expire, created + 4 h).
    """
    if state.get("isExpired") == "1" or state.get("rum") == "0":
        return None
    session_id = state.get("id")
    if not session_id:
        return None
    expire = _as_int(state.get("expire"))
    if expire is not None and expire <= now_ms:
        return None
    created = _as_int(state.get("created"))
    if created is not None and created + SESSION_TIME_OUT_MS <= now_ms:
        return None
    return session_id


def rum_session_from_cookies(cookie_headers: Iterable[str], now_ms: int) -> str | None:
    """The raw (unvalidated) RUM session ID carried by the SDK's session cookie, if the session is live."""
    headers = tuple(cookie_headers)
    for name in RUM_SESSION_COOKIES:
        value = cookie_values(headers, name)
        if value is not None:
            return active_session_id(parse_session_state(value), now_ms)
    return None


def _as_int(value: str | None) -> int | None:
    if value is None or not value.isdigit():
        return None
    return int(value)
