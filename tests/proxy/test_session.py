from __future__ import annotations

import json
import time

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from multidict import CIMultiDict, MultiDict

from config.settings import SessionSource
from proxy.session import Extraction, RequestParts, SessionExtractor, body_kind, validate_session_id
from tests.proxy.conftest import SESSION_ID

SID = "2c9b6f1e-8a3d-4f5b-9c7e-1d2f3a4b5c6d"
SID2 = "7e6d5c4b-3a2f-4e1d-8c9b-0a1f2e3d4c5b"
NOW = int(time.time() * 1000)
COOKIE = f"_dd_s_v2=id={SID2}&created={NOW - 1000}&expire={NOW + 60_000}"
ALL = tuple(SessionSource)


def extractor(sources: tuple[SessionSource, ...] = ALL, **kwargs: tuple[str, ...]) -> SessionExtractor:
    return SessionExtractor(
        sources,
        body_fields=kwargs.get("body_fields", ("session_id",)),
        query_params=kwargs.get("query_params", ("session_id",)),
        header_names=kwargs.get("header_names", ("x-rum-session-id",)),
    )


def parts(
    headers: dict[str, str] | None = None,
    query: dict[str, str] | None = None,
    body: bytes | None = None,
    content_type: str | None = "application/json",
) -> RequestParts:
    return RequestParts(
        headers=CIMultiDict(headers or {}),
        query=MultiDict(query or {}),
        body=body,
        body_kind=body_kind(content_type),
        now_ms=NOW,
    )


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (SID, SID),
        (SID.upper(), SID),
        (f"{SID}\r\nX-Injected: 1", None),
        (f" {SID}", None),
        (f"{SID}\n", None),
        (SID + "0", None),
        (SID.replace("-", ""), None),
        ("{" + SID + "}", None),
        ("x" * 10_000, None),
        (12345, None),
        (None, None),
        (["not", "a", "string"], None),
        ("", None),
        ("2c9b6f1e-8a3d-4f5b-9c7e-1d2f3a4b5c6g", None),
    ],
)
def test_validate_session_id(value: object, expected: str | None) -> None:
    assert validate_session_id(value) == expected


@given(st.uuids())
def test_every_uuid_is_accepted_in_lowercase(uuid: object) -> None:
    assert validate_session_id(str(uuid).upper()) == str(uuid)


@given(st.text())
def test_only_canonical_uuids_pass(text: str) -> None:
    result = validate_session_id(text)
    assert result is None or (len(result) == 36 and result == text.lower())


@pytest.mark.parametrize(
    ("request_parts", "expected"),
    [
        (parts(body=json.dumps({"session_id": SID}).encode()), Extraction(SID, SessionSource.BODY)),
        (parts(query={"session_id": SID}), Extraction(SID, SessionSource.QUERY)),
        (parts(headers={"X-RUM-Session-ID": SID}), Extraction(SID, SessionSource.HEADER)),
        (parts(headers={"baggage": f"user.id=1,session.id={SID}"}), Extraction(SID, SessionSource.BAGGAGE)),
        (parts(headers={"Cookie": COOKIE}), Extraction(SID2, SessionSource.COOKIE)),
        (parts(), Extraction(None, None)),
        (
            parts(
                body=b"session_id=" + SID.encode() + b"&q=hi",
                content_type="application/x-www-form-urlencoded",
            ),
            Extraction(SID, SessionSource.BODY),
        ),
        (
            parts(body=json.dumps({"session_id": SID}).encode(), content_type="application/vnd.api+json"),
            Extraction(SID, SessionSource.BODY),
        ),
        (
            parts(body=json.dumps({"session_id": SID}).encode(), content_type="text/plain"),
            Extraction(None, None),
        ),
        (parts(body=b'{"session_id": 42}'), Extraction(None, None, (SessionSource.BODY,))),
        (parts(body=b"not json {"), Extraction(None, None)),
        (parts(body=b'["session_id"]'), Extraction(None, None)),
        (parts(body=b'{"\\u0073ession_id": "' + SID.encode() + b'"}'), Extraction(SID, SessionSource.BODY)),
    ],
)
def test_each_source(request_parts: RequestParts, expected: Extraction) -> None:
    assert extractor().extract(request_parts) == expected


