"""Validation, baggage parsing and source precedence of rum_llmobs_hook (no ddtrace involved)."""

from __future__ import annotations

import uuid

import pytest
import rum_llmobs_hook as hook
from hypothesis import given
from hypothesis import strategies as st

SID = "0f8fad5b-d9cb-469f-a165-70867728950e"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (SID, SID),
        (SID.upper(), SID),
        (f" {SID}", None),
        (f"{SID}\n", None),
        (SID.replace("-", ""), None),
        (f"{{{SID}}}", None),
        (SID[:-1] + "g", None),
        ("", None),
        (None, None),
        (42, None),
        ("０f8fad5b-d9cb-469f-a165-70867728950e", None),  # fullwidth digit
    ],
)
def test_normalize_session_id(value: object, expected: str | None) -> None:
    assert hook.normalize_session_id(value) == expected


@given(st.uuids())
def test_every_uuid_is_accepted_lowercase(value: uuid.UUID) -> None:
    assert hook.normalize_session_id(str(value).upper()) == str(value)


@given(st.text())
def test_accepted_values_are_canonical_lowercase_uuids(value: str) -> None:
    result = hook.normalize_session_id(value)
    assert result is None or str(uuid.UUID(result)) == result


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (f"session.id={SID}", {"session.id": SID}),
        (f" user.id = u%201 ; prop=1 , session.id={SID}", {"user.id": "u 1", "session.id": SID}),
        ("a=1,a=2", {"a": "1"}),
        ("novalue,=x,bad key=1", {}),
        ("", {}),
        (None, {}),
        ("a=" + "x" * 9000, {}),
    ],
)
def test_parse_baggage(header: str | None, expected: dict[str, str]) -> None:
    assert hook.parse_baggage(header) == expected


@given(st.text())
def test_parse_baggage_never_raises(header: str) -> None:
    assert isinstance(hook.parse_baggage(header), dict)


def _getter(headers: dict[str, str]) -> object:
    return lambda name: headers.get(name)


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"x-rum-session-id": SID.upper()}, SID),
        ({"baggage": f"session.id={SID}"}, SID),
        ({"x-rum-session-id": SID, "baggage": f"session.id={uuid.uuid4()}"}, SID),
        ({"x-rum-session-id": "nope", "baggage": f"session.id={SID}"}, SID),
        ({"x-rum-session-id": "nope"}, None),
        ({}, None),
    ],
)
def test_request_session_prefers_the_proxy_header(headers: dict[str, str], expected: str | None) -> None:
    found = hook.request_session(headers.get, "x-rum-session-id")
    assert (found.session_id if found else None) == expected


def test_request_session_reads_a_configured_header_name() -> None:
    found = hook.request_session({"x-session": SID}.get, "x-session")
    assert found is not None and found.session_id == SID


def test_baggage_tags_are_opt_in_and_sanitised() -> None:
    headers = {"baggage": f"session.id={SID},user.id=u-1,account.id=a%20b,other=1"}
    assert hook.request_session(headers.get, "x-rum-session-id") == hook.RequestSession(SID, {})
    assert hook.request_session(headers.get, "x-rum-session-id", with_tags=True) == hook.RequestSession(
        SID, {"user.id": "u-1"}
    )
    assert hook.request_session({"baggage": "user.id=u"}.get, "h", with_tags=True) == hook.RequestSession(
        None, {"user.id": "u"}
    )


@pytest.mark.parametrize(
    ("propagated", "candidates", "expected"),
    [
        ("app-session", (SID,), None),  # the trace already has a session: it wins
        (None, (None, SID.upper()), SID),
        (None, ("bad", SID), SID),
        ("", (SID,), SID),
        (None, ("bad", None), None),
        (None, (), None),
    ],
)
def test_resolve_session_id(propagated: str | None, candidates: tuple[object, ...], expected: str | None) -> None:
    assert hook.resolve_session_id(propagated, *candidates) == expected


@pytest.mark.parametrize(
    ("version", "supported"),
    [("4.13.0", True), ("4.16.0", True), ("4.99.1rc1", True), ("4.12.9", False), ("5.0.0", False), ("x", False)],
)
def test_supported_ddtrace_range(version: str, supported: bool) -> None:
    assert hook.is_supported(version) is supported
