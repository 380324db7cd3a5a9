"""The trace context the proxy forwards: the session tag only ever the validated ID, and a started trace whose
first span in the agent is a root no tracer complains about (issue 17, items 6 and 13)."""

from __future__ import annotations

import pytest

from proxy.trace_context import (
    MAX_DD_MEMBER_LENGTH,
    MAX_TAGS_LENGTH,
    propagate,
    tags_with_session,
    tracestate_with_session,
)

SID = "2c9b6f1e-8a3d-4f5b-9c7e-1d2f3a4b5c6d"
SPOOF = "0a1b2c3d-4e5f-4a6b-8c7d-8e9f0a1b2c3d"
HIGH, LOW, SPAN = 0x6B14D8B600000000, 7, 0xABCDEF


def index(headers: dict[str, str]) -> dict[bytes, list[bytes]]:
    return {name.encode(): [value.encode()] for name, value in headers.items()}


def run(headers: dict[str, str], session_id: str | None) -> dict[str, str]:
    result = propagate(index(headers), session_id, ids=lambda: (HIGH, LOW), span_id=lambda: SPAN)
    return {name.decode(): value.decode() for name, value in result.headers.items()}


PAD = "_dd.p.pad=" + "a" * (MAX_TAGS_LENGTH - 30)


@pytest.mark.parametrize(
    ("tags", "sid", "expected"),
    [
        (None, None, None),
        (None, SID, f"_dd.p.llmobs_sid={SID}"),
        ("_dd.p.dm=-4", None, "_dd.p.dm=-4"),
        (f"_dd.p.dm=-4,_dd.p.llmobs_sid={SPOOF}", None, "_dd.p.dm=-4"),
        (f"_dd.p.llmobs_sid={SPOOF},_dd.p.dm=-4", SID, f"_dd.p.dm=-4,_dd.p.llmobs_sid={SID}"),
        (f" _dd.p.llmobs_sid ={SPOOF}", None, None),  # any spelling a lenient reader could take
        (f"_dd.p.llmobs_sid={SPOOF},_dd.p.llmobs_sid=x", SID, f"_dd.p.llmobs_sid={SID}"),
        (f"_dd.p.llmobs_sid=anything-at-all,{PAD}", None, PAD),
        # past the limit with ours: the client's session tag is removed, never left beside the proxy's ID
        (f"_dd.p.llmobs_sid={SPOOF},{PAD}", SID, PAD),
    ],
)
def test_the_session_tag_is_the_validated_id_or_none(tags: str | None, sid: str | None, expected: str | None) -> None:
    out = tags_with_session(tags.encode() if tags else None, sid.encode() if sid else None)
    assert out == (expected.encode() if expected else None)


DD_PAD = "t.pad:" + "b" * (MAX_DD_MEMBER_LENGTH - 20)


@pytest.mark.parametrize(
    ("state", "sid", "expected"),
    [
        ("rojo=1", None, "rojo=1"),
        ("rojo=1", SID, f"dd=t.llmobs_sid:{SID},rojo=1"),
        (f"rojo=1,dd=s:1;t.llmobs_sid:{SPOOF}", None, "dd=s:1,rojo=1"),
        (f"dd=t.llmobs_sid:{SPOOF}", None, None),
        (f"dd=s:1;t.llmobs_sid:{SPOOF},rojo=1", SID, f"dd=s:1;t.llmobs_sid:{SID},rojo=1"),
        (f"dd=s:1;t.llmobs_sid:{SPOOF},dd=o:rum", SID, f"dd=o:rum;t.llmobs_sid:{SID}"),  # the last dd member wins
        # a dd member past 256 bytes with ours: the client's session field is removed all the same
        (f"dd={DD_PAD};t.llmobs_sid:{SPOOF},rojo=1", SID, f"dd={DD_PAD},rojo=1"),
        (f"dd={DD_PAD};t.llmobs_sid:{SPOOF}", None, f"dd={DD_PAD}"),
    ],
)
def test_the_tracestate_session_is_the_validated_id_or_none(state: str, sid: str | None, expected: str | None) -> None:
    out = tracestate_with_session([state.encode()], sid.encode() if sid else None)
    assert out == (expected.encode() if expected else None)


