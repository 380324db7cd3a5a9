"""The `request` line rendered directly (JSON): the same fields and timestamp structlog writes for other lines."""

from __future__ import annotations

import io
import json
import logging
import re
from datetime import UTC, datetime

import pytest

from proxy import access_log

ISO_MICROS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")


@pytest.fixture
def written(monkeypatch: pytest.MonkeyPatch) -> io.BytesIO:
    stream = io.BytesIO()
    monkeypatch.setattr(access_log, "_writer", None)
    monkeypatch.setattr(access_log, "_fast_json_level", None)
    access_log.use(access_log.LineWriter(stream), logging.INFO)
    return stream


def lines(stream: io.BytesIO) -> list[dict[str, object]]:
    access_log.flush_logs()
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_a_request_line_has_the_fields_event_level_and_an_iso_utc_timestamp(written: io.BytesIO) -> None:
    before = datetime.now(UTC)
    access_log.log_request({"method": "POST", "status": 200}, warning=False)
    access_log.log_request({"method": "GET", "status": 502, "error": "upstream_unreachable"}, warning=True)
    after = datetime.now(UTC)

    ok, failed = lines(written)
    assert {key: ok[key] for key in ("method", "status", "event", "level")} == {
        "method": "POST",
        "status": 200,
        "event": "request",
        "level": "info",
    }
    assert failed["level"] == "warning" and failed["error"] == "upstream_unreachable"
    for line in (ok, failed):
        stamp = str(line["timestamp"])
        assert ISO_MICROS.match(stamp), stamp
        assert before.replace(microsecond=0) <= datetime.fromisoformat(stamp) <= after


@pytest.mark.parametrize(
    ("nanoseconds", "stamp"),
    [
        (1_700_000_000_000_042_999, "2023-11-14T22:13:20.000042Z"),  # leading zeros kept, nanoseconds cut
        (1_700_000_000_999_999_000, "2023-11-14T22:13:20.999999Z"),
        (1_700_000_001_000_000_000, "2023-11-14T22:13:21.000000Z"),  # the next second: the date part made again
    ],
)
def test_the_timestamp_is_microseconds_in_utc(
    written: io.BytesIO, monkeypatch: pytest.MonkeyPatch, nanoseconds: int, stamp: str
) -> None:
    monkeypatch.setattr(access_log, "time_ns", lambda: nanoseconds)
    access_log.log_request({"status": 200}, warning=False)
    assert lines(written)[0]["timestamp"] == stamp
