from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.baggage import (
    MAX_BYTES,
    MAX_MEMBERS,
    MalformedBaggage,
    baggage_value,
    only_session,
    parse_baggage,
    with_session,
)

SID = "2c9b6f1e-8a3d-4f5b-9c7e-1d2f3a4b5c6d"


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ([f"session.id={SID}"], SID),
        ([f"user.id=u%40example.com,session.id={SID},account.id=42"], SID),
        ([f" session.id = {SID} ;prop=1 "], SID),
        (["user.id=1", f"session.id={SID}"], SID),
        (["session.id=a%20b"], "a b"),
        (["user.id=1"], None),
        (["session.id"], None),  # malformed: no '='
        (['session.id="quoted"'], None),  # DQUOTE is not a baggage-octet
        (["session.id=%FF"], None),  # not UTF-8 once decoded
    ],
)
def test_baggage_value(headers: list[str], expected: str | None) -> None:
    assert baggage_value(headers, "session.id") == expected


def with_member(headers: list[str], sid: str | None) -> str | None:
    out = with_session([header.encode("latin-1") for header in headers], sid.encode() if sid is not None else None)
    return out.decode("latin-1") if out is not None else None


def test_with_session_replaces_and_keeps_the_rest_verbatim() -> None:
    header = "user.id=u%40example.com;p=1, session.id=old,account.id=42"
    assert with_member([header], SID) == f"user.id=u%40example.com;p=1,account.id=42,session.id={SID}"


def test_with_session_adds_to_empty_baggage() -> None:
    assert with_member([], SID) == f"session.id={SID}"


def test_with_session_none_removes_the_key() -> None:
    assert with_member(["session.id=junk,user.id=1"], None) == "user.id=1"
    assert with_member(["session.id=junk"], None) is None


def test_baggage_without_a_session_goes_through_as_it_came() -> None:
    assert with_member(["this is not baggage"], None) == "this is not baggage"
    assert with_member(["user.id=1 ,  x=2"], None) == "user.id=1 ,  x=2"


SPOOF = "0a1b2c3d-4e5f-4a6b-8c7d-8e9f0a1b2c3d"


@pytest.mark.parametrize(
    ("header", "rest"),
    [
        (f"session%2Eid={SPOOF},user.id=1", "user.id=1"),  # ddtrace and OpenTelemetry percent-decode keys
        (f"%73ession.id={SPOOF},user.id=1", "user.id=1"),
        (f"session.id%20={SPOOF},user.id=1", "user.id=1"),  # OpenTelemetry strips after decoding
        (f"session.id ={SPOOF};p=1,user.id=1", "user.id=1"),
        (f"this is not baggage,session.id={SPOOF}", "this is not baggage"),  # malformed: the session goes anyway
        (f'session.id={SPOOF},user.id="quoted"', 'user.id="quoted"'),
        (f"session.id={SPOOF},note=caf\xe9", "note=caf\xe9"),  # not ASCII
        (f"session.id;x={SPOOF},user.id=1", "user.id=1"),  # the hook reads the key before `;`
    ],
)
def test_no_reading_of_a_client_session_survives(header: str, rest: str) -> None:
    assert with_member([header], None) == rest
    assert with_member([header], SID) == f"{rest},session.id={SID}"


def test_passed_through_baggage_keeps_only_the_validated_session() -> None:
    def passed(header: str, sid: str | None) -> str | None:
        out = only_session([header.encode("latin-1")], sid.encode() if sid else None)
        return out.decode("latin-1") if out is not None else None

    assert passed(f"user.id=1, session.id={SID}", SID) == f"user.id=1, session.id={SID}"
    assert passed(f"user.id=1, session.id={SPOOF}", SID) == "user.id=1"
    assert passed(f"session%2Eid={SPOOF}", None) is None
    assert passed("user.id=1 , x=2", None) == "user.id=1 , x=2"


def test_member_limit_is_respected() -> None:
    full = ",".join(f"k{i}=v" for i in range(MAX_MEMBERS))
    assert with_member([full], SID) == full


def test_size_limit_is_respected() -> None:
    big = "k=" + "v" * (MAX_BYTES - 2)
    assert with_member([big], SID) == big


def test_parse_rejects_bad_keys() -> None:
    with pytest.raises(MalformedBaggage):
        parse_baggage(["bad key=1"])


_keys = st.from_regex(r"[a-z][a-z0-9._-]{0,10}", fullmatch=True).filter(lambda k: k != "session.id")
_values = st.text(max_size=20)


@given(st.dictionaries(_keys, _values, max_size=10), st.uuids())
def test_rewrite_keeps_every_other_member(members: dict[str, str], uuid: object) -> None:
    from urllib.parse import quote

    header = ",".join(f"{k}={quote(v, safe='')}" for k, v in members.items())
    rewritten = with_member([header] if header else [], str(uuid))
    assert rewritten is not None
    parsed = {m.key: m.value for m in parse_baggage([rewritten])}
    assert parsed.pop("session.id") == str(uuid)
    assert parsed == members


@given(st.text())
def test_any_header_is_handled_without_error(header: str) -> None:
    baggage_value([header], "session.id")
    with_session([header.encode()], SID.encode())
    with_session([header.encode()], None)
    only_session([header.encode()], None)