def test_default_precedence_is_body_query_header_baggage_cookie() -> None:
    everything = parts(
        body=json.dumps({"session_id": SID}).encode(),
        query={"session_id": SID2},
        headers={"x-rum-session-id": SID2, "baggage": f"session.id={SID2}", "Cookie": COOKIE},
    )
    assert extractor().extract(everything).source is SessionSource.BODY
    assert extractor(ALL[1:]).extract(everything) == Extraction(SID2, SessionSource.QUERY)
    assert extractor((SessionSource.COOKIE, SessionSource.BODY)).extract(everything).source is SessionSource.COOKIE


def test_invalid_value_falls_through_to_next_source_and_is_reported() -> None:
    result = extractor().extract(parts(query={"session_id": "../../etc"}, headers={"x-rum-session-id": SID}))
    assert result == Extraction(SID, SessionSource.HEADER, (SessionSource.QUERY,))


def test_switched_off_source_is_not_read() -> None:
    no_cookie = extractor(tuple(s for s in ALL if s is not SessionSource.COOKIE))
    assert no_cookie.extract(parts(headers={"Cookie": COOKIE})) == Extraction(None, None)


def test_dotted_body_path_and_several_fields() -> None:
    body = json.dumps({"metadata": {"rum": {"session": SID}}}).encode()
    ex = extractor(body_fields=("session_id", "metadata.rum.session"))
    assert ex.extract(parts(body=body)) == Extraction(SID, SessionSource.BODY)


def test_custom_query_and_header_names() -> None:
    ex = extractor(query_params=("rum_sid",), header_names=("x-session",))
    assert ex.extract(parts(query={"rum_sid": SID})).session_id == SID
    assert ex.extract(parts(headers={"X-Session": SID})).session_id == SID
    assert ex.extract(parts(query={"session_id": SID})).session_id is None


@given(st.binary(max_size=256), st.sampled_from(["application/json", "application/x-www-form-urlencoded", None]))
def test_arbitrary_bodies_never_raise(body: bytes, content_type: str | None) -> None:
    result = extractor().extract(parts(body=body, content_type=content_type))
    assert result.session_id is None or validate_session_id(result.session_id) == result.session_id


@given(st.dictionaries(st.sampled_from(["x-rum-session-id", "baggage", "cookie"]), st.text(max_size=80)))
def test_arbitrary_headers_never_yield_an_invalid_id(headers: dict[str, str]) -> None:
    result = extractor().extract(parts(headers=headers))
    assert result.session_id is None or validate_session_id(result.session_id) == result.session_id


def parsed_answer(body: bytes) -> object | None:
    """What a JSON parser says `session_id` is: the reference the fast path must agree with."""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    return document.get("session_id") if isinstance(document, dict) else None


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=8) | st.just(SESSION_ID),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.sampled_from(["a", "session_id"]), children),
    max_leaves=8,
)


@given(
    st.lists(st.tuples(st.sampled_from(["message", "session_id", "meta", "x"]), json_values), max_size=6),
    st.sampled_from(["", " ", "\n  "]),
)
def test_the_last_member_fast_path_agrees_with_a_parser(members: list[tuple[str, object]], space: str) -> None:
    """Nested, escaped and duplicate keys: the ID found equals what orjson reads for `session_id`."""
    body = "{" + ",".join(f"{orjson.dumps(k).decode()}:{space}{orjson.dumps(v).decode()}" for k, v in members) + "}"
    result = extractor().extract(parts(body=body.encode())).session_id
    expected = parsed_answer(body.encode())
    assert result == (expected if isinstance(expected, str) and validate_session_id(expected) else None)


@pytest.mark.parametrize(
    "body",
    [
        b'{"message": "hi", "session_id": "' + SESSION_ID.encode() + b'"}',
        b'{"session_id": "0a1b2c3d-4e5f-4a6b-8c7d-8e9f0a1b2c3d", "session_id": "' + SESSION_ID.encode() + b'" }\n',
        b'{"session\\u005fid": "' + SESSION_ID.encode() + b'"}',  # an escaped key: found by the parser
        b'{"meta": {"session_id": "0a1b2c3d-4e5f-4a6b-8c7d-8e9f0a1b2c3d"}, "session_id": "'
        + SESSION_ID.encode()
        + b'"}',
    ],
)
def test_last_members_and_escaped_keys(body: bytes) -> None:
    assert extractor().extract(parts(body=body)).session_id == SESSION_ID


def test_a_nested_last_member_is_not_the_top_level_field() -> None:
    body = b'{"message": "hi", "meta": {"session_id": "' + SESSION_ID.encode() + b'"}}'
    assert extractor().extract(parts(body=body)).session_id is None
