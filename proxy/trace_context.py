"""Carry the session in the forwarded trace context, without a span of the proxy's own.

The RUM SDK injects Datadog (`x-datadog-*`) and W3C (`traceparent`, `tracestate`) headers. The proxy continues
that context untouched and adds the session as the trace-level tag `_dd.p.llmobs_sid` (in `x-datadog-tags`) and
`t.llmobs_sid` (in tracestate's `dd` member). ddtrace (>= 4.13) and dd-trace-js (>= 5.114 / 6.3) make it the
default LLM Observability session_id of every LLMObs span of the trace. A session tag the client sent is never
forwarded: it is replaced by the validated ID, or removed.

When no context came, the proxy starts one whose first span in the agent is a root, which no tracer complains
about (issue 17, item 13):
- `x-datadog-trace-id` + `x-datadog-parent-id: 0` + `x-datadog-tags` (`_dd.p.tid`, `_dd.p.llmobs_sid`):
  dd-trace-js reads `x-datadog-tags` only when both ids are present; no sampling priority;
- `traceparent` with the same trace id and a fresh random span id, and `tracestate: dd=p:0000000000000000;…`.
  ddtrace's LLMObs warns "Failed to extract trace/span ID from request headers" on a context whose span id is 0,
  so both tracers take the traceparent's span id (it differs from the Datadog parent) and record the last Datadog
  parent `p` as `_dd.parent_id` = 0000000000000000 on the agent's first span: the Datadog backend falls back to
  `_dd.parent_id` when the parent span is not in the trace, so that span is shown as the trace's root. W3C has no
  "undecided" sampling flag: the traceparent says sampled. ddtrace keeps the Datadog context's (absent) priority
  and decides itself; dd-trace-js takes the W3C flag and keeps the trace (a 0 flag would make it drop it).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from random import getrandbits
from time import time_ns

LLMOBS_SESSION_TAG = b"_dd.p.llmobs_sid"
TRACE_ID_HIGH_TAG = b"_dd.p.tid"
MAX_TAGS_LENGTH = 512  # ddtrace and dd-trace-js drop the whole x-datadog-tags header above this (DD default)
MAX_DD_MEMBER_LENGTH = 256  # W3C trace-context, and Datadog's own limit for its tracestate member
MAX_TRACESTATE_MEMBERS = 32
SESSION_MARK = b"llmobs_sid"  # in a tag or tracestate key: a session carrier
DD_SESSION_FIELD = b"t.llmobs_sid:"
NO_DATADOG_PARENT = b"dd=p:0000000000000000"
NO_DATADOG_PARENT_SESSION = NO_DATADOG_PARENT + b";" + DD_SESSION_FIELD

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
    return time_ns() // 1_000_000_000 << 32, getrandbits(63) | 1  # noqa: S311


def _first(index: Mapping[bytes, Sequence[bytes]], name: bytes) -> bytes | None:
    values = index.get(name)
    return values[0].strip() if values else None


def _log_id(high: int, low: int) -> str:
    # Ids are formatted with a format spec, never str() or b"%d": compiled by mypyc (mypy 2.4), those two leak
    # a reference to any int beyond 62 bits, and trace ids are 64 and 128 bits (tests/proxy/test_memory.py).
    return f"{high << 64 | low:032x}" if high else f"{low:d}"


def _carries_session(key: bytes) -> bool:
    # Any key a tracer could read as the session, spelled with stray spaces or a prefix: removed, never guessed at.
    return key.find(SESSION_MARK) >= 0


def tags_with_session(tags: bytes | None, sid: bytes | None) -> bytes | None:
    """`x-datadog-tags` with `_dd.p.llmobs_sid` set to `sid`, or with no session tag at all when `sid` is None
    or when adding it would break the length limit; every other tag kept. None when no tag remains."""
    if not tags:
        return LLMOBS_SESSION_TAG + b"=" + sid if sid is not None else None
    if sid is None and tags.find(SESSION_MARK) < 0:
        return tags
    members = [m for m in tags.split(b",") if m.strip() and not _carries_session(m.partition(b"=")[0])]
    if sid is not None:
        candidate = b",".join([*members, LLMOBS_SESSION_TAG + b"=" + sid])
        if len(candidate) <= MAX_TAGS_LENGTH:
            return candidate
    return b",".join(members) or None


def tracestate_with_session(tracestate: Sequence[bytes], sid: bytes | None) -> bytes | None:
    """tracestate with `t.llmobs_sid:<sid>` in the `dd` member, which moves to the front (W3C §3.3.1.1), or with
    no session field when `sid` is None or adding it would break the member's length limit. None when empty."""
    joined = b",".join(tracestate)
    if sid is None and joined.find(SESSION_MARK) < 0:
        return joined or None
    dd_fields: list[bytes] = []
    others = []
    for raw in joined.split(b","):
        member = raw.strip()
        if not member:
            continue
        name, sep, rest = member.partition(b"=")
        if sep and name.strip() == b"dd":  # the last dd member wins, as the tracers read it
            dd_fields = [f for f in rest.split(b";") if f and not _carries_session(f.partition(b":")[0])]
        else:
            others.append(member)
    if sid is not None and len(b";".join([*dd_fields, DD_SESSION_FIELD + sid])) <= MAX_DD_MEMBER_LENGTH:
        dd_fields.append(DD_SESSION_FIELD + sid)
    if not dd_fields:
        return b",".join(others[:MAX_TRACESTATE_MEMBERS]) or None
    return b",".join([b"dd=" + b";".join(dd_fields), *others[: MAX_TRACESTATE_MEMBERS - 1]])