def test_a_started_trace_is_a_root_that_no_tracer_complains_about() -> None:
    """Datadog ids with parent 0 (dd-trace-js reads x-datadog-tags only with both), and the same trace in W3C with a
    span id of its own and `p` 0: ddtrace's LLMObs warns on a span id 0, and `_dd.parent_id` 0 makes it a root."""
    headers = run({}, SID)
    assert headers == {
        "x-datadog-trace-id": "7",
        "x-datadog-parent-id": "0",
        "x-datadog-tags": f"_dd.p.tid={HIGH:016x},_dd.p.llmobs_sid={SID}",
        "traceparent": f"00-{HIGH:016x}{LOW:016x}-{SPAN:016x}-01",
        "tracestate": f"dd=p:0000000000000000;t.llmobs_sid:{SID}",
    }
    assert "x-datadog-sampling-priority" not in headers  # the agent's tracer makes the sampling decision


@pytest.mark.parametrize("parent", [None, "0", "junk"])
def test_a_datadog_context_without_a_parent_gets_a_w3c_root_too(parent: str | None) -> None:
    incoming = {"x-datadog-trace-id": "42", "x-datadog-tags": f"_dd.p.tid={HIGH:016x}"}
    if parent is not None:
        incoming["x-datadog-parent-id"] = parent
    headers = run(incoming, SID)
    assert (headers["x-datadog-trace-id"], headers["x-datadog-parent-id"]) == ("42", "0")
    assert headers["traceparent"] == f"00-{HIGH:016x}{42:016x}-{SPAN:016x}-01"
    assert headers["tracestate"] == f"dd=p:0000000000000000;t.llmobs_sid:{SID}"


def test_a_dropped_sampling_decision_stays_dropped_in_the_w3c_root() -> None:
    headers = run({"x-datadog-trace-id": "42", "x-datadog-sampling-priority": "0"}, None)
    assert headers["traceparent"].endswith("-00") and headers["tracestate"] == "dd=p:0000000000000000"


def test_the_browsers_trace_is_continued_as_it_came() -> None:
    rum = {
        "x-datadog-trace-id": "1234567890123456789",
        "x-datadog-parent-id": "987654321",
        "x-datadog-origin": "rum",
        "x-datadog-sampling-priority": "1",
        "traceparent": "00-0000000000000000112210f47de98115-000000003ade68b1-01",
        "tracestate": "dd=s:1;o:rum",
    }
    headers = run(rum, SID)
    assert {name: headers[name] for name in rum if name != "tracestate"} == {
        name: value for name, value in rum.items() if name != "tracestate"
    }
    assert headers["tracestate"] == f"dd=s:1;o:rum;t.llmobs_sid:{SID}"
    assert headers["x-datadog-tags"] == f"_dd.p.llmobs_sid={SID}"


@pytest.mark.parametrize(
    "incoming",
    [
        {"x-datadog-trace-id": "42", "x-datadog-parent-id": "7", "x-datadog-tags": f"_dd.p.llmobs_sid={SPOOF}"},
        {
            "x-datadog-trace-id": "42",
            "x-datadog-parent-id": "7",
            "x-datadog-tags": f"_dd.p.llmobs_sid={SPOOF},{PAD}",
        },
        {
            "traceparent": "00-0000000000000000112210f47de98115-000000003ade68b1-01",
            "tracestate": f"dd={DD_PAD};t.llmobs_sid:{SPOOF}",
        },
        {
            "x-datadog-trace-id": "42",
            "x-datadog-parent-id": "7",
            "x-datadog-tags": f"_dd.p.llmobs_sid={SPOOF}",
            "traceparent": "00-0000000000000000000000000000002a-0000000000000007-01",
            "tracestate": f"dd=t.llmobs_sid:{SPOOF}",
        },
    ],
    ids=["tags", "padded-tags", "padded-tracestate", "both"],
)
@pytest.mark.parametrize("session_id", [None, SID], ids=["no-id", "valid-id"])
def test_a_client_session_tag_never_survives(incoming: dict[str, str], session_id: str | None) -> None:
    headers = run(incoming, session_id)
    assert SPOOF not in "".join(headers.values())
    if session_id is None:
        assert "llmobs_sid" not in "".join(headers.values())
