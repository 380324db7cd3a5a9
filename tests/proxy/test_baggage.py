from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.baggage import MAX_BYTES, MAX_MEMBERS, MalformedBaggage, baggage_value, parse_baggage, with_member

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


def test_with_member_replaces_and_keeps_the_rest_verbatim() -> None:
    header = "user.id=u%40example.com;p=1, session.id=old,account.id=42"
    assert with_member([header], "session.id", SID) == f"user.id=u%40example.com;p=1,account.id=42,session.id={SID}"


def test_with_member_adds_to_empty_baggage() -> None:
    assert with_member([], "session.id", SID) == f"session.id={SID}"


def test_with_member_none_removes_the_key() -> None:
    assert with_member(["session.id=junk,user.id=1"], "session.id", None) == "user.id=1"
    assert with_member(["session.id=junk"], "session.id", None) is None


def test_malformed_baggage_is_forwarded_unchanged() -> None:
    assert with_member(["this is not baggage"], "session.id", SID) == "this is not baggage"


def test_member_limit_is_respected() -> None:
    full = ",".join(f"k{i}=v" for i in range(MAX_MEMBERS))
    assert with_member([full], "session.id", SID) == full


def test_size_limit_is_respected() -> None:
    big = "k=" + "v" * (MAX_BYTES - 2)
    assert with_member([big], "session.id", SID) == big


def test_parse_rejects_bad_keys() -> None:
    with pytest.raises(MalformedBaggage):
        parse_baggage(["bad key=1"])


_keys = st.from_regex(r"[a-z][a-z0-9._-]{0,10}", fullmatch=True).filter(lambda k: k != "session.id")
_values = st.text(max_size=20)


@given(st.dictionaries(_keys, _values, max_size=10), st.uuids())
def test_rewrite_keeps_every_other_member(members: dict[str, str], uuid: object) -> None:
    from urllib.parse import quote

    header = ",".join(f"{k}={quote(v, safe='')}" for k, v in members.items())
    rewritten = with_member([header] if header else [], "session.id", str(uuid))
    assert rewritten is not None
    parsed = {m.key: m.value for m in parse_baggage([rewritten])}
    assert parsed.pop("session.id") == str(uuid)
    assert parsed == members


@given(st.text())
def test_any_header_is_handled_without_error(header: str) -> None:
    baggage_value([header], "session.id")
    with_member([header], "session.id", SID)