def new_span_id() -> int:
    return getrandbits(64) or 1  # noqa: S311 - an id, not a secret


def propagate(
    index: Mapping[bytes, Sequence[bytes]],
    session_id: str | None,
    ids: Callable[[], tuple[int, int]] = new_trace_ids,
    span_id: Callable[[], int] = new_span_id,
) -> Propagation:
    """The trace headers to forward for a request whose trace headers are `index` (lower-case names)."""
    sid = session_id.encode("ascii") if session_id is not None else None
    headers: dict[bytes, bytes] = {}
    trace_id = _first(index, b"x-datadog-trace-id")
    traceparent = _first(index, b"traceparent")
    w3c = _TRACEPARENT.match(traceparent) if traceparent is not None else None
    log_trace_id: str | None = None

    if trace_id is not None and _DECIMAL_ID.match(trace_id) and 0 < int(trace_id) <= _U64:
        parent = _valid_parent(_first(index, b"x-datadog-parent-id"))
        headers[b"x-datadog-trace-id"] = trace_id
        headers[b"x-datadog-parent-id"] = parent
        priority = _first(index, b"x-datadog-sampling-priority")
        if priority is not None:
            headers[b"x-datadog-sampling-priority"] = priority
        origin = _first(index, b"x-datadog-origin")
        if origin is not None:
            headers[b"x-datadog-origin"] = origin
        tags = tags_with_session(b",".join(index.get(b"x-datadog-tags", ())) or None, sid)
        if tags:
            headers[b"x-datadog-tags"] = tags
        high = _tid(tags)
        log_trace_id = _log_id(high, int(trace_id))
        if parent == b"0" and w3c is None:
            # A Datadog context with no parent: ddtrace's LLMObs would warn on its span id 0 (see the docstring).
            sampled = priority is None or not priority.startswith(b"-") and priority.strip(b" 0") != b""
            _add_w3c_root(headers, high, int(trace_id), span_id(), sid, sampled)
            return Propagation(headers, log_trace_id)
    elif sid is not None and w3c is None:
        # The request path's most common case (a session, no browser trace): formatted in as few steps as it takes.
        high, low = ids()
        trace_hex = (high << 64 | low).to_bytes(16, "big").hex()  # one conversion: W3C's id, _dd.p.tid, the log's
        trace = trace_hex.encode()
        return Propagation(
            {
                b"x-datadog-trace-id": f"{low:d}".encode(),
                b"x-datadog-parent-id": b"0",
                b"x-datadog-tags": b"_dd.p.tid=" + trace[:16] + b",_dd.p.llmobs_sid=" + sid,
                b"traceparent": b"00-" + trace + b"-" + span_id().to_bytes(8, "big").hex().encode() + b"-01",
                b"tracestate": NO_DATADOG_PARENT_SESSION + sid,
            },
            trace_hex if high else f"{low:d}",
        )

    if w3c is not None and traceparent is not None:
        headers[b"traceparent"] = traceparent
        state = tracestate_with_session(index.get(b"tracestate", ()), sid)
        if state:
            headers[b"tracestate"] = state
        if log_trace_id is None:
            full = int(w3c.group(1), 16)
            log_trace_id = _log_id(full >> 64, full & _U64)
    return Propagation(headers, log_trace_id)


def _add_w3c_root(
    headers: dict[bytes, bytes], high: int, low: int, span: int, sid: bytes | None, sampled: bool
) -> None:
    """The W3C half of a context with no parent: the traceparent's own span id, and `p` (the last Datadog
    parent) 0, which the tracers record as `_dd.parent_id` on the agent's first span."""
    flags = "01" if sampled else "00"
    headers[b"traceparent"] = f"00-{high:016x}{low:016x}-{span:016x}-{flags}".encode()
    state = NO_DATADOG_PARENT + (b";" + DD_SESSION_FIELD + sid if sid is not None else b"")
    headers[b"tracestate"] = state


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
                high = int(value, 16)
            except ValueError:
                return 0
            return high if high <= _U64 else 0
    return 0
