"""Carry the session in the forwarded trace context, without a span of the proxy's own.

The RUM SDK injects Datadog (`x-datadog-*`) and W3C (`traceparent`, `tracestate`) headers. The proxy continues
that context untouched and adds the session as the trace-level tag `_dd.p.llmobs_sid` (in `x-datadog-tags`) and
`t.llmobs_sid` (in tracestate's `dd` member). ddtrace (>= 4.13) and dd-trace-js (>= 5.114 / 6.3) make it the
default LLM Observability session_id of every LLMObs span of the trace.

When no context came, the proxy starts one with a parent id of 0: the agent's first span is then the root of the
trace, never the child of a parent that no span reports. dd-trace-js reads `x-datadog-tags` only when
`x-datadog-trace-id` and `x-datadog-parent-id` are both present, which is why the parent id is sent as 0 rather
than left out.
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Callable, Mapping, Sequence

LLMOBS_SESSION_TAG = b"_dd.p.llmobs_sid"
TRACE_ID_HIGH_TAG = b"_dd.p.tid"
MAX_TAGS_LENGTH = 512  # ddtrace and dd-trace-js drop the whole x-datadog-tags header above this (DD default)
MAX_DD_MEMBER_LENGTH = 256  # W3C trace-context, and Datadog's own limit for its tracestate member
MAX_TRACESTATE_MEMBERS = 32

_DECIMAL_ID = re.compile(rb"^[0-9]{1,20}$")
_TRACEPARENT = re.compile(rb"^[0-9a-f]{2}-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}$")
_U64 = (1 << 64) - 1


class Propagation:
    """The trace headers to forward (lower-case names), and the trace id to log (`dd.trace_id`), if any."""

    def __init__(self, headers: dict[bytes, bytes], log_trace_id: str | None) -> None:
        self.headers = headers
        self.log_trace_id = log_trace_id


def new_trace_ids() -> tuple[int, int]:
    """A Datadog 128-bit trace id as (high, low): high = unix seconds << 32, low = 63 random bits, never 0."""
    # Trace ids identify, they protect nothing: a fast non-cryptographic generator is the tracers' own choice.
    return int(time.time()) << 32, random.getrandbits(63) | 1  # noqa: S311


def _first(index: Mapping[bytes, Sequence[bytes]], name: bytes) -> bytes | None:
    values = index.get(name)
    return values[0].strip() if values else None


def _log_id(high: int, low: int) -> str:
    # Ids are formatted with a format spec, never str() or b"%d": compiled by mypyc (mypy 2.4), those two leak
    # a reference to any int beyond 62 bits, and trace ids are 64 and 128 bits (tests/proxy/test_memory.py).
    return f"{high << 64 | low:032x}" if high else f"{low:d}"


def with_tag(tags: bytes | None, key: bytes, value: bytes) -> bytes | None:
    """`x-datadog-tags` with `key` set to `value`; None when the result would break the length limit."""
    members = [m for m in (tags or b"").split(b",") if m.strip() and m.partition(b"=")[0].strip() != key]
    members.append(key + b"=" + value)
    result = b",".join(members)
    return result if len(result) <= MAX_TAGS_LENGTH else None


def with_dd_member(tracestate: Sequence[bytes], key: bytes, value: bytes) -> bytes | None:
    """tracestate with `key:value` set in the `dd` member, which moves to the front (W3C §3.3.1.1)."""
    members = [m.strip() for header in tracestate for m in header.split(b",") if m.strip()]
    dd_fields: list[bytes] = []
    others = []
    for member in members:
        name, sep, rest = member.partition(b"=")
        if sep and name.strip() == b"dd":
            dd_fields = [f for f in rest.split(b";") if f and f.partition(b":")[0] != key]
        else:
            others.append(member)
    dd = b"dd=" + b";".join([*dd_fields, key + b":" + value])
    if len(dd) - 3 > MAX_DD_MEMBER_LENGTH:
        return None
    return b",".join([dd, *others[: MAX_TRACESTATE_MEMBERS - 1]])


def propagate(
    index: Mapping[bytes, Sequence[bytes]],
    session_id: str | None,
    ids: Callable[[], tuple[int, int]] = new_trace_ids,
) -> Propagation:
    """The trace headers to forward for a request whose trace headers are `index` (lower-case names)."""
    sid = session_id.encode("ascii") if session_id is not None else None
    headers: dict[bytes, bytes] = {}
    trace_id = _first(index, b"x-datadog-trace-id")
    traceparent = _first(index, b"traceparent")
    w3c = _TRACEPARENT.match(traceparent) if traceparent is not None else None
    log_trace_id: str | None = None

    if trace_id is not None and _DECIMAL_ID.match(trace_id) and 0 < int(trace_id) <= _U64:
        headers[b"x-datadog-trace-id"] = trace_id
        headers[b"x-datadog-parent-id"] = _valid_parent(_first(index, b"x-datadog-parent-id"))
        for name in (b"x-datadog-sampling-priority", b"x-datadog-origin"):
            value = _first(index, name)
            if value is not None:
                headers[name] = value
        tags = b",".join(index.get(b"x-datadog-tags", ())) or None
        if sid is not None:
            tags = with_tag(tags, LLMOBS_SESSION_TAG, sid) or tags
        if tags:
            headers[b"x-datadog-tags"] = tags
        log_trace_id = _log_id(_tid(tags), int(trace_id))
    elif sid is not None and w3c is None:
        high, low = ids()
        headers[b"x-datadog-trace-id"] = f"{low:d}".encode()
        headers[b"x-datadog-parent-id"] = b"0"
        headers[b"x-datadog-tags"] = b"%s=%016x,%s=%s" % (TRACE_ID_HIGH_TAG, high, LLMOBS_SESSION_TAG, sid)
        return Propagation(headers, _log_id(high, low))

    if w3c is not None and traceparent is not None:
        headers[b"traceparent"] = traceparent
        tracestate = index.get(b"tracestate", ())
        state = with_dd_member(tracestate, b"t.llmobs_sid", sid) if sid is not None else None
        if state is None and tracestate:
            state = b",".join(tracestate)
        if state:
            headers[b"tracestate"] = state
        if log_trace_id is None:
            full = int(w3c.group(1), 16)
            log_trace_id = _log_id(full >> 64, full & _U64)
    return Propagation(headers, log_trace_id)


def _valid_parent(parent: bytes | None) -> bytes:
    if parent is not None and _DECIMAL_ID.match(parent) and int(parent) <= _U64:
        return parent
    return b"0"


def _tid(tags: bytes | None) -> int:
    if not tags:
        return 0
    for member in tags.split(b","):
        key, _, value = member.partition(b"=")
        if key.strip() == TRACE_ID_HIGH_TAG:
            try:
                return int(value, 16)
            except ValueError:
                return 0
    return 0
