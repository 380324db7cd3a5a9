from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.cookies import (
    SESSION_TIME_OUT_MS,
    active_session_id,
    cookie_values,
    parse_session_state,
    rum_session_from_cookies,
)

SID = "2c9b6f1e-8a3d-4f5b-9c7e-1d2f3a4b5c6d"
AID = "7e6d5c4b-3a2f-4e1d-8c9b-0a1f2e3d4c5b"
NOW = 1_764_000_000_000
CREATED = NOW - 60_000
EXPIRE = NOW + 14 * 60_000

# Cookie strings as the real SDK bundles write them (shared/REFERENCE.md §1).
V5 = f"_dd_s=rum=2&id={SID}&created={CREATED}&expire={EXPIRE}"
V6 = f"_dd_s=aid={AID}&rum=2&id={SID}&created={CREATED}&expire={EXPIRE}"
V7 = f"_dd_s_v2=aid={AID}&id={SID}&created={CREATED}&expire={EXPIRE}&c=0"


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        pytest.param([V5], SID, id="sdk-v5"),
        pytest.param([V6], SID, id="sdk-v6"),
        pytest.param([V7], SID, id="sdk-v7"),
        pytest.param([f"theme=dark; {V7}; other=1"], SID, id="among-other-cookies"),
        pytest.param(["a=1", V6], SID, id="second-cookie-header"),
        pytest.param(
            [f"_dd_s=rum=2&id=11111111-2222-4333-8444-555555555555&created={CREATED}&expire={EXPIRE}; {V7}"],
            SID,
            id="v7-wins-over-lingering-v5",
        ),
        pytest.param([f"_dd_s=rum=0&id={SID}&created={CREATED}&expire={EXPIRE}"], None, id="not-tracked"),
        pytest.param(["_dd_s=isExpired=1"], None, id="expired-marker"),
        pytest.param([f"_dd_s_v2=aid={AID}&isExpired=1"], None, id="v7-expired-marker"),
        pytest.param([f"_dd_s=rum=2&id={SID}&created={CREATED}&expire={NOW - 1}"], None, id="past-expire"),
        pytest.param(
            [f"_dd_s=rum=2&id={SID}&created={NOW - SESSION_TIME_OUT_MS}&expire={EXPIRE}"],
            None,
            id="older-than-4h",
        ),
        pytest.param([f"_dd_s=rum=2&created={CREATED}&expire={EXPIRE}"], None, id="no-id"),
        pytest.param([f"_dd_s_v2=aid={AID}&created={CREATED}&expire={EXPIRE}"], None, id="only-anonymous-id"),
        pytest.param(["theme=dark"], None, id="no-rum-cookie"),
        pytest.param([""], None, id="empty-header"),
        pytest.param([f'_dd_s="rum=2&id={SID}&created={CREATED}&expire={EXPIRE}"'], SID, id="quoted-value"),
    ],
)
def test_rum_session_from_cookies(headers: list[str], expected: str | None) -> None:
    assert rum_session_from_cookies(headers, NOW) == expected


def test_entries_outside_the_sdk_grammar_are_ignored() -> None:
    state = parse_session_state(f"rum=2&id={SID}&bad entry&UPPER=ABC&created={CREATED}")
    assert state == {"rum": "2", "id": SID, "created": str(CREATED)}


def test_cookie_values_takes_the_first_occurrence() -> None:
    assert cookie_values(["x=1; x=2"], "x") == "1"
    assert cookie_values(["xx=1"], "x") is None


def test_session_without_timestamps_is_accepted() -> None:
    assert active_session_id({"id": SID}, NOW) == SID


@given(st.text())
def test_any_cookie_header_parses_without_error(header: str) -> None:
    result = rum_session_from_cookies([header], NOW)
    assert result is None or isinstance(result, str)


@given(
    st.dictionaries(st.from_regex(r"[a-zA-Z]{1,8}", fullmatch=True), st.from_regex(r"[a-z0-9-]{1,40}", fullmatch=True))
)
def test_session_state_round_trips(state: dict[str, str]) -> None:
    value = "&".join(f"{key}={val}" for key, val in state.items())
    assert parse_session_state(value) == state
